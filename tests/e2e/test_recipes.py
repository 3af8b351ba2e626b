"""Every exported recipe loads into ``mtq.quantize`` and quantizes exactly the modules it names.

Manifests come from real sensitivity jobs on the embedded model (int4 weight-only and fp8 W8A8,
each with a bit-target frontier); the expected modules are read from the manifest's groups, not
from the recipe's own config.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from layer_sensitivity import (
    autoquant,
    baselines,
    budgets,
    calibration,
    ground_truth,
    manifest,
    paths,
    pipeline,
    recipe_files,
    recipes,
)
from layer_sensitivity.model import loader, scope
from layer_sensitivity.schema import (
    AutoQuantConfig,
    DatasetConfig,
    ModelConfig,
    Precision,
    QuantPairConfig,
    SensitivityConfig,
    TrackingConfig,
)

pytestmark = pytest.mark.slow

TINY_MODEL = Path(paths.asset("tiny-qwen3-vl"))
PAIRS = {"wint4_afp16": [4, 6, 8], "wfp8_afp8": [8, 10, 12]}


def _pair(name: str) -> QuantPairConfig:
    d = yaml.safe_load((paths.CONF_DIR / "quant_pair" / f"{name}.yaml").read_text())
    return QuantPairConfig(**{**d, "weight": Precision(d["weight"]),
                              "activation": Precision(d["activation"])})


def _job_manifest(pair: str, targets: list[float], out: Path) -> manifest.Manifest:
    cfg = SensitivityConfig(quant_pair=_pair(pair), dataset=DatasetConfig(max_calib_samples=8),
                            autoquant=AutoQuantConfig(effective_bits=targets, reuse_scores=False),
                            tracking=TrackingConfig(enabled=False))
    return pipeline.run(pipeline.plan(cfg), out).manifest


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, manifest.Manifest]:
    return {p: _job_manifest(p, t, tmp_path_factory.mktemp(p)) for p, t in PAIRS.items()}


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, list[calibration.Batch]]:
    loaded = loader.load(ModelConfig(path=str(TINY_MODEL), device="cpu"), TINY_MODEL, "cpu")
    captions = calibration.read_captions(paths.asset("captions/captions.txt"), 8).lines
    return loaded.model, calibration.build_batches(captions, loaded.tokenizer, 4, 128)


def _enabled(m: Any, attr: str) -> dict[str, Any]:
    from modelopt.torch.quantization.nn import TensorQuantizer

    return {name.removesuffix(f".{attr}"): q for name, q in m.named_modules()
            if isinstance(q, TensorQuantizer) and name.endswith(f".{attr}") and q.is_enabled}


def _quantize(base: Any, batches: list[calibration.Batch], cfg: dict[str, Any]) -> Any:
    import modelopt.torch.quantization as mtq

    def loop(m: Any) -> None:
        for b in batches:
            m(input_ids=b["input_ids"], attention_mask=b["attention_mask"])

    return mtq.quantize(copy.deepcopy(base), cfg, loop)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_every_recipe_quantizes_exactly_its_modules(
        pair: str, manifests: dict[str, manifest.Manifest], tiny: tuple[Any, list[calibration.Batch]],
        tmp_path: Path) -> None:
    m = manifests[pair]
    q = m.quantization
    sens = m.layer_sensitivity
    assert q.weight_quantizer is not None and q.input_quantizer is not None
    all_recipes = (recipes.from_frontier(m) + budgets.keep_top(m, headroom=(0.0, 0.5))
                   + baselines.equal_bits_recipes(m, (0.1, 0.25), draws=1)
                   + ground_truth.alone_recipes(m, subset=3))
    all_recipes.append(budgets.keep_top_for_bits(m, all_recipes[1].lm_bits))
    # frontier, 2 budgets, 2 x (guided, ranking order, reverse, 5 rules, 1 draw), 3 alone, 1
    assert len({r.name for r in all_recipes}) == len(all_recipes) == 3 + 2 + 2 * 9 + 3 + 1
    paths_ = recipe_files.write_recipes(all_recipes, tmp_path / "recipes", m)
    base, batches = tiny
    weight_bits = tuple(q.weight_quantizer["num_bits"]) if isinstance(
        q.weight_quantizer["num_bits"], list) else q.weight_quantizer["num_bits"]
    seen_counts = set()
    for recipe, path in zip(all_recipes, paths_, strict=True):
        cfg = recipe_files.load_recipe(path)  # validated by modelopt.recipe.load_recipe
        assert recipe_files.read_recipe(path, m).quantized == recipe.quantized
        qm = _quantize(base, batches, cfg)
        expected = {mod for h in recipe.quantized for mod in sens[h].modules or []}
        weights = _enabled(qm, "weight_quantizer")
        inputs = _enabled(qm, "input_quantizer")
        assert set(weights) == expected, recipe.name
        assert set(inputs) == (expected if q.input_quantizer["enabled"] else set()), recipe.name
        assert not _enabled(qm, "output_quantizer")
        assert not any("visual" in n for n in [*weights, *inputs])
        for tq in weights.values():  # the pair's own format, calibrated
            assert tq.num_bits == weight_bits and tq.amax is not None
        kept = {mod for h in recipe.kept for mod in sens[h].modules or []}
        assert not kept & set(weights) and len(recipe.kept) + len(recipe.quantized) == len(sens)
        seen_counts.add(len(weights))
    assert len(seen_counts) >= 4  # the recipes really differ


@pytest.mark.parametrize("pair", list(PAIRS))
def test_frontier_recipes_are_the_solvers_choice(pair: str,
                                                 manifests: dict[str, manifest.Manifest]) -> None:
    m = manifests[pair]
    frontier = recipes.from_frontier(m)
    assert [r.info["target_bits"] for r in frontier] == [float(t) for t in PAIRS[pair]]
    for r, point in zip(frontier, m.frontier, strict=True):
        chosen = {h for h, label in point.recipe.items() if not label.startswith("NONE")}
        assert set(r.quantized) == chosen
        assert r.lm_bits == pytest.approx(point.achieved_bits)
        assert r.lm_bits <= point.target_bits + 1e-6


def test_configs_rebuilt_without_the_recorded_config_match(
        manifests: dict[str, manifest.Manifest]) -> None:
    for m in manifests.values():
        recorded = recipes.format_configs(m)
        q = m.quantization.model_copy(update={"modelopt_config": None})
        rebuilt = recipes.format_configs(m.model_copy(update={"quantization": q}))
        assert recipes.jsonable(rebuilt) == recipes.jsonable(recorded)
        assert list(rebuilt) == [m.quantization.modelopt_format]


def _quantizer_state(m: Any) -> dict[str, tuple[Any, ...]]:
    """Every quantizer: enabled, and for enabled ones its format and calibrated amax."""
    import torch
    from modelopt.torch.quantization.nn import TensorQuantizer

    out = {}
    for name, q in m.named_modules():
        if isinstance(q, TensorQuantizer):
            amax = q.amax if q.is_enabled and q.amax is not None else torch.zeros(())
            out[name] = ((q.is_enabled, q.num_bits, q.block_sizes, q.axis, amax.flatten().tolist())
                         if q.is_enabled else (False,))
    return out


def test_mixed_recipe_equals_modelopts_own_config(tiny: tuple[Any, list[calibration.Batch]],
                                                   tmp_path: Path) -> None:
    """A two-format search (FP8 W8A8, INT4 weight-only) at 6 LM bits: the recipe built from its
    per-group choice quantizes a fresh model exactly as ``mtq.get_auto_quantize_config`` does."""
    import modelopt.torch.quantization as mtq

    base, batches = tiny
    cfgs = {"FP8_DEFAULT_CFG": copy.deepcopy(mtq.FP8_DEFAULT_CFG),
            "INT4_BLOCKWISE_WEIGHT_ONLY_CFG": copy.deepcopy(mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)}
    in_scope, frozen = scope.weight_counts(base, ["*visual*"])
    _, state = mtq.auto_quantize(
        copy.deepcopy(base), constraints={"effective_bits": scope.modelopt_bits(6.0, in_scope, frozen)},
        quantization_formats=list(cfgs.values()), data_loader=batches,
        forward_step=lambda m, b: m(**b, use_cache=False), loss_func=lambda out, b: out.loss,
        disabled_layers=["*visual*"], num_calib_steps=len(batches), num_score_steps=len(batches),
        method="gradient")
    groups = autoquant.group_stats(state, ["*visual*"])
    doc = manifest.Manifest(schema_version=1,
                            scheme=manifest.Scheme(name="mixed", effective_bits_requested=6.0),
                            layer_sensitivity=manifest.layer_sensitivity(groups))
    (recipe,) = recipes.from_frontier(doc, cfgs)
    assert recipe.kind == "mixed" and recipe.lm_bits <= 6.0 + 1e-6
    chosen = {recipes.format_name(g.chosen) for g in groups.values() if g.in_scope}
    assert len(chosen) >= 2  # the solver really mixed (formats and/or 16-bit groups)
    cfg = recipe_files.load_recipe(recipe_files.write_recipe(recipe, tmp_path / "mixed.yaml"))
    ours = _quantizer_state(_quantize(base, batches, cfg))
    theirs = _quantizer_state(_quantize(base, batches, mtq.get_auto_quantize_config(state)))
    assert ours == theirs
    assert sum(v[0] for v in ours.values()) > 0
