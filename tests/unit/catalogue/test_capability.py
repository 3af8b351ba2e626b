"""Checks before the model loads: which configs need CUDA (agreeing with ModelOpt on CPU), the device
error and its CPU alternatives, and weight group sizes against the layers' input features."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from layer_sensitivity import catalogue, pipeline
from layer_sensitivity.catalogue import Listing
from layer_sensitivity.errors import UserError
from tests.helpers import TINY_MODEL
from tests.helpers.catalogue import (
    CUDA_PAIRS,
    DEFAULT,
    LISTING,
    OVERLAYS,
    PAIRS,
    applied_settings,
    compose_job,
    quantize_on_cpu,
    recorded_settings,
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks CPU behaviour")
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_requires_cuda_matches_modelopt_on_cpu(name: str) -> None:
    """The recorded flag, the rule in code and ModelOpt's behaviour on CPU agree, pair by pair."""
    p = PAIRS[name]
    cfg = catalogue.build_quant_config(p, DEFAULT)
    assert bool(catalogue.cuda_requirements(cfg)) == p.requires_cuda
    if p.requires_cuda:
        with pytest.raises((AssertionError, RuntimeError), match="CUDA|cuda|triton"):
            quantize_on_cpu(cfg)
        return
    model = quantize_on_cpu(cfg)
    recorded = catalogue.effective_quantizers(cfg)
    layer = model[0]
    assert applied_settings(layer.weight_quantizer) == recorded_settings(recorded["weight"])
    assert applied_settings(layer.input_quantizer) == recorded_settings(recorded["input"])


@pytest.mark.parametrize("name", CUDA_PAIRS)
def test_cuda_pair_on_cpu_fails_before_the_model_loads(name: str, tmp_path: Path) -> None:
    # A missing model directory would be reported if the check ran after checkpoint lookup.
    job = compose_job(f"quant_pair={name}", "model.device=cpu", f"model.path={tmp_path}/absent")
    with pytest.raises(UserError) as e:
        pipeline.plan(job)
    msg = str(e.value)
    assert f"quant_pair={name}" in msg and "cannot run on cpu" in msg
    assert "CUDA" in msg  # the reason
    for alt in ("wfp8_afp8 (fp8)", "wint8_aint8 (int8)", "wint4_afp16 (int4)"):
        assert alt in msg  # the alternatives that do run
    alternatives = msg.split("Pairs that run on cpu:", 1)[1]
    assert not any(c in alternatives for c in CUDA_PAIRS)


def test_device_error_without_a_listing_still_names_the_reason() -> None:
    """The core called without Hydra (a notebook): no list of alternatives, the rest of the message."""
    name = CUDA_PAIRS[0]
    cfg = catalogue.build_quant_config(PAIRS[name], DEFAULT)
    empty = Listing.ordered([], {}, [])
    assert catalogue.cpu_alternatives(empty) == []
    with pytest.raises(UserError) as e:
        catalogue.check_device(PAIRS[name], DEFAULT, cfg, "cpu", listing=empty)
    msg = str(e.value)
    assert f"quant_pair={name}" in msg and "cannot run on cpu" in msg
    assert "Pairs that run on" not in msg and "model.device=cuda" in msg
    assert catalogue.cpu_alternatives(LISTING) == catalogue.cpu_alternatives()


def test_cuda_pairs_pass_the_device_check_on_cuda() -> None:
    for name in CUDA_PAIRS:
        cfg = catalogue.build_quant_config(PAIRS[name], DEFAULT)
        catalogue.check_device(PAIRS[name], DEFAULT, cfg, "cuda")
        catalogue.check_device(PAIRS[name], DEFAULT, cfg, "cuda:1")


def test_overlay_rejection_comes_before_the_model_loads(tmp_path: Path) -> None:
    job = compose_job("quant_pair=int4", "quant_granularity=a_per_token_dynamic",
               f"model.path={tmp_path}/absent")
    with pytest.raises(UserError, match="leaves the activations unquantized"):
        pipeline.plan(job)


def test_group_size_must_divide_every_quantized_layer() -> None:
    # lm_only: every language-model layer takes 128, 384 or 128 input features.
    assert pipeline.plan(compose_job("quant_pair=int8", "quant_granularity=w_group64")).quant_cfg
    assert pipeline.plan(compose_job("quant_pair=int8", "quant_granularity=w_group128")).quant_cfg
    with pytest.raises(UserError) as e:
        pipeline.plan(compose_job("quant_pair=int8", "quant_granularity=w_group64",
                           "quant_granularity.group_size=96"))
    msg = str(e.value)
    assert "groups of 96" in msg and "q_proj (128)" in msg and "Use a group size" in msg
    assert "visual" not in msg  # the frozen vision tower is not quantized, so not checked
    # full coverage quantizes the vision tower too, whose layers are narrower.
    with pytest.raises(UserError, match=r"groups of 128.*visual"):
        pipeline.plan(compose_job("quant_pair=int8", "quant_granularity=w_group128",
                           "autoquant.coverage=full"))


def test_only_a_group_overlay_reads_the_layers_and_the_message_lists_sizes_that_fit(
        tmp_path: Path) -> None:
    catalogue.check_layer_fit(OVERLAYS["w_per_out_channel"], tmp_path / "absent", [])  # reads nothing
    dims = catalogue.weight_last_dims(TINY_MODEL, ["*visual*"])
    assert not any("visual" in name for name in dims)
    assert dims["model.language_model.layers.0.mlp.down_proj"] == 384 and dims["lm_head"] == 128
    catalogue.check_layer_fit(OVERLAYS["w_group128"], TINY_MODEL, ["*visual*"])
    too_big = dataclasses.replace(OVERLAYS["w_group128"], group_size=256)
    with pytest.raises(UserError, match=r"groups of 256, .* of \d+ layer\(s\) of tiny-qwen3-vl: .*"
                                        r"Use a group size that divides them all \(16, 32, 64, 128\)"):
        catalogue.check_layer_fit(too_big, TINY_MODEL, ["*visual*"])
