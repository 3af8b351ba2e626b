"""Mixed-format recipes without a model: bad input refused at plan time, ModelOpt's rule for
composing single-format states, and the outputs (table, metrics, figures, recipes) of a manifest."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from layer_sensitivity import autoquant, figures, mixed, paths, recipe_files, recipes
from layer_sensitivity.cli.recipe import parse_budgets
from layer_sensitivity.errors import UserError
from layer_sensitivity.manifest import Manifest
from layer_sensitivity.schema import (
    AutoQuantConfig,
    Coverage,
    DatasetConfig,
    Modality,
    ModelConfig,
    Precision,
    PresetEdit,
    QuantPairConfig,
    SensitivityConfig,
    TrackingConfig,
)
from layer_sensitivity.tasks import recipe as recipe_task
from tests.helpers.manifests import typed


def _pair(name: str) -> QuantPairConfig:
    d = yaml.safe_load((paths.CONF_DIR / "quant_pair" / f"{name}.yaml").read_text())
    return QuantPairConfig(**{**d, "weight": Precision(d["weight"]),
                              "activation": Precision(d["activation"]),
                              "edits": [PresetEdit(e) for e in d.get("edits") or []]})


def _cfgs(*pairs: str, **autoquant_args: Any) -> list[SensitivityConfig]:
    base = SensitivityConfig(model=ModelConfig(device="cpu"),
                             dataset=DatasetConfig(max_calib_samples=4),
                             autoquant=AutoQuantConfig(**autoquant_args),
                             tracking=TrackingConfig(enabled=False))
    return [dataclasses.replace(base, quant_pair=_pair(p)) for p in pairs]


# --- Plan ---------------------------------------------------------------------------------------


def test_plan_resolves_formats_and_defaults_to_the_midpoint() -> None:
    mp = mixed.plan(_cfgs("wfp8_afp8", "wint4_afp16"), requested=["fp8", "int4"])
    assert mp.budgets == [6.0]
    assert mp.names == ["FP8_DEFAULT_CFG", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"]
    assert mp.min_bits == 4.0 and mp.tag == "wfp8_afp8+wint4_afp16"
    assert mp.recipe_name(5.5) == "mixed_wfp8_afp8+wint4_afp16_5.5bits"
    assert mixed.plan(_cfgs("wfp8_afp8", "wint4_afp16"), [4, 6.5, 16]).budgets == [4.0, 6.5, 16.0]


def test_an_image_text_mix_is_named_and_logged_as_image_text_jobs_are() -> None:
    """dataset=image_captions: ``_image`` scheme name and `` image_text`` run name, as sensitivity
    jobs; the image settings as params under a sensitivity run's names; text mixes unchanged."""
    shapes = paths.asset("shapes-captions")
    cfgs = [dataclasses.replace(c, model=ModelConfig(
        name="tiny_qwen3_vl_vision", path=paths.asset("tiny-qwen3-vl-vision"), device="cpu"),
        dataset=dataclasses.replace(c.dataset, name="bundled-shapes", modality=Modality.image_text,
                                    annotations_path=f"{shapes}/captions_train.json",
                                    images_dir=f"{shapes}/images"))
            for c in _cfgs("wfp8_afp8", "wint4_afp16")]
    mp = mixed.plan(cfgs, 6, requested=["fp8", "int4"])
    assert mp.scheme_name == "tiny_qwen3_vl_vision_mixed_wfp8_afp8+wint4_afp16_lm_small_image"
    assert recipe_task.default_run_name(mp) == "mixed/fp8+int4/6bits image_text"
    req = recipe_task.MixedRequest(cfgs, 6, Path("out"))
    params = recipe_task.params(req, mp)
    assert params["dataset.modality"] == "image_text" and params["dataset.image_max_pixels"] == 9216
    assert params["resolved.samples"] == 4
    text = mixed.plan(_cfgs("wfp8_afp8", "wint4_afp16"), 6, requested=["fp8", "int4"])
    assert recipe_task.default_run_name(text) == "mixed/fp8+int4/6bits"
    assert not text.scheme_name.endswith("_image")
    assert "dataset.modality" not in recipe_task.params(req, text)


@pytest.mark.parametrize(("pairs", "budgets", "kwargs", "expected"), [
    (["wfp8_afp8"], 6, {}, "names 1 format; a mixed recipe needs two or more"),
    (["wfp8_afp8", "wint4_afp16", "wfp8_afp8"], 6, {}, "wfp8_afp8 is listed twice"),
    (["wfp8_afp8", "wint8_aint8"], 8, {}, "both cost 8 bits per weight"),
    (["wint4_afp16", "wint4_afp8"], 6, {}, "both cost 4 bits per weight"),
    (["wfp8_afp8", "wfp4_afp4"], 6, {}, "format wfp4_afp4: quant_pair=wfp4_afp4"),
    (["wfp8_afp8", "wint4_afp16"], 3.5, {}, "effective_bits=3.5 is out of reach"),
    (["wfp8_afp8", "wint4_afp16"], [6, 16.5], {}, "effective_bits=16.5 is out of reach"),
    (["wfp8_afp8", "wint4_afp16"], "six", {}, "effective_bits='six' is not a number"),
    (["wfp8_afp8", "wint4_afp16"], [6, 6], {}, "repeats a target"),
    (["wfp8_afp8", "wint4_afp16"], 6, {"coverage": Coverage.full}, "autoquant.coverage=full"),
])
def test_bad_mixes_are_refused_before_the_model_loads(pairs: list[str], budgets: Any,
                                                      kwargs: dict[str, Any], expected: str) -> None:
    with pytest.raises(UserError, match=re.escape(expected)) as e:
        mixed.plan(_cfgs(*pairs, **kwargs), budgets)
    assert "\n" not in str(e.value)  # one paragraph


def test_aliases_of_one_pair_are_a_repeat() -> None:
    with pytest.raises(UserError, match="fp8 and wfp8_afp8 are both pair wfp8_afp8"):
        mixed.plan(_cfgs("wfp8_afp8", "wfp8_afp8"), 6, requested=["fp8", "wfp8_afp8"])


def test_formats_must_share_every_other_setting() -> None:
    a, b = _cfgs("wfp8_afp8", "wint4_afp16")
    b = dataclasses.replace(b, dataset=DatasetConfig(max_calib_samples=8))
    with pytest.raises(UserError, match="differ in more than the pair"):
        mixed.plan([a, b], 6)
    with pytest.raises(UserError, match="strategy='fast'"):
        mixed.plan([a, a], 6, strategy="fast")


def test_direct_reason() -> None:
    cfgs = _cfgs("wfp8_afp8", "wint4_afp16")
    assert mixed.direct_reason(mixed.plan(cfgs, 6)) is None
    assert "strategy=direct" in str(mixed.direct_reason(mixed.plan(cfgs, 6, strategy="direct")))
    off = _cfgs("wfp8_afp8", "wint4_afp16", reuse_scores=False)
    assert "reuse_scores=false" in str(mixed.direct_reason(mixed.plan(off, 6)))


@pytest.mark.parametrize(("text", "value"), [("6", 6), ("[5,6,7]", [5, 6, 7]),
                                             ("5,6.5", ["5", "6.5"]), ("", None), ("null", None)])
def test_parse_budgets(text: str, value: Any) -> None:
    assert parse_budgets(text) == value


# --- Composing single-format states -----------------------------------------------------------


def _recipes() -> tuple[Any, Any, Any, list[dict[str, Any]]]:
    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization.algorithms import QuantRecipe

    cfgs = [dict(mtq.FP8_DEFAULT_CFG), dict(mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)]
    fp8, int4 = autoquant.search_recipes(cfgs)
    return fp8, int4, QuantRecipe(quant_cfg=None), cfgs


def _single(recipe: Any, none: Any, scores: dict[str, float], method: str = "gradient"
            ) -> dict[str, Any]:
    """A single-format state as auto_quantize returns it: [format, NONE] per group, plus one
    frozen group with NONE only."""
    stats: dict[str, Any] = {}
    for i, (handle, score) in enumerate(scores.items()):
        n = 1000.0 * (i + 1)
        stats[handle] = {"formats": [recipe, none], "scores": [score, 0],
                         "costs": [n * recipe.compression, n], "module_names": [handle[:-12]],
                         "quantizer_attrs": {}, "cost_weight": 1.0, "allow_no_quant": True,
                         "is_fixed": False, "uncompressed_cost": n}
    stats["model.visual.x.quant_recipe"] = {
        "formats": [none], "scores": [0], "costs": [500.0], "module_names": ["model.visual.x"],
        "quantizer_attrs": {}, "cost_weight": 1.0, "allow_no_quant": True, "is_fixed": False,
        "uncompressed_cost": 500.0}
    return {"method": method, "cost_model": "weight", "cost": {}, "active_moe_expert_ratio": None,
            "cost_denominator": 3500.0, "disabled_layers": ["*visual*"],
            "candidate_stats": stats, "quantizer_states": {"x": 1}, "best": {"recipe": {}}}


def test_composition_sorts_by_compression_and_clips_scores_monotone() -> None:
    fp8, int4, none, cfgs = _recipes()
    s8 = _single(fp8, none, {"a.quant_recipe": 0.5, "b.quant_recipe": 3.0})
    s4 = _single(int4, none, {"a.quant_recipe": 2.0, "b.quant_recipe": 1.0})
    state = autoquant.compose_states([s8, s4], cfgs)
    a, b = state["candidate_stats"]["a.quant_recipe"], state["candidate_stats"]["b.quant_recipe"]
    assert a["formats"] == [int4, fp8, none] and [str(f) for f in a["formats"]][0].startswith("INT4")
    assert a["scores"] == [2.0, 0.5, 0]
    assert b["scores"] == [1.0, 1.0, 0]  # FP8's own 3.0 clipped to INT4's 1.0 (ModelOpt's rule)
    assert b["costs"] == [2000.0 * 0.25, 2000.0 * 0.5, 2000.0]
    assert state["candidate_stats"]["model.visual.x.quant_recipe"]["formats"] == [none]
    assert state["quantizer_states"] == {} and state["cost_denominator"] == 3500.0
    assert autoquant.resolve(state, 16.0)  # ModelOpt's solver takes it


@pytest.mark.parametrize("change", ["method", "groups", "cost", "format"])
def test_states_that_do_not_compose(change: str) -> None:
    fp8, int4, none, cfgs = _recipes()
    s8 = _single(fp8, none, {"a.quant_recipe": 0.5})
    s4 = _single(int4, none, {"a.quant_recipe": 2.0}, method="kl_div" if change == "method"
                 else "gradient")
    if change == "groups":
        s4 = _single(int4, none, {"c.quant_recipe": 2.0})
    elif change == "cost":
        s4["candidate_stats"]["a.quant_recipe"]["uncompressed_cost"] = 7.0
    elif change == "format":
        s4 = _single(fp8, none, {"a.quant_recipe": 2.0})
    with pytest.raises(autoquant.NotComposable):
        autoquant.compose_states([s8, s4], cfgs)


def test_derived_formats_are_named_as_one_search_names_them() -> None:
    import modelopt.torch.quantization as mtq

    derived = {**mtq.FP8_DEFAULT_CFG, "quant_cfg": [*mtq.FP8_DEFAULT_CFG["quant_cfg"],
                                                    {"quantizer_name": "*input_quantizer",
                                                     "enable": False}]}
    labels = autoquant.modelopt_labels([mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG, derived])
    assert labels == ["INT4_BLOCKWISE_WEIGHT_ONLY_CFG(effective-bits: 4.0)",
                      "CUSTOM_1(effective-bits: 8.0)"]


# --- Outputs of a mixed manifest (no torch needed) ----------------------------------------------

LM = "model.language_model.layers"
I4, F8, NO = ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG(effective-bits: 4.0)",
              "FP8_DEFAULT_CFG(effective-bits: 8.0)", "NONE(effective-bits: 16.0)")
CONFIGS = {
    "INT4_BLOCKWISE_WEIGHT_ONLY_CFG": {"quant_cfg": [
        {"quantizer_name": "*", "enable": False},
        {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 4, "block_sizes": {"-1": 128}}},
        {"quantizer_name": "*input_quantizer", "enable": False}], "algorithm": "max"},
    "FP8_DEFAULT_CFG": {"quant_cfg": [
        {"quantizer_name": "*", "enable": False},
        {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": [4, 3], "axis": None}},
        {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": [4, 3], "axis": None}}],
        "algorithm": "max"},
}


def _doc() -> dict[str, Any]:
    """Two decoder layers (qkv, o, gate/up, down) and lm_head; two budgets."""
    sens, handles = {}, []
    for layer in range(2):
        for kind, modules, n in (("self_attn.q_proj", ["q_proj", "k_proj", "v_proj"], 300.0),
                                 ("self_attn.o_proj", ["o_proj"], 100.0),
                                 ("mlp.gate_proj", ["gate_proj", "up_proj"], 600.0),
                                 ("mlp.down_proj", ["down_proj"], 300.0)):
            section = kind.split(".")[0]
            handles.append(f"{LM}.{layer}.{kind}.quant_recipe")
            sens[handles[-1]] = {"modules": [f"{LM}.{layer}.{section}.{m}" for m in modules],
                                 "cost": n}
    handles.append("lm_head.quant_recipe")
    sens[handles[-1]] = {"modules": ["lm_head"], "cost": 400.0}
    for rank, s in enumerate(sens.values(), start=1):
        n, score = s.pop("cost"), 1.0 / rank
        s.update(formats=[I4, F8, NO], scores=[score, score / 10, 0.0],
                 costs=[n / 4, n / 2, n], importance=score, rank=rank, chosen=I4)
    low = {h: (F8 if i < 2 else I4) for i, h in enumerate(handles)}
    high = {h: (NO if i == 0 else F8 if i < 5 else I4) for i, h in enumerate(handles)}
    point = {"modelopt_bits": 0.0, "total_score": 1.0, "satisfied": True}
    return {
        "schema_version": 1,
        "scheme": {"name": "tiny_mixed_test", "method": "gradient", "score_size": 4,
                   "effective_bits_requested": 5.0, "formats": list(CONFIGS)},
        "model": {"name": "tiny"}, "dataset": {"samples_used": 4, "size": "small"},
        "quantization": {"pair": "wfp8_afp8+wint4_afp16", "modelopt_configs": CONFIGS},
        "layer_sensitivity": sens,
        "autoquant": {"effective_bits_achieved": 4.9, "total_score": 1.0, "satisfied": True},
        "frontier": [{**point, "target_bits": 5.0, "achieved_bits": 4.9, "recipe": low},
                     {**point, "target_bits": 8.0, "achieved_bits": 7.5, "recipe": high}],
        "mixed": {"reason": "test", "single_frontiers": {
            "INT4_BLOCKWISE_WEIGHT_ONLY_CFG": [{**point, "target_bits": 4.0, "achieved_bits": 4.0,
                                                "total_score": 3.0}],
            "FP8_DEFAULT_CFG": [{**point, "target_bits": 8.0, "achieved_bits": 8.0,
                                 "total_score": 0.3}]}},
    }


def _manifest() -> Manifest:
    return typed(_doc())


def test_choices_table_in_depth_order() -> None:
    table = mixed.choices_frame(_manifest())
    assert len(table) == 2 * 9 and list(table["budget"].unique()) == [5.0, 8.0]
    first = table[table["budget"] == 8.0]
    assert list(first["group"])[:2] == ["L00.attn.qkv", "L00.attn.o"]
    assert list(first["group"])[-1] == "lm_head"
    assert list(first["format"])[:2] == ["NONE", "FP8_DEFAULT_CFG"]
    assert list(first["bits"])[:2] == [16.0, 8.0]


def test_metric_keys_are_valid_mlflow_keys() -> None:
    doc = _doc()
    groups = recipes.manifest_groups(typed(doc))
    for p in doc["frontier"]:
        p["mix"] = {}
        for g in groups:
            name = recipes.format_name(p["recipe"][g.handle])
            p["mix"].setdefault(name, {"groups": 0.0, "weights_share": 0.0})["groups"] += 1
    metrics = recipe_task.run_metrics(typed(doc))
    keys = {k for k, _, _ in metrics}
    assert "mixed/groups/FP8_DEFAULT_CFG" in keys and "single/FP8_DEFAULT_CFG/total_score" in keys
    assert all(re.fullmatch(r"[A-Za-z0-9_\-./: ]+", k) for k in keys)
    assert all(math.isfinite(v) for _, v, _ in metrics)
    assert {s for k, _, s in metrics if k == "mixed/total_score"} == {500, 800}


def test_recipes_of_a_mixed_manifest(tmp_path: Path) -> None:
    out = recipes.from_frontier(_manifest())
    assert [r.kind for r in out] == [recipes.MIXED] * 2
    high = out[1]
    assert high.kept == (f"{LM}.0.self_attn.q_proj.quant_recipe",)
    assert set(high.quantized.values()) == set(CONFIGS)
    expected = 16 * (300 / 2 + 100 / 2 + 600 / 2 + 300 / 2 + 300 + 4 * 0 + 100 / 4 + 600 / 4
                     + 300 / 4 + 400 / 4) / (2 * 1300 + 400)
    assert high.lm_bits == pytest.approx(expected)
    loaded = recipe_files.load_recipe(recipe_files.write_recipe(high, tmp_path / "r.yaml"))
    fp8_weight = [e for e in loaded["quant_cfg"]
                  if e["quantizer_name"] == f"{LM}.0.self_attn.o_proj.weight_quantizer"]
    assert fp8_weight[0]["cfg"]["num_bits"] == (4, 3)


def test_mixed_figures_are_byte_stable(tmp_path: Path) -> None:
    doc = _manifest()
    assert figures.mixed_figure_names(doc) == [figures.MIXED_FORMATS, figures.MIXED_FRONTIER]
    first = figures.write_mixed_figures(doc, tmp_path / "a")
    second = figures.write_mixed_figures(doc, tmp_path / "b")
    assert [p.name for p in first] == [figures.MIXED_FORMATS, figures.MIXED_FRONTIER]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second, strict=True))
    assert figures.mixed_format_order(doc) == ["INT4_BLOCKWISE_WEIGHT_ONLY_CFG",
                                               "FP8_DEFAULT_CFG", "NONE"]
    one = doc.model_copy(update={"frontier": doc.frontier[:1]})
    assert figures.mixed_figure_names(one) == [figures.MIXED_FORMATS]


def test_recipe_cli_strategies_are_mixed_strategies() -> None:
    """The recipe CLI names the strategies without importing mixed (its --help stays fast)."""
    from layer_sensitivity.cli import recipe as recipe_cli

    assert recipe_cli.STRATEGIES == mixed.STRATEGIES
    assert recipe_cli.AUTO == mixed.AUTO


def _heldout(best: bool = True) -> dict[str, Any]:
    mixed_row = {"name": "mixed_6bits", "format": None, "pair": None, "lm_bits": 5.94,
                 "kl": 0.0051, "kl_test": 0.0046}
    single = {"name": "single_INT4_6bits", "format": "INT4_BLOCKWISE_WEIGHT_ONLY_CFG",
              "pair": "wint4_afp16", "lm_bits": 5.88, "kl": 0.0043, "kl_test": 0.0041}
    return {"mixed": mixed_row, "singles": [single] if best else [],
            "best_single": single if best else None, "tolerance_bits": 0.5,
            "eval_tokens": 400, "test_tokens": 390}


def test_heldout_quality_is_one_line_and_single_value_metrics() -> None:
    line = mixed.describe_heldout(_heldout())
    assert "\n" not in line
    assert "mixed **0.0046** at 5.94 bits" in line and "**0.0041** for wint4_afp16 alone" in line
    assert mixed.heldout_metrics(_heldout()) == [("run/heldout_kl_mixed", 0.0046, None),
                                                 ("run/heldout_kl_best_single", 0.0041, None),
                                                 ("run/heldout_bits_best_single", 5.88, None)]
    image = mixed.describe_heldout({**_heldout(), "data": "image-text pairs"})  # image-text runs
    assert "(test image-text pairs," in image and "chosen on validation image-text pairs" in image
    # no single format within the tolerance: the mix alone, said so
    assert "no single format gets within 0.5 bits" in mixed.describe_heldout(_heldout(best=False))
    assert [m[0] for m in mixed.heldout_metrics(_heldout(best=False))] == ["run/heldout_kl_mixed"]
    # skipped (heldout=false): no metric, the description says how to measure it
    assert mixed.heldout_metrics(None) == []
    assert "not measured" in mixed.describe_heldout(None)
