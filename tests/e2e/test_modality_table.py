"""The README's text-only vs image-text table (section "Image-text calibration") reproduced by
``scripts/modality_table.py``: the same command the README names, its scores part (the three
modalities' AutoQuantize jobs for fp8 and int4; the recipe-KL and amax parts are skipped to keep
CI short, about 40 s on 2 cores), its ``--json`` numbers against the numbers parsed from README.md.

Tolerance: ranks exactly; shares and Spearman within ``TOLERANCE`` = 0.002. The README prints
three decimals (rounding: +-0.0005) and CPU runs are deterministic with fixed seeds, but another
CPU or thread count may sum floats in another order, which can tip a rounded value by one unit
(0.001). 0.002 is still below what one swap of two neighbouring groups does to Spearman over 17
groups (6 * 2 / (17 * (17^2 - 1)) = 0.00245), so any change of a ranking fails.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

TOLERANCE = 0.002
PAIRS = ("fp8", "int4")


def _section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## Image-text calibration\n(.*?)^## ", text, re.S | re.M)
    assert m, "README.md has no 'Image-text calibration' section"
    return m.group(1)


def _rows(section: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header row starts with ``header``."""
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def readme_numbers(section: str) -> dict[str, Any]:
    """{pair: {"groups": {name: {"text": (share, rank), "image_text": (share, rank)}},
    "spearman": {"a:b": value}}} as the README states them, and the size it names."""
    out: dict[str, Any] = {p: {"groups": {}, "spearman": {}} for p in PAIRS}
    for cells in _rows(section, "| group | fp8 text share |"):
        name, values = cells[0], cells[1:]
        for i, pair in enumerate(PAIRS):
            share_t, share_i, ranks = values[3 * i: 3 * i + 3]
            rank_t, rank_i = (int(r) for r in ranks.split("->"))
            out[pair]["groups"][name] = {"text": (float(share_t), rank_t),
                                         "image_text": (float(share_i), rank_i)}
    for cells in _rows(section, "| Spearman over the"):
        a, b = (s.strip() for s in cells[0].split(" vs "))
        for pair, value in zip(PAIRS, cells[1:], strict=True):
            out[pair]["spearman"][":".join(sorted((a, b)))] = float(value)
    size = re.search(r"scripts/modality_table\.py\s+--size (\w+)", section)
    assert size, "the README does not name the command that produced the table"
    out["size"] = size.group(1)
    return out


def test_the_readme_modality_table_is_reproduced(tmp_path: Path) -> None:
    want = readme_numbers(_section())
    # the parse found what the issue asks for: Spearman text vs image-text, lm_head's shares
    for pair in PAIRS:
        assert "image_text:text" in want[pair]["spearman"]
        assert "lm_head" in want[pair]["groups"]

    spec = importlib.util.spec_from_file_location("modality_table",
                                                  ROOT / "scripts" / "modality_table.py")
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "modality.json"
    script.main(["--pairs", *PAIRS, "--size", want["size"], "--no-kl", "--amax-pairs",
                 "--json", str(out)])
    got = json.loads(out.read_text())

    for pair in PAIRS:
        for key, value in want[pair]["spearman"].items():
            assert got[pair]["spearman"][key] == pytest.approx(value, abs=TOLERANCE), (pair, key)
        for name, modes in want[pair]["groups"].items():
            for modality, (share, rank) in modes.items():
                measured = got[pair]["groups"][name][modality]
                assert measured["rank"] == rank, (pair, name, modality)
                assert measured["share"] == pytest.approx(share, abs=TOLERANCE), (
                    pair, name, modality)
