"""docs/design.md's map names every module of the layers contract, so the two cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _layer_modules() -> list[str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the project supports 3.10
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    return [m.strip() for row in layers for m in row.replace("|", ":").split(":")]


def test_the_map_names_every_module_of_the_layers_contract_and_nothing_that_is_gone():
    text = (ROOT / "docs" / "design.md").read_text()
    block = text.split("## The map", 1)[1].split("```", 2)[1]
    words = set(re.findall(r"[A-Za-z_][A-Za-z_0-9]*", block))
    modules = _layer_modules()
    missing = [m for m in modules if m not in words]
    assert not missing, f"docs/design.md's map lacks {missing}: add them where their layer is"
    # every module of tomofield (a .py file or a package) is on a layer: the map's names are real
    real = {p.stem for p in (ROOT / "tomofield").glob("*.py")} | {
        p.name for p in (ROOT / "tomofield").iterdir() if (p / "__init__.py").exists()
    }
    assert set(modules) == real - {"__init__"}
