"""Draw docs/img/architecture.png: the layers of pyproject.toml's import-linter contract.

Each row is a layer (imports only point down), each box a module with its line count;
the modules a volume passes through on ``tomofield run`` are coloured and numbered in
order. The rows come from the contract itself, so the picture cannot drift from what
``lint-imports`` enforces. Run from the repository root: ``python docs/img/architecture.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import tomllib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
#: The modules a volume passes through on `tomofield run`, in order, with what happens there.
PATH = {
    "cli": "1 options (only those given), outputs checked",
    "io": "2 NIfTI -> Volume (C, D, H, W), affine kept",
    "engine": "3 Engine: run dir, components, plan reported",
    "pipeline": "4 plan, slice, score, filter, backproject",
    "heads": "5 scores per slice",
    "filters": "6 filter along the normal",
    "reconstructors": "7 filled / fbp: the Heatmap",
    "outputs": "8 masks, preview, heatmap NIfTI (input's affine)",
}
#: What each layer is, keyed by the first module of its row in the contract (a new row has no label).
LABELS = {
    "__main__": "front ends",
    "demo": "applications",
    "outputs": "outputs",
    "batch": "applications",
    "engine": "library",
    "pipeline": "stages",
    "_builtins": "built-ins",
    "heads": "components",
    "cam": "numerics",
    "plugins": "registry",
    "protocols": "contracts",
    "geometry": "foundations",
}


def module_lines(name: str) -> int:
    base = ROOT / "tomofield" / name
    files = list(base.rglob("*.py")) + list(base.rglob("*.c")) if base.is_dir() else [base.with_suffix(".py")]
    return sum(len(f.read_text().splitlines()) for f in files if f.is_file())


def main() -> Path:
    contract = next(
        c
        for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
        if c["type"] == "layers"
    )
    layers = [[m.strip() for m in row.replace("|", ":").split(":")] for row in contract["layers"]]
    fig, ax = plt.subplots(figsize=(13, 9.5))
    ax.set_xlim(0, 13)
    ax.set_ylim(-0.6, len(layers) + 0.4)
    ax.axis("off")
    for r, row in enumerate(layers):
        y = len(layers) - 1 - r
        if row[0] in LABELS:
            ax.text(0.05, y + 0.35, LABELS[row[0]], fontsize=9, color="#555", va="center")
        width = min(1.55, 10.6 / len(row))
        for i, mod in enumerate(row):
            x = 1.6 + i * (width + 0.08)
            on_path = mod in PATH
            ax.add_patch(
                FancyBboxPatch(
                    (x, y + 0.08),
                    width,
                    0.56,
                    boxstyle="round,pad=0.02",
                    fc="#f4c26b" if on_path else "#dfe8f2",
                    ec="#335" if on_path else "#8899aa",
                )
            )
            ax.text(
                x + width / 2,
                y + 0.46,
                mod + ("/" if (ROOT / "tomofield" / mod).is_dir() else ""),
                ha="center",
                va="center",
                fontsize=9,
                weight="bold" if on_path else "normal",
            )
            ax.text(
                x + width / 2,
                y + 0.22,
                f"{module_lines(mod)} lines",
                ha="center",
                va="center",
                fontsize=7,
                color="#555",
            )
            if on_path:
                ax.text(x + width + 0.05, y + 0.62, PATH[mod].split()[0], fontsize=9, color="#a04000", weight="bold")
    ax.text(
        1.6,
        -0.45,
        "plugins/ (tomofield-medical, tomofield-features): entry points, public surface only "
        "(docs/plugins.md); every arrow points down (lint-imports)",
        fontsize=9,
        color="#333",
    )
    legend = "\n".join(PATH.values())
    ax.text(
        12.95,
        len(layers) - 0.2,
        "a volume's path\n" + legend,
        ha="right",
        va="top",
        fontsize=8.5,
        multialignment="left",
        bbox={"fc": "white", "ec": "#a04000"},
    )
    ax.set_title("tomofield: the layers (top imports bottom, never the reverse)", loc="left", fontsize=12)
    out = ROOT / "docs" / "img" / "architecture.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return out


if __name__ == "__main__":
    print(main())
