"""What the linters do not hold: no ``and``/``or``/ternary as a statement, no private names used from outside."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["tomofield", "plugins", "benchmarks", "examples"]


def _files(roots: list[str]) -> list[Path]:
    return [p for r in roots for p in (ROOT / r).rglob("*.py") if ".venv" not in p.parts]


def test_no_boolean_or_conditional_expression_is_used_as_a_statement():
    found = [
        f"{p.relative_to(ROOT)}:{n.lineno}"
        for p in _files(SOURCES)
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.Expr) and isinstance(n.value, (ast.BoolOp, ast.IfExp))
    ]
    assert not found, f"write these as if-statements: {found}"


def test_tests_benchmarks_and_plugins_import_no_private_name_of_tomofield():
    found = []
    for p in _files(["tests", "benchmarks", "plugins", "examples"]):
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "tomofield":
                private = [m for m in n.module.split(".") if m.startswith("_") and not m.startswith("__")]
                private += [a.name for a in n.names if a.name.startswith("_") and not a.name.startswith("__")]
                found += [f"{p.relative_to(ROOT)}:{n.lineno} {n.module}.{name}" for name in private]
    assert not found, f"import only public names (make them public if they must be used): {found}"


def test_every_example_imports_what_exists():
    """An example whose import broke with a refactor fails here, not in a user's hands."""
    import importlib.util

    for path in sorted((ROOT / "examples").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # the examples run their work under `if __name__ == "__main__"`
        assert callable(getattr(module, "main", None)), f"{path.name} has no main()"


def test_every_benchmark_module_imports():
    import importlib

    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        importlib.import_module(f"benchmarks.{path.stem}")
