"""The precision-pair catalogue: every pair and overlay composes, resolves to a ModelOpt config that
ModelOpt applies as recorded, and fails early and clearly where it cannot run.

The list of pairs, aliases and overlays comes from Hydra's composition (cli/config_store.py); the
ModelOpt checks quantize a two-layer MLP on CPU, not the model."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from layer_sensitivity import catalogue, paths, pipeline
from layer_sensitivity.catalogue import Listing
from layer_sensitivity.cli.config_store import CONF_DIR, load_listing
from layer_sensitivity.errors import UserError
from layer_sensitivity.schema import (
    FP4Format,
    Precision,
    QuantGranularityConfig,
    QuantPairConfig,
    SensitivityConfig,
    WeightGranularity,
)

ROOT = Path(__file__).resolve().parents[2]

LISTING = load_listing()
PAIRS, ALIASES, OVERLAYS = LISTING.pairs, LISTING.aliases, LISTING.overlays
CPU_PAIRS = [n for n, p in PAIRS.items() if not p.requires_cuda]
CUDA_PAIRS = [n for n, p in PAIRS.items() if p.requires_cuda]
DEFAULT = OVERLAYS["default"]

# What the issue asks for, by name.
REQUIRED_PAIRS = {"wfp8_afp8", "wfp8_afp16", "wfp8_aint8", "wint8_aint8", "wint8_afp16", "wint8_afp8",
                  "wint4_afp16", "wint4_aint8", "wint4_afp8", "wfp4_afp16", "wfp4_afp8", "wfp4_afp4"}
REQUIRED_ALIASES = {"fp8": "wfp8_afp8", "int8": "wint8_aint8", "int4": "wint4_afp16",
                    "nvfp4": "wfp4_afp4", "mxfp4": "wmxfp4_amxfp4", "w4a8": "wint4_afp8"}
REQUIRED_OVERLAYS = {"default", "w_per_tensor", "w_per_out_channel", "w_per_in_channel", "w_group64",
                     "w_group128", "a_per_tensor_static", "a_per_token_dynamic",
                     "recipe_match_channel_token"}
BITS = {Precision.fp8: 8.0, Precision.int8: 8.0, Precision.int4: 4.0, Precision.fp4: 4.0}


def _compose_cfg(*overrides: str) -> Any:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sensitivity", overrides=list(overrides))
    cfg.output_layout.dir = "/tmp/unused"  # ${hydra:...} only resolves inside a Hydra run
    return cfg


def _job(*overrides: str) -> SensitivityConfig:
    return OmegaConf.to_object(_compose_cfg(*overrides))  # type: ignore[return-value]


# --- the catalogue as configured -------------------------------------------------------------


def test_catalogue_has_every_requested_name() -> None:
    assert REQUIRED_PAIRS <= set(PAIRS)
    assert {p for p in PAIRS if "aint4" in p}, "at least one INT4-activation pair"
    assert ALIASES == REQUIRED_ALIASES
    assert set(OVERLAYS) == REQUIRED_OVERLAYS
    # Both FP4 flavours for every FP4 activation choice; the plain names are NVFP4.
    for a in ("afp16", "afp8"):
        assert PAIRS[f"wfp4_{a}"].fp4_format == FP4Format.nvfp4
        assert PAIRS[f"wmxfp4_{a}"].fp4_format == FP4Format.mxfp4
    assert PAIRS["wmxfp4_amxfp4"].fp4_format == FP4Format.mxfp4


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_pair_file_is_canonical_and_self_consistent(name: str) -> None:
    p = PAIRS[name]
    assert (ROOT / "conf" / "quant_pair" / f"{name}.yaml").is_file()
    w = "mx" + p.weight.value if p.fp4_format == FP4Format.mxfp4 else p.weight.value
    a = ("mx" + p.activation.value if p.fp4_format == FP4Format.mxfp4
         and p.activation == Precision.fp4 else p.activation.value)
    assert name == f"w{w}_a{a}"
    assert (p.fp4_format is not None) == (Precision.fp4 in (p.weight, p.activation))
    assert p.description and len(p.description.splitlines()) == 1


def test_listing_covers_every_config_file() -> None:
    """Every file of the two groups is a canonical pair, an alias or an overlay; nothing is dropped."""
    pair_files = {p.stem for p in (paths.CONF_DIR / "quant_pair").glob("*.yaml")}
    assert pair_files == set(PAIRS) | set(ALIASES)
    assert not set(PAIRS) & set(ALIASES)
    assert {p.stem for p in (paths.CONF_DIR / "quant_granularity").glob("*.yaml")} == set(OVERLAYS)


@pytest.mark.parametrize("option", sorted([*PAIRS, *ALIASES]))
def test_every_pair_option_composes_to_the_listing_entry(option: str) -> None:
    q = _job(f"quant_pair={option}").quant_pair
    assert q == PAIRS[ALIASES.get(option, option)]


def test_listing_order_does_not_depend_on_input_order() -> None:
    pairs, overlays = list(PAIRS.values()), list(OVERLAYS.values())
    random.Random(0).shuffle(pairs)
    random.Random(0).shuffle(overlays)
    again = Listing.ordered(pairs, dict(reversed(ALIASES.items())), overlays)
    assert list(again.pairs) == list(PAIRS) and list(again.overlays) == list(OVERLAYS)
    assert list(again.aliases) == sorted(ALIASES)
    # Weight precision first, then FP4 flavour, then activation precision.
    assert list(PAIRS)[:3] == ["wfp8_afp16", "wfp8_afp8", "wfp8_aint8"]
    assert list(OVERLAYS)[0] == "default"


def test_listing_inside_a_running_hydra_app_uses_its_search_path(tmp_path: Path) -> None:
    """Composed with the already initialized Hydra of a job or sweep (here: a trimmed copy of conf/),
    and a pair file whose name matches no file is reported rather than taken for an alias."""
    conf = tmp_path / "conf"
    shutil.copytree(paths.CONF_DIR, conf)
    kept = {"quant_pair": {"wfp8_afp8", "fp8", "wint8_aint8", "int8"},
            "quant_granularity": {"default", "w_group64"}}
    for group, names in kept.items():
        for f in (conf / group).glob("*.yaml"):
            if f.stem not in names:
                f.unlink()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        assert GlobalHydra.instance().is_initialized()
        trimmed = load_listing.__wrapped__()
    assert trimmed.pairs == {n: PAIRS[n] for n in ("wfp8_afp8", "wint8_aint8")}
    assert trimmed.aliases == {"fp8": "wfp8_afp8", "int8": "wint8_aint8"}
    assert trimmed.overlays == {n: OVERLAYS[n] for n in ("default", "w_group64")}

    pair_file = conf / "quant_pair" / "wint8_aint8.yaml"
    pair_file.write_text(pair_file.read_text().replace("name: wint8_aint8", "name: wint8_aint8_renamed"))
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        with pytest.raises(UserError, match="composes to a pair named wint8_aint8_renamed"):
            load_listing.__wrapped__()


@pytest.mark.parametrize("option", sorted(OVERLAYS))
def test_every_overlay_composes_to_the_catalogue_entry(option: str) -> None:
    assert _job(f"quant_granularity={option}").quant_granularity == OVERLAYS[option]


@pytest.mark.parametrize("override,needle", [
    ("quant_granularity.weight=per_banana", "per_banana"),
    ("quant_granularity.activation=per_block", "per_block"),
    ("quant_granularity.group_size=sixty", "sixty"),
    ("quant_pair.fp4_format=fp3", "fp3"),
    ("quant_pair.edits=[no_such_edit]", "no_such_edit"),
    ("quant_pair.weight=int3", "int3"),
])
def test_bad_catalogue_values_fail_at_compose_time(override: str, needle: str) -> None:
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        _job(override)
    assert needle in str(e.value) + str(e.value.__cause__)


def test_unknown_pair_lists_every_known_name() -> None:
    with pytest.raises(ConfigCompositionException) as e:
        _job("quant_pair=w3a3")
    text = str(e.value)
    assert "quant_pair/w3a3" in text
    for name in [*PAIRS, *ALIASES]:
        assert re.search(rf"\b{name}\b", text), name


# --- pairs and overlays -> ModelOpt configs -------------------------------------------------


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


# --- what ModelOpt actually does with them on this machine -----------------------------------


def _tiny_linear() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128))


def _quantize_on_cpu(cfg: dict[str, Any]) -> torch.nn.Sequential:
    import modelopt.torch.quantization as mtq

    model, x = _tiny_linear(), torch.randn(2, 8, 128)
    mtq.quantize(model, cfg, lambda m: m(x))
    model(x)
    return model


def _applied(tq: Any) -> dict[str, Any]:
    """A ModelOpt TensorQuantizer's settings in the manifest's vocabulary."""
    if not tq.is_enabled:
        return {"enabled": False}
    blocks = tq.block_sizes
    # ModelOpt turns per-token blocks ({-1: None}) into amax over the last axis of the 3-D input.
    axis = "per-token" if tq.axis == (0, 1) else tq.axis if blocks is None else "blocks"
    return {"enabled": True, "num_bits": list(tq.num_bits) if isinstance(tq.num_bits, tuple) else tq.num_bits,
            "block_sizes": None if blocks is None else {str(k): v for k, v in blocks.items()},
            "dynamic": bool(tq._dynamic), "axis": axis}


def _recorded(s: dict[str, Any]) -> dict[str, Any]:
    if not s["enabled"]:
        return {"enabled": False}
    blocks = s["block_sizes"]
    if blocks == {"-1": None}:
        return {"enabled": True, "num_bits": s["num_bits"], "block_sizes": None,
                "dynamic": s["type"] == "dynamic", "axis": "per-token"}
    if blocks is not None:
        blocks = {k: (tuple(v) if isinstance(v, list) else v) for k, v in blocks.items()}
    return {"enabled": True, "num_bits": s["num_bits"], "block_sizes": blocks,
            "dynamic": s["type"] == "dynamic", "axis": s["axis"] if blocks is None else "blocks"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks CPU behaviour")
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_requires_cuda_matches_modelopt_on_cpu(name: str) -> None:
    """The recorded flag, the rule in code and ModelOpt's behaviour on CPU agree, pair by pair."""
    p = PAIRS[name]
    cfg = catalogue.build_quant_config(p, DEFAULT)
    assert bool(catalogue.cuda_requirements(cfg)) == p.requires_cuda
    if p.requires_cuda:
        with pytest.raises((AssertionError, RuntimeError), match="CUDA|cuda|triton"):
            _quantize_on_cpu(cfg)
        return
    model = _quantize_on_cpu(cfg)
    recorded = catalogue.effective_quantizers(cfg)
    layer = model[0]
    assert _applied(layer.weight_quantizer) == _recorded(recorded["weight"])
    assert _applied(layer.input_quantizer) == _recorded(recorded["input"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks CPU behaviour")
@pytest.mark.parametrize("overlay", sorted(set(OVERLAYS) - {"default"}))
def test_overlays_apply_as_recorded_on_cpu(overlay: str) -> None:
    """Each overlay runs on CPU and ModelOpt applies exactly the recorded settings."""
    g = OVERLAYS[overlay]
    for name in ("wint8_aint8", "wfp8_afp8", "wint4_aint4"):
        cfg = catalogue.build_quant_config(PAIRS[name], g)
        assert catalogue.cuda_requirements(cfg) == []
        layer = _quantize_on_cpu(cfg)[0]
        recorded = catalogue.effective_quantizers(cfg)
        assert _applied(layer.weight_quantizer) == _recorded(recorded["weight"]), (name, overlay)
        assert _applied(layer.input_quantizer) == _recorded(recorded["input"]), (name, overlay)


# --- capability checks before the model loads ------------------------------------------------


@pytest.mark.parametrize("name", CUDA_PAIRS)
def test_cuda_pair_on_cpu_fails_before_the_model_loads(name: str, tmp_path: Path) -> None:
    # A missing model directory would be reported if the check ran after checkpoint lookup.
    job = _job(f"quant_pair={name}", "model.device=cpu", f"model.path={tmp_path}/absent")
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
    job = _job("quant_pair=int4", "quant_granularity=a_per_token_dynamic",
               f"model.path={tmp_path}/absent")
    with pytest.raises(UserError, match="leaves the activations unquantized"):
        pipeline.plan(job)


def test_group_size_must_divide_every_quantized_layer() -> None:
    # lm_only: every language-model layer takes 128, 384 or 128 input features.
    assert pipeline.plan(_job("quant_pair=int8", "quant_granularity=w_group64")).quant_cfg
    assert pipeline.plan(_job("quant_pair=int8", "quant_granularity=w_group128")).quant_cfg
    with pytest.raises(UserError) as e:
        pipeline.plan(_job("quant_pair=int8", "quant_granularity=w_group64",
                           "quant_granularity.group_size=96"))
    msg = str(e.value)
    assert "groups of 96" in msg and "q_proj (128)" in msg and "Use a group size" in msg
    assert "visual" not in msg  # the frozen vision tower is not quantized, so not checked
    # full coverage quantizes the vision tower too, whose layers are narrower.
    with pytest.raises(UserError, match=r"groups of 128.*visual"):
        pipeline.plan(_job("quant_pair=int8", "quant_granularity=w_group128",
                           "autoquant.coverage=full"))


def test_experimental_pairs_warn() -> None:
    for name, p in PAIRS.items():
        warning = catalogue.experimental_warning(p)
        assert (warning is not None) == p.experimental
        if warning:
            assert name in warning and "experimental" in warning
    assert {n for n, p in PAIRS.items() if p.experimental} >= {"wfp8_aint8", "wint8_afp8"}


# --- the README table ------------------------------------------------------------------------


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
