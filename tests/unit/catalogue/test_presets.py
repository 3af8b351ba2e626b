"""Pairs and overlays -> ModelOpt configs: every pair resolves to a config ModelOpt validates and
applies as recorded, edits and overlays are derived from ModelOpt's presets, and what cannot be
built fails early and clearly. The ModelOpt checks quantize a two-layer MLP on CPU, not the model."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from layer_sensitivity import catalogue
from layer_sensitivity.errors import UserError
from layer_sensitivity.schema import (
    FP4Format,
    Precision,
    QuantGranularityConfig,
    QuantPairConfig,
    WeightGranularity,
)
from tests.helpers.catalogue import (
    DEFAULT,
    OVERLAYS,
    PAIRS,
    applied_settings,
    quantize_on_cpu,
    recorded_settings,
)

BITS = {Precision.fp8: 8.0, Precision.int8: 8.0, Precision.int4: 4.0, Precision.fp4: 4.0}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_pair_resolves_to_a_modelopt_config(name: str) -> None:
    from modelopt.torch.quantization.config import QuantizeConfig

    p = PAIRS[name]
    cfg = catalogue.build_quant_config(p, DEFAULT)
    QuantizeConfig(**cfg)  # ModelOpt's own validation
    q = catalogue.effective_quantizers(cfg)
    json.dumps(q)  # goes into the manifest as is
    assert q["weight"]["enabled"]
    assert q["input"]["enabled"] == (p.activation != Precision.fp16)
    for side, precision in (("weight", p.weight), ("input", p.activation)):
        if precision != Precision.fp16:
            assert q[side]["format"].startswith(precision.value), (side, q[side])
            assert {"type", "num_bits", "axis", "block_sizes"} <= q[side].keys()
    if p.fp4_format == FP4Format.mxfp4:
        assert q["weight"]["block_sizes"]["scale_bits"] == [8, 0]
    elif p.fp4_format == FP4Format.nvfp4:
        assert q["weight"]["block_sizes"]["scale_bits"] == [4, 3]
    bits = catalogue.format_effective_bits(cfg)
    assert BITS[p.weight] <= bits <= BITS[p.weight] + 0.5
    # The derived config never loses the base preset's weight settings.
    base = catalogue.effective_quantizers(catalogue.modelopt_preset(p.modelopt_base))
    assert q["weight"] == base["weight"]
    if not p.edits:
        assert q == base


def test_edits_are_derived_from_modelopt_presets() -> None:
    def inputs(pair: str) -> dict[str, Any]:
        return catalogue.effective_quantizers(catalogue.build_quant_config(PAIRS[pair], DEFAULT))["input"]

    def preset_inputs(preset: str) -> dict[str, Any]:
        return catalogue.effective_quantizers(catalogue.modelopt_preset(preset))["input"]

    assert inputs("wint8_afp8") == preset_inputs("FP8_DEFAULT_CFG")
    assert inputs("wint4_afp8") == preset_inputs("FP8_DEFAULT_CFG")
    assert inputs("wfp8_aint8") == preset_inputs("INT8_DEFAULT_CFG")
    assert inputs("wint4_aint8") == preset_inputs("INT8_DEFAULT_CFG")
    assert inputs("wint4_aint4") == {**preset_inputs("INT8_DEFAULT_CFG"), "num_bits": 4, "format": "int4",
                                     "summary": "int4, per-tensor, static"}
    assert inputs("wfp8_afp16")["enabled"] is False


def _expected_rejection(p: QuantPairConfig, g: QuantGranularityConfig) -> bool:
    touches_w = g.weight != WeightGranularity.keep
    touches_a = g.activation.value != "keep"
    return ((touches_w and p.weight == Precision.fp4)
            or (touches_a and p.activation in (Precision.fp16, Precision.fp4)))


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_overlay_resolves_or_is_rejected_clearly(overlay: str) -> None:
    g = OVERLAYS[overlay]
    for name, p in PAIRS.items():
        if _expected_rejection(p, g):
            with pytest.raises(UserError) as e:
                catalogue.build_quant_config(p, g)
            msg = str(e.value)
            assert f"quant_granularity={overlay}" in msg and f"quant_pair={name}" in msg
            assert "quant_granularity=default" in msg  # the fix
            continue
        q = catalogue.effective_quantizers(catalogue.build_quant_config(p, g))
        pair_q = catalogue.effective_quantizers(catalogue.build_quant_config(p, DEFAULT))
        w, a = q["weight"], q["input"]
        assert w["num_bits"] == pair_q["weight"]["num_bits"]  # overlays keep the precision
        if g.weight == WeightGranularity.group:
            assert w["block_sizes"] == {"-1": g.group_size, "type": "static"}, name
        elif g.weight == WeightGranularity.per_tensor:
            assert (w["axis"], w["block_sizes"]) == (None, None)
        elif g.weight == WeightGranularity.per_out_channel:
            assert (w["axis"], w["block_sizes"]) == (0, None)
        elif g.weight == WeightGranularity.per_in_channel:
            assert (w["axis"], w["block_sizes"]) == (1, None)
        else:
            assert w == pair_q["weight"]
        if g.activation.value == "per_token_dynamic":
            assert (a["type"], a["block_sizes"]) == ("dynamic", {"-1": None}), name
        elif g.activation.value == "per_tensor_static":
            assert (a["type"], a["axis"], a["block_sizes"]) == ("static", None, None)
        else:
            assert a == pair_q["input"]


def test_recipe_match_channel_token_is_modelopts_fp8_per_channel_per_token() -> None:
    ours = catalogue.build_quant_config(PAIRS["wfp8_afp8"], OVERLAYS["recipe_match_channel_token"])
    theirs = catalogue.modelopt_preset("FP8_PER_CHANNEL_PER_TOKEN_CFG")
    assert catalogue.effective_quantizers(ours) == catalogue.effective_quantizers(theirs)


def test_group_size_settings_are_validated() -> None:
    p = PAIRS["wint8_aint8"]
    with pytest.raises(UserError, match="group_size=None"):
        catalogue.build_quant_config(p, QuantGranularityConfig(name="g", weight=WeightGranularity.group))
    with pytest.raises(UserError, match="group_size only applies to weight=group"):
        catalogue.build_quant_config(p, QuantGranularityConfig(name="g", group_size=64))


def test_missing_preset_reports_the_pair_unavailable() -> None:
    import modelopt

    ghost = QuantPairConfig(name="wfp2_afp2", modelopt_base="FP2_IMAGINARY_CFG")
    with pytest.raises(UserError) as e:
        catalogue.build_quant_config(ghost, DEFAULT)
    msg = str(e.value)
    assert "quant_pair=wfp2_afp2 is unavailable" in msg and "mtq.FP2_IMAGINARY_CFG" in msg
    assert modelopt.__version__ in msg


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_bases_use_a_calibration_autoquantize_accepts(name: str) -> None:
    from modelopt.torch.quantization.model_quant import _AUTO_QUANTIZE_SUPPORTED_ALGORITHMS

    algo = catalogue.build_quant_config(PAIRS[name], DEFAULT).get("algorithm")
    assert (algo["method"] if isinstance(algo, dict) else algo) in _AUTO_QUANTIZE_SUPPORTED_ALGORITHMS


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks CPU behaviour")
@pytest.mark.parametrize("overlay", sorted(set(OVERLAYS) - {"default"}))
def test_overlays_apply_as_recorded_on_cpu(overlay: str) -> None:
    """Each overlay runs on CPU and ModelOpt applies exactly the recorded settings."""
    g = OVERLAYS[overlay]
    for name in ("wint8_aint8", "wfp8_afp8", "wint4_aint4"):
        cfg = catalogue.build_quant_config(PAIRS[name], g)
        assert catalogue.cuda_requirements(cfg) == []
        layer = quantize_on_cpu(cfg)[0]
        recorded = catalogue.effective_quantizers(cfg)
        for side, quantizer in (("weight", layer.weight_quantizer), ("input", layer.input_quantizer)):
            assert applied_settings(quantizer) == recorded_settings(recorded[side]), (name, overlay)
