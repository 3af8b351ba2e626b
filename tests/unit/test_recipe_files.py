"""Recipe files are ModelOpt PTQ recipes: ModelOpt's own loader validates them, and what they
quantize (groups, formats, LM bits) reads back against the run's manifest."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from layer_sensitivity import budgets, recipe_files, recipes
from layer_sensitivity.errors import UserError
from tests.helpers.manifests import frontier_point, typed
from tests.helpers.recipes import FP8, INT4, LM, NONE, enabled_modules, label, modules_of, ranked, synthetic


def _round_trip(r: recipes.Recipe, m: dict[str, Any], path: Path) -> recipes.Recipe:
    recipe_files.write_recipe(r, path, typed(m), run_id="0123abcd")
    back = recipe_files.read_recipe(path, typed(m))
    assert (back.name, back.kind, back.kept, back.quantized) == (r.name, r.kind, r.kept, r.quantized)
    assert back.lm_bits == pytest.approx(r.lm_bits)
    return back


def test_a_recipe_file_is_a_modelopt_ptq_recipe(tmp_path: Path) -> None:
    from modelopt.recipe import ModelOptPTQRecipe, load_recipe

    m = synthetic([FP8])
    r = budgets.keep_top(typed(m), headroom=(0.25,))[0]
    path = recipe_files.write_recipe(r, tmp_path / "sub" / "keep_top_25pct.yaml", typed(m), run_id="0123abcd")
    doc = yaml.safe_load(path.read_text())
    assert set(doc) == {"metadata", "quantize"} and doc["metadata"]["recipe_type"] == "ptq"
    loaded = load_recipe(path)  # ModelOpt's own loader and schema
    assert isinstance(loaded, ModelOptPTQRecipe)
    text = loaded.description
    assert "run 'synthetic' (0123abcd)" in text and "p (FP8_DEFAULT_CFG)" in text
    assert f"LM bits {r.lm_bits:.4f}" in text and f"{len(r.kept)} of 17 LM groups kept" in text
    cfg = recipe_files.load_recipe(path)
    assert set(cfg) == {"quant_cfg", "algorithm"} and cfg["algorithm"] == "max"
    weights = enabled_modules(cfg, "weight_quantizer")
    assert set(weights) == modules_of(m, r.quantized)  # exactly the intended modules
    assert set(enabled_modules(cfg, "input_quantizer")) == modules_of(m, r.quantized)  # W8A8
    assert all(tuple(c["num_bits"]) == (4, 3) for c in weights.values())
    _round_trip(r, m, path)


def test_int4_block_sizes_keep_integer_axes(tmp_path: Path) -> None:
    m = synthetic([INT4])
    r = budgets.keep_top(typed(m), headroom=(0.5,))[0]
    path = recipe_files.write_recipe(r, tmp_path / "keep_top_50pct.yaml", typed(m))
    assert "-1: 128" in path.read_text()  # YAML keeps ModelOpt's integer axis key
    cfg = recipe_files.load_recipe(path)
    assert next(iter(enabled_modules(cfg, "weight_quantizer").values()))["block_sizes"] == {
        -1: 128, "type": "static"}
    assert not enabled_modules(cfg, "input_quantizer")
    _round_trip(r, m, path)
    (frontier,) = recipes.from_frontier(typed(m))
    assert _round_trip(frontier, m, tmp_path / "frontier_4bits.yaml").kind == recipes.FRONTIER


def test_mixed_recipe_reads_back_format_per_group_and_groups_share_one(tmp_path: Path) -> None:
    m = synthetic([FP8, INT4])
    order = ranked(m)
    point = {h: label(FP8) if i < 3 else NONE if i < 6 else label(INT4) for i, h in enumerate(order)}
    m["frontier"] = [frontier_point(6.0, point)]
    (mixed,) = recipes.from_frontier(typed(m))
    back = _round_trip(mixed, m, tmp_path / "mixed_6bits.yaml")
    assert set(back.quantized.values()) == {FP8[0], INT4[0]}
    settings = recipe_files.module_settings(back.config)
    for g in recipes.manifest_groups(typed(m)):  # q/k/v and gate/up: one format per group
        per_module = [settings.get(mod) for mod in g.modules]
        assert all(s == per_module[0] for s in per_module), g.handle


def test_foreign_or_broken_recipes_are_user_errors(tmp_path: Path) -> None:
    m = synthetic([INT4])
    r = budgets.keep_top(typed(m), headroom=(0.25,))[0]
    good = recipe_files.write_recipe(r, tmp_path / "r.yaml", typed(m))
    doc = yaml.safe_load(good.read_text())

    def variant(name: str, change: Any) -> Path:
        d = copy.deepcopy(doc)
        change(d)
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(d))
        return p

    q_proj = f"{LM}.{0}.self_attn.q_proj"
    half = variant("half", lambda d: d["quantize"]["quant_cfg"].append(
        {"quantizer_name": f"{q_proj}.weight_quantizer", "enable": False}))
    if any(q_proj in h for h in r.quantized):
        with pytest.raises(UserError, match="only part of layer group"):
            recipe_files.read_recipe(half, typed(m))
    vision = variant("vision", lambda d: d["quantize"]["quant_cfg"].append(
        {"quantizer_name": "model.visual.blocks.0.attn.qkv.weight_quantizer", "enable": True,
         "cfg": {"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}}}))
    with pytest.raises(UserError, match="vision"):
        recipe_files.read_recipe(vision, typed(m))
    other = variant("other", lambda d: [e.update(cfg={"num_bits": 8, "axis": 0})
                                        for e in d["quantize"]["quant_cfg"] if "cfg" in e])
    with pytest.raises(UserError, match="did not search"):
        recipe_files.read_recipe(other, typed(m))
    extra = variant("extra", lambda d: d.update(layer_sensitivity={"kind": "x"}))
    with pytest.raises(UserError, match="not a valid ModelOpt PTQ recipe"):
        recipe_files.load_recipe(extra)
    (tmp_path / "old.json").write_text('{"quant_cfg": []}')
    with pytest.raises(UserError, match="not a valid ModelOpt PTQ recipe"):
        recipe_files.load_recipe(tmp_path / "old.json")
    with pytest.raises(UserError, match="does not exist"):
        recipe_files.load_recipe(tmp_path / "missing.yaml")


def test_the_recipes_module_names_write_and_load_modelopt_yaml(tmp_path: Path) -> None:
    m = synthetic([INT4])
    (path,) = recipes.write_recipes(budgets.keep_top(typed(m), headroom=(0.1,)), tmp_path, typed(m))
    assert path.suffix == ".yaml" and recipes.load_recipe(path) == recipe_files.load_recipe(path)
