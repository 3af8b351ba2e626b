"""The serving catalogue: which runtimes read ModelOpt's export of each pair and of a mix, with a
source for every claim; export refuses what none serves before loading anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from layer_sensitivity import budgets, catalogue, export, paths, recipe_files, recipes
from layer_sensitivity.catalogue import runtimes
from layer_sensitivity.errors import UserError
from layer_sensitivity.schema import Precision, PresetEdit, QuantGranularityConfig, QuantPairConfig
from tests.helpers.manifests import frontier_point, typed
from tests.helpers.recipes import FP8, INT4, synthetic

TRT, VLLM, SGL = runtimes.TRTLLM, runtimes.VLLM, runtimes.SGLANG


def _pair_cfg(name: str) -> dict[str, Any]:
    d = yaml.safe_load((paths.CONF_DIR / "quant_pair" / f"{name}.yaml").read_text())
    pair = QuantPairConfig(**{**d, "weight": Precision(d["weight"]),
                              "activation": Precision(d["activation"]),
                              "edits": [PresetEdit(e) for e in d.get("edits") or []]})
    return catalogue.build_quant_config(pair, QuantGranularityConfig())


@pytest.mark.parametrize(("pair", "algo", "served"), [
    ("wfp8_afp8", "FP8", {TRT, VLLM, SGL}),
    ("wint4_afp16", "W4A16_AWQ", {TRT}),
    ("wint8_aint8", "W8A8_SQ_PER_CHANNEL", {TRT}),
    ("wint8_afp16", "W8A16", {TRT}),
    ("wfp4_afp4", "NVFP4", {TRT, VLLM, SGL}),
    ("wfp4_afp16", "W4A16_NVFP4", {VLLM}),
])
def test_served_pairs_name_their_export_format_and_sources(pair: str, algo: str,
                                                           served: set[str]) -> None:
    s = runtimes.pair_serving(_pair_cfg(pair))
    assert s.quant_algo == algo and set(s.runtimes) == served and not s.unserved
    for sources in s.runtimes.values():  # every claim has a source (docs page or repository file)
        assert sources and all(("http" in x or "github.com" in x) for x in sources)


@pytest.mark.parametrize(("pair", "reason"), [
    ("wint4_aint4", "W4A16_AWQ whatever the activation"),  # the export would drop INT4 activations
    ("wint4_afp8", "W4A16_AWQ whatever the activation"),
    ("wfp8_aint8", "FP8 whatever the activation"),
    ("wint8_afp8", "W8A8_SQ_PER_CHANNEL"),
    ("wfp8_afp16", "no runtime documents"),
    ("wmxfp4_amxfp4", "no runtime claim found"),
])
def test_unfaithful_or_unclaimed_pairs_are_served_by_nobody(pair: str, reason: str) -> None:
    s = runtimes.pair_serving(_pair_cfg(pair))
    assert not s.servable and reason in " ".join(s.unserved.values())


def test_a_mix_is_served_by_runtimes_that_read_every_format_in_a_mix() -> None:
    fp8, int4, nvfp4 = (runtimes.config_kinds(_pair_cfg(p))
                        for p in ("wfp8_afp8", "wint4_afp16", "wfp4_afp4"))
    s = runtimes.serving({"a.q_proj": fp8, "a.k_proj": fp8, "b.down_proj": int4})
    assert s.quant_algo == runtimes.MIXED_PRECISION and set(s.runtimes) == {TRT}
    both = runtimes.serving({"a": fp8, "b": nvfp4})
    assert set(both.runtimes) == {TRT, VLLM}  # SGLang: no MIXED_PRECISION claim found
    bad = runtimes.serving({"a": fp8, "b": runtimes.config_kinds(_pair_cfg("wint4_aint4"))})
    assert not bad.servable
    assert runtimes.serving({}).servable  # nothing quantized: the 16-bit model


def test_recipe_files_give_layer_kinds(tmp_path: Path) -> None:
    m = synthetic([FP8, INT4])
    order = [r["name"] for r in m["sensitivity_ranking"]]
    m["frontier"] = [frontier_point(6.0, {
        h: f"{(FP8 if i < 5 else INT4)[0]}(effective-bits: 1)" for i, h in enumerate(order)})]
    (mixed,) = recipes.from_frontier(typed(m))
    path = recipe_files.write_recipe(mixed, tmp_path / "mixed_6bits.yaml", typed(m))
    kinds = runtimes.recipe_layer_kinds(recipe_files.module_settings(
        recipe_files.raw(path)["quantize"]))
    assert set(kinds.values()) == {("fp8", "fp8"), ("int4_block", "none")}
    assert len(kinds) == len({mod for h in mixed.quantized
                              for mod in m["layer_sensitivity"][h]["modules"]})


def test_export_refuses_unserved_recipes_and_bad_outputs_before_loading(tmp_path: Path) -> None:
    int4_int4 = ("INT4_INT4", 4.0, _pair_cfg("wint4_aint4"))
    m = synthetic([int4_int4])
    r = budgets.keep_top(typed(m), headroom=(0.25,))[0]
    path = recipe_files.write_recipe(r, tmp_path / "keep_top_25pct.yaml", typed(m))
    with pytest.raises(UserError, match="No runtime serves") as e:
        export.plan(typed(m), path, tmp_path / "out")
    assert "--force" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="Model directory"):  # forced: gets past the runtime check
        export.plan(typed(m), path, tmp_path / "out", force=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="already exists"):
        export.check_output(tmp_path / "full")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="Cannot write"):
        export.check_output(tmp_path / "file" / "out")
    nothing = budgets.keep_top(typed(synthetic([INT4])), headroom=(1.0,))[0]
    with pytest.raises(UserError, match="quantizes no layer"):
        export.plan(typed(synthetic([INT4])), recipe_files.write_recipe(
            nothing, tmp_path / "keep_top_100pct.yaml", typed(synthetic([INT4]))), tmp_path / "out")
    export.check_output(tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()  # checking leaves nothing behind


def all_pair_kinds() -> dict[str, tuple[str, str]]:
    return {f.stem: runtimes.config_kinds(_pair_cfg(f.stem))
            for f in sorted((paths.CONF_DIR / "quant_pair").glob("*.yaml"))
            if "weight" in (yaml.safe_load(f.read_text()) or {})}


def test_readme_runtime_table_is_current() -> None:
    readme = (paths.project_root() / "README.md").read_text()
    assert runtimes.readme_section(readme) == runtimes.markdown(all_pair_kinds()), (
        "README.md's runtime table is out of date: replace the text between the runtimes markers "
        "with: python -c 'from tests.unit.catalogue.test_runtimes import *; "
        "print(runtimes.markdown(all_pair_kinds()))'")
