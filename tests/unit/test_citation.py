"""CITATION.cff cites the project and, preferred, the paper with its five authors; the README has the BibTeX."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AUTHORS = ["Schmidt-Mengin", "Benichoux", "Belachew", "Komodakis", "Paragios"]


def test_citation_file_names_the_paper_and_its_authors_in_order():
    text = (ROOT / "CITATION.cff").read_text()
    assert text.startswith("cff-version: 1.2.0") and "preferred-citation:" in text
    preferred = text.split("preferred-citation:", 1)[1]
    positions = [preferred.index(f'family-names: "{a}"') for a in AUTHORS]
    assert positions == sorted(positions) and "year: 2024" in preferred and "ToNNO" in preferred
    version = next(line for line in (ROOT / "pyproject.toml").read_text().splitlines() if line.startswith("version"))
    assert version.split('"')[1] in text  # the cited version is the package's
    bib = (ROOT / "README.md").read_text().split("```bibtex", 1)[1].split("```", 1)[0]
    assert all(a in bib for a in AUTHORS) and "2024" in bib
