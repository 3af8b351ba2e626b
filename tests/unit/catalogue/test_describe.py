"""What a pair means in words and numbers: effective settings and names, the experimental warning,
and the README's catalogue table."""

from __future__ import annotations

from pathlib import Path

import pytest

from layer_sensitivity import catalogue
from layer_sensitivity.groups import GroupStats
from tests.helpers.catalogue import LISTING, OVERLAYS, PAIRS

NONE = "NONE(effective-bits: 16.0)"

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


@pytest.mark.parametrize("bits,name", [((4, 3), "fp8_e4m3"), ((5, 2), "fp8_e5m2"), ((2, 1), "fp4_e2m1"),
                                       ([1, 2], "fp4_e1m2"), (8, "int8"), (4, "int4")])
def test_dtype_names(bits: object, name: str) -> None:
    assert catalogue.dtype_name(bits) == name


def test_format_names_say_the_preset_its_edits_and_a_non_default_overlay() -> None:
    pair = PAIRS["wint4_afp8"]
    assert pair.edits and catalogue.format_name(pair) == "+".join(
        [pair.modelopt_base, *(e.value for e in pair.edits)])
    assert catalogue.format_name(pair, OVERLAYS["default"]) == catalogue.format_name(pair)
    assert catalogue.format_name(PAIRS["wint8_aint8"], OVERLAYS["w_group64"]) == (
        f"{PAIRS['wint8_aint8'].modelopt_base}+w_group64")


def test_modelopts_custom_label_is_renamed_to_the_catalogues() -> None:
    custom, fp8 = "CUSTOM_0(effective-bits: 4.5)", "FP8_DEFAULT_CFG(effective-bits: 8.0)"
    assert catalogue.custom_label(custom, "wint4_afp8") == "wint4_afp8(effective-bits: 4.5)"
    assert catalogue.custom_label(fp8, "x") == fp8
    assert catalogue.custom_label("CUSTOM_01(effective-bits: 4.5)", "x").startswith("CUSTOM_01")
    g = GroupStats([custom, NONE], [1.0, 0.0], [1.0, 4.0], ["m"], custom, True)
    renamed = catalogue.name_custom_format({"h": g}, "mine")["h"]
    assert renamed.formats == ["mine(effective-bits: 4.5)", NONE]
    assert renamed.chosen == "mine(effective-bits: 4.5)" and renamed.scores == g.scores


def test_readme_section_is_the_text_between_the_markers() -> None:
    assert catalogue.readme_section("no markers here") is None
    text = f"intro\n{catalogue.BEGIN}\n| a |\n{catalogue.END}\nrest"
    assert catalogue.readme_section(text) == "| a |"


def test_effective_settings_are_summarised_in_words() -> None:
    q = catalogue.effective_quantizers(catalogue.build_quant_config(PAIRS["wfp8_afp16"], OVERLAYS["default"]))
    assert q["input"] == {"enabled": False, "summary": "unquantized (16-bit)"}
    assert q["weight"]["format"] == "fp8_e4m3" and q["weight"]["summary"].startswith("fp8_e4m3, ")
