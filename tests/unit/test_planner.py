"""The meta-device planner: shapes, groups, bits and memory without weights or data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from layer_sensitivity import paths, planner
from layer_sensitivity.errors import UserError
from layer_sensitivity.model import architecture, loader, scope
from layer_sensitivity.schema import Coverage, Method, ModelConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(paths.asset("tiny-qwen3-vl"))

# Hugging Face's parameter counts of the published checkpoints (safetensors metadata).
PUBLISHED = {"qwen3_vl_2b": 2.13e9, "qwen3_vl_4b": 4.44e9, "qwen3_vl_8b": 8.77e9}
DECODER_LAYERS = {"qwen3_vl_2b": 28, "qwen3_vl_4b": 36, "qwen3_vl_8b": 36}


def preset(name: str, monkeypatch: pytest.MonkeyPatch) -> ModelConfig:
    """A conf/model preset with no checkpoint reachable: only its ``config`` values remain."""
    data = yaml.safe_load((ROOT / "conf" / "model" / f"{name}.yaml").read_text())
    monkeypatch.delenv(data["path_env"], raising=False)
    return ModelConfig(name=data["name"], path=None, path_env=data["path_env"], config=data["config"])


def test_meta_plan_of_the_tiny_model_matches_the_loaded_model() -> None:
    cfg = ModelConfig(path=str(TINY), device="cpu")
    plan = planner.plan_model(cfg, format_bits=8.0, device="cpu")
    loaded = loader.load(cfg, TINY, "cpu").model
    frozen = scope.FROZEN_PATTERNS[Coverage.lm_only]

    assert plan["parameters"] == planner.parameter_counts(loaded)
    assert plan["parameters"]["total"] == sum(p.numel() for p in loaded.parameters())
    in_scope, frozen_weights = scope.weight_counts(loaded, frozen)
    assert plan["quantizable_weights"]["in_scope"] == in_scope
    assert plan["quantizable_weights"]["frozen"] == frozen_weights
    real_groups = planner.layer_groups(loaded, frozen)
    assert plan["groups"]["handles"] == [h for h, g in real_groups.items() if g.in_scope]
    assert plan["bits"]["targets"][0]["modelopt"] == pytest.approx(
        scope.modelopt_bits(8.0, in_scope, frozen_weights))
    assert plan["model"]["architecture_source"] == str(TINY / "config.json")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_plan_without_weights(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = planner.plan_model(preset(name, monkeypatch), format_bits=8.0)
    layers = DECODER_LAYERS[name]

    assert plan["model"]["architecture_source"] == "model.config"
    assert plan["groups"]["in_scope"] == 4 * layers + 1  # qkv, o, gate_up, down per layer + lm_head
    assert plan["groups"]["kinds"] == {"attn.qkv": layers, "attn.o": layers, "mlp.gate_up": layers,
                                       "mlp.down": layers, "lm_head": 1}
    assert plan["parameters"]["total"] == pytest.approx(PUBLISHED[name], rel=0.02)
    assert plan["parameters"]["vision"] > 0
    assert plan["parameters"]["language_model"] + plan["parameters"]["vision"] == \
        plan["parameters"]["total"]
    assert plan["model"]["dtype"] == "bfloat16"  # device auto plans for CUDA
    assert plan["memory_gib"]["weights"] == pytest.approx(plan["parameters"]["total"] * 2 / 2**30)
    # Frozen vision weights at 16 bits pull ModelOpt's target above the language model's.
    assert 8.0 < plan["bits"]["targets"][0]["modelopt"] < 16.0


def test_four_b_is_the_145_groups_of_the_issue(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = planner.plan_model(preset("qwen3_vl_4b", monkeypatch), format_bits=8.0)
    handles = plan["groups"]["handles"]
    assert len(handles) == 145
    assert "model.language_model.layers.35.mlp.gate_proj.quant_recipe" in handles
    assert not any("k_proj" in h or "up_proj" in h or "visual" in h for h in handles)
    assert "145 in scope" in planner.format_plan(plan)


def test_memory_grows_with_batch_and_sequence(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = preset("qwen3_vl_2b", monkeypatch)
    values, _ = architecture.architecture(cfg)
    shape = planner.TextShape.from_config(architecture.hf_config(values))

    def peak(batch: int, seq: int, method: Method = Method.gradient) -> float:
        return planner.memory_estimate(shape, parameters=2_000_000_000, largest_weight=300_000_000,
                                       quantized_out_features=1_000_000, batch_size=batch,
                                       seq_len=seq, dtype_bytes=2, method=method)["peak"]

    for method in Method:
        by_batch = [peak(b, 128, method) for b in (1, 2, 4, 8, 16)]
        by_seq = [peak(4, s, method) for s in (32, 64, 128, 256, 512)]
        assert by_batch == sorted(by_batch) and len(set(by_batch)) == len(by_batch)
        assert by_seq == sorted(by_seq) and len(set(by_seq)) == len(by_seq)
    assert peak(8, 512) > peak(8, 512, Method.kl_div)  # gradient keeps layer inputs and grads


def test_gpus_needed_follows_the_peak() -> None:
    assert planner.gpus_needed(10.0, 80.0) == 1
    assert planner.gpus_needed(100.0, 80.0) == 2
    assert planner.gpus_needed(100.0, 40.0) == 3
    with pytest.raises(UserError):
        planner.gpus_needed(1.0, 0.0)


def test_fused_moe_experts_are_one_group_per_layer() -> None:
    config = {"model_type": "qwen3_vl_moe",
              "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                              "vocab_size": 256, "moe_intermediate_size": 32, "num_experts": 4,
                              "num_experts_per_tok": 2, "decoder_sparse_step": 1,
                              "rope_scaling": {"rope_type": "default", "mrope_section": [2, 3, 3]}},
              "vision_config": {"depth": 1, "hidden_size": 32, "intermediate_size": 64,
                                "num_heads": 2, "out_hidden_size": 64,
                                "deepstack_visual_indexes": [0]}}
    plan = planner.plan_model(ModelConfig(path=None, config=config), format_bits=8.0)
    assert plan["groups"]["kinds"]["mlp.experts"] == 2
    experts = 2 * 4 * (2 * 32 * 64 + 64 * 32)  # layers x experts x (gate_up + down)
    lm_linear = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64) + 256 * 64  # q, k, v, o per layer; lm_head
    assert plan["quantizable_weights"]["in_scope"] == experts + lm_linear


def test_write_and_format(tmp_path: Path) -> None:
    plan = planner.plan_model(ModelConfig(path=str(TINY)), format_bits=4.5, targets=[4.5, 8.0],
                              batch_size=2, seq_len=64, method=Method.kl_div)
    path = planner.write_plan(plan, tmp_path / "plan")
    assert path.name == "plan.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(plan))
    text = planner.format_plan(plan)
    assert "17 in scope over 4 decoder layers" in text
    assert "bits: 4.5 over the language model" in text and "bits: 8 over" in text
    assert plan["memory_gib"]["checkpointed_inputs"] == 0.0  # kl_div has no backward


def test_no_architecture_is_a_user_error() -> None:
    with pytest.raises(UserError, match="model.config"):
        planner.plan_model(ModelConfig(name="nothing", path=None, config=None), format_bits=8.0)
    with pytest.raises(UserError, match="config.json"):
        planner.plan_model(ModelConfig(path="/nonexistent/dir"), format_bits=8.0)
    with pytest.raises(UserError, match="model_type"):
        planner.plan_model(ModelConfig(path=None, config={"model_type": "no_such_model"}),
                           format_bits=8.0)


def test_cpu_mode_plans_fp32_and_the_process_resident_set(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = preset("qwen3_vl_2b", monkeypatch)
    cpu = planner.plan_model(cfg, format_bits=8.0, device="cpu", batch_size=1)
    gpu = planner.plan_model(cfg, format_bits=8.0, device="cuda", batch_size=1)
    assert (cpu["model"]["dtype"], gpu["model"]["dtype"]) == ("float32", "bfloat16")
    assert cpu["memory_gib"]["weights"] == pytest.approx(2 * gpu["memory_gib"]["weights"])
    assert cpu["memory_gib"]["process"] == planner.CPU_PROCESS_GIB
    assert gpu["memory_gib"]["process"] == 0.0
    terms = cpu["memory_gib"]
    assert terms["peak"] == pytest.approx(
        terms["process"] + terms["weights"] + terms["quantizers"] + terms["checkpointed_inputs"]
        + terms["embedding_grad"] + max(terms["logits"],
                                        terms["layer_activations"] + terms["output_diffs"]))
    text = planner.format_plan(cpu)
    assert "peak resident set" in text and "GPUs of" not in text
    assert "peak GPU memory" in planner.format_plan(gpu)


VISION = Path(paths.asset("tiny-qwen3-vl-vision"))


def test_an_image_text_plan_adds_the_vision_tower_and_visual_features() -> None:
    cfg = ModelConfig(path=str(VISION))
    text = planner.plan_model(cfg, format_bits=8.0, batch_size=4, seq_len=128, device="cuda")
    image = planner.plan_model(cfg, format_bits=8.0, batch_size=4, seq_len=128, device="cuda",
                               image_max_pixels=9216)
    # 96 x 96 pixels: 9 vision tokens of 32 x 32 pixels, 36 patches of 16 x 16 before the merge.
    assert image["images"]["vision_tokens_per_image"] == 9
    assert image["images"]["patches_per_image"] == 36
    assert "images" not in text and "vision_activations" not in text["memory_gib"]
    t, m = text["memory_gib"], image["memory_gib"]
    for term in ("weights", "quantizers", "checkpointed_inputs", "layer_activations",
                 "output_diffs", "logits", "embedding_grad"):
        assert m[term] == t[term]  # the language model's S already holds the image tokens
    gib, b = planner.GIB, 2  # bf16
    # vision: hidden 64, intermediate 128, 3 x 2 x 16 x 16 fp32 pixel values per patch
    assert m["vision_activations"] == pytest.approx(
        4 * 36 * (4 * 3 * 2 * 16 * 16 + b * (10 * 64 + 4 * 128)) / gib)
    # merged embeddings + one DeepStack layer, language model hidden 128
    assert m["visual_features"] == pytest.approx(4 * 9 * 128 * b * 2 / gib)
    one_phase = max(t["logits"], t["layer_activations"] + t["output_diffs"])
    assert m["peak"] == pytest.approx(
        t["peak"] + m["visual_features"]
        + max(one_phase, m["vision_activations"]) - one_phase)
    assert m["peak"] > t["peak"]
    assert "vision_activations" in image["memory_formulas"]
    assert "9 vision tokens + prompt + caption <= 128 tokens" in planner.format_plan(image)


def test_vision_activations_grow_with_the_pixel_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = preset("qwen3_vl_4b", monkeypatch)
    small, large = (planner.plan_model(cfg, format_bits=8.0, seq_len=512, image_max_pixels=px)
                    for px in (9216, 200704))
    assert large["images"]["vision_tokens_per_image"] == 196
    assert large["images"]["deepstack_layers"] == 3
    assert large["memory_gib"]["vision_activations"] > small["memory_gib"]["vision_activations"]
    assert large["memory_gib"]["peak"] > small["memory_gib"]["peak"]
    with pytest.raises(UserError, match="calib_seq_len=128"):
        planner.plan_model(cfg, format_bits=8.0, seq_len=128, image_max_pixels=200704)


def test_image_text_dry_run_counts_pairs_and_plans_more_than_text(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from layer_sensitivity.cli.config_store import CONF_DIR

    def dry(*overrides: str) -> dict:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("sensitivity", overrides=["model=tiny_qwen3_vl_vision", "model.device=cuda",
                                                    "dataset.max_calib_samples=6", *overrides])
        cfg.output_layout.dir = str(tmp_path)
        return planner.dry_run(OmegaConf.to_object(cfg), tmp_path / "_".join(overrides))

    text, image = dry("dataset=captions"), dry("dataset=image_captions")
    assert text["job"]["samples"] == image["job"]["samples"] == 6
    assert image["images"]["vision_tokens_per_image"] == 9
    assert image["memory_gib"]["peak"] == pytest.approx(
        text["memory_gib"]["peak"] + image["memory_gib"]["visual_features"])  # logits dominate
    plan = json.loads((tmp_path / "dataset=image_captions" / "plan.json").read_text())
    assert plan["images"]["patches_per_image"] == 36
