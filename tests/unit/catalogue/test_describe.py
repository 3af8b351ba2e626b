"""What a pair means in words and numbers: effective settings and names, the experimental warning,
and the README's catalogue table."""

from __future__ import annotations

from pathlib import Path

from layer_sensitivity import catalogue
from tests.helpers.catalogue import LISTING, PAIRS

ROOT = Path(__file__).resolve().parents[3]


def test_experimental_pairs_warn() -> None:
    for name, p in PAIRS.items():
        warning = catalogue.experimental_warning(p)
        assert (warning is not None) == p.experimental
        if warning:
            assert name in warning and "experimental" in warning
    assert {n for n, p in PAIRS.items() if p.experimental} >= {"wfp8_aint8", "wint8_afp8"}


def test_readme_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "## Precision pairs" in readme
    section = catalogue.readme_section(readme)
    assert section == catalogue.markdown_tables(LISTING), (
        "README.md is out of date: run python scripts/catalogue_table.py")
    rows = [r for r in section.splitlines() if r.startswith("| `w")]
    listed = [r.split("|")[1].strip().strip("`") for r in rows]
    assert listed[:len(PAIRS)] == list(PAIRS)
    for r, p in zip(rows, PAIRS.values(), strict=False):
        assert f"`mtq.{p.modelopt_base}`" in r
        assert ("CUDA only" in r) == p.requires_cuda
