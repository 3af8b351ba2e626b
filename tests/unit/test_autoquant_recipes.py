"""ModelOpt AutoQuantize recipes as the input of a search: validated by ModelOpt's schema,
translated to pairs and settings, contradictions and unsupported parts refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from layer_sensitivity import mixed
from layer_sensitivity.cli.recipe import compose_configs, from_autoquant_recipe
from layer_sensitivity.errors import UserError

BUILTIN = "general/auto_quantize/nvfp4_fp8_at_5p4bits"


def _recipe(tmp_path: Path, name: str = "mine", **auto_quantize: object) -> str:
    doc = {
        "imports": {"fp8": "configs/ptq/presets/model/fp8",
                    "int4": "configs/ptq/presets/model/int4_blockwise_weight_only",
                    "cost_excluded": "configs/auto_quantize/units/base_cost_excluded_layers"},
        "metadata": {"recipe_type": "auto_quantize", "description": "fp8 + int4 at 6 bits"},
        "auto_quantize": {"constraints": {"effective_bits": 6.0},
                          "candidate_formats": [{"$import": "fp8"}, {"$import": "int4"}],
                          "auto_quantize_method": "kl_div", "score_size": 16,
                          "disabled_layers": ["*visual*", "*router*", "*lm_head*"],
                          "cost_excluded_layers": [{"$import": "cost_excluded"}],
                          **auto_quantize},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_builtin_recipe_translates_to_pairs_and_settings() -> None:
    spec = from_autoquant_recipe(BUILTIN, [], None, [])
    assert spec.pairs == ["wfp4_afp4", "wfp8_afp8"]
    assert (spec.effective_bits, spec.method, spec.score_size, spec.lm_head) == (5.4, "gradient",
                                                                                128, True)
    assert "*router*" in spec.ignored_patterns  # matches nothing in a Qwen3-VL decoder
    assert "autoquant.score_size=128" in spec.overrides()


@pytest.mark.skipif(torch.cuda.is_available(), reason="FP4 runs where CUDA is")
def test_builtin_fp4_recipe_refuses_on_cpu_before_loading(tmp_path: Path) -> None:
    spec = from_autoquant_recipe(BUILTIN, [], None, [])
    cfgs, _ = compose_configs(spec.pairs, [*spec.overrides(), "tracking=none",
                                           f"output_layout.dir={tmp_path}"])
    with pytest.raises(UserError, match="CUDA"):
        mixed.plan(cfgs, spec.effective_bits)


def test_a_recipe_file_runs_on_cpu_pairs(tmp_path: Path) -> None:
    spec = from_autoquant_recipe(_recipe(tmp_path), [], None, [])
    assert spec.pairs == ["wfp8_afp8", "wint4_afp16"]
    assert (spec.effective_bits, spec.method, spec.score_size, spec.lm_head) == (6.0, "kl_div",
                                                                                16, False)
    cfgs, _ = compose_configs(spec.pairs, [*spec.overrides(), "tracking=none",
                                           f"output_layout.dir={tmp_path}"])
    mp = mixed.plan(cfgs, spec.effective_bits)  # checked like any mix: runs on CPU
    assert mp.budgets == [6.0]
    assert all(c.autoquant.method.value == "kl_div" and c.autoquant.score_size == 16
               and not c.autoquant.lm_head for c in cfgs)


def test_contradictions_with_the_command_line_are_errors(tmp_path: Path) -> None:
    path = _recipe(tmp_path)
    with pytest.raises(UserError, match="autoquant.method=gradient contradicts"):
        from_autoquant_recipe(path, [], None, ["autoquant.method=gradient"])
    with pytest.raises(UserError, match="effective_bits=7 contradicts"):
        from_autoquant_recipe(path, [], 7, [])
    with pytest.raises(UserError, match="formats=fp8,int8 contradicts"):
        from_autoquant_recipe(path, ["fp8", "int8"], None, [])
    spec = from_autoquant_recipe(path, ["int4", "fp8"], 6, ["autoquant.method=kl_div"])  # agrees
    assert spec.pairs == ["wfp8_afp8", "wint4_afp16"]


@pytest.mark.parametrize(("change", "message"), [
    ({"cost_excluded_layers": ["*mtp*"]}, "counts the vision tower"),
    ({"disabled_layers": ["*mlp.down_proj*"]}, "disables decoder layers"),
    ({"constraints": {"effective_bits": 6.0, "cost_model": "active_moe",
                      "cost": {"active_moe_expert_ratio": 0.5}}}, "cost model"),
    ({"candidate_formats": [{"$import": "fp8"}, {"$import": "fp8"}]}, "same format twice"),
    ({"constraints": {"effective_bits": 17}}, "did not load"),  # ModelOpt's own schema
    ({"candidate_formats": [{"$import": "fp8"}]}, "quant_pair=wfp8_afp8 autoquant.effective_bits=6"),
])
def test_unsupported_recipes_are_refused(tmp_path: Path, change: dict[str, object],
                                         message: str) -> None:
    with pytest.raises(UserError, match=message):
        from_autoquant_recipe(_recipe(tmp_path, **change), [], None, [])


def test_formats_without_a_pair_and_other_recipe_types_are_refused() -> None:
    with pytest.raises(UserError, match="no precision pair"):  # AWQ calibration
        from_autoquant_recipe("general/auto_quantize/w4a8_awq_beta_fp8_at_6p0bits", [], None, [])
    with pytest.raises(UserError, match="not an AutoQuantize one"):
        from_autoquant_recipe("general/ptq/fp8_default-kv_fp8", [], None, [])
    with pytest.raises(UserError, match="did not load"):
        from_autoquant_recipe("general/auto_quantize/nope", [], None, [])
