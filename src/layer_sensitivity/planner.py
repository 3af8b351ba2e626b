"""Plan a job before spending GPU hours: the architecture on the meta device, no weights, no data.

A plan answers: how big is the model (language model and vision tower), how many layer groups
will ModelOpt score and of which kinds, what bit target does ModelOpt get for the chosen pair,
and how much GPU memory will the job need at its batch size and sequence length.

The memory estimate is a model of what AutoQuantize does (ModelOpt 0.47, transformers 5), built
from the shapes alone; every term and its formula is written into the plan. Measured peaks
(scripts/gpu_smoke.py) are the check on it.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .groups import RECIPE_SUFFIX, layer_and_kind
from .model import architecture, scope
from .schema import Coverage, DType, Method, Modality, ModelConfig, ModelInit, SensitivityConfig

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
GIB = 1024**3
DEFAULT_GPU_MEMORY_GIB = 80.0
# Of a GPU's memory, what one job may plan to allocate: the CUDA context, cuBLAS/attention
# workspaces and allocator fragmentation take the rest.
GPU_USABLE_FRACTION = 0.85
# CPU / fp32 mode: a job's resident set also holds the interpreter with torch, transformers,
# ModelOpt, MLflow, Hydra, pandas and matplotlib loaded (measured 0.65 GiB on Linux x86-64,
# torch 2.13 CPU wheel, before any model), which GPU memory does not.
CPU_PROCESS_GIB = 0.65

# ModelOpt 0.47's grouping rules for the modules of a Qwen3-VL (modelopt/torch/quantization/
# algorithms.py, ``quant_grouping_rules``): matching modules share one recipe, whose handle is
# "<first module>.quant_recipe". Every other quantizable module is a group of its own.
_GROUP_RULES = (
    re.compile(r"^(.*?)\.(q_proj|k_proj|v_proj)$"),
    re.compile(r"^(.*?\.mlp\.experts)\.\d+\.(gate_proj|up_proj|down_proj)$"),
    re.compile(r"^(.*?)\.(gate_proj|up_proj)$"),
)


@dataclass
class Group:
    handle: str  # "<first module>.quant_recipe", as in ModelOpt's candidate_stats
    modules: list[str]
    weights: int
    in_scope: bool


def layer_groups(net: torch.nn.Module, frozen_patterns: list[str]) -> dict[str, Group]:
    """The groups AutoQuantize will form, in module order, keyed by handle (works on meta)."""
    import fnmatch

    by_key: dict[tuple[int, str], list[tuple[str, int]]] = {}
    for name, module in net.named_modules():
        n = scope.quantizable_weight_numel(module)
        if not n:
            continue
        key = (-1, name)
        for i, rule in enumerate(_GROUP_RULES):
            m = rule.match(name)
            if m:
                key = (i, m.group(1))
                break
        by_key.setdefault(key, []).append((name, n))
    groups = {}
    for members in by_key.values():
        names = [n for n, _ in members]
        frozen = all(any(fnmatch.fnmatch(n, p) for p in frozen_patterns) for n in names)
        handle = names[0] + RECIPE_SUFFIX
        groups[handle] = Group(handle, names, sum(w for _, w in members), not frozen)
    return groups


def _unique_numel(params: Any) -> int:
    seen: dict[int, int] = {}
    for p in params:
        seen.setdefault(id(p), p.numel())
    return sum(seen.values())


def parameter_counts(net: torch.nn.Module) -> dict[str, int]:
    """Parameters of the whole model, its language model (lm_head included, tied weights counted
    once) and its vision tower."""
    inner = getattr(net, "model", net)
    language = getattr(inner, "language_model", None)
    visual = getattr(inner, "visual", None)
    lm_params = list(language.parameters()) if language is not None else []
    head = getattr(net, "lm_head", None)
    if head is not None:
        lm_params += list(head.parameters())
    total = _unique_numel(net.parameters())
    lm = _unique_numel(lm_params)
    vision = _unique_numel(visual.parameters()) if visual is not None else 0
    return {"total": total, "language_model": lm, "vision": vision, "other": total - lm - vision}


# --------------------------------------------------------------------------------------------
# Memory


@dataclass(frozen=True)
class TextShape:
    """What the memory estimate needs from the language model's config."""

    hidden: int
    intermediate: int  # per token through the MLP (MoE: active experts x expert width)
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    experts: int = 0  # MoE: experts per layer (0 = dense)

    @classmethod
    def from_config(cls, config: Any) -> TextShape:
        t = getattr(config, "text_config", None) or config
        head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
        experts = int(getattr(t, "num_experts", 0) or 0)
        inter = (t.moe_intermediate_size * t.num_experts_per_tok) if experts else t.intermediate_size
        tied = bool(getattr(config, "tie_word_embeddings", False) or getattr(t, "tie_word_embeddings", False))
        return cls(t.hidden_size, int(inter), t.num_hidden_layers, t.num_attention_heads,
                   t.num_key_value_heads, int(head_dim), t.vocab_size, tied, experts)


@dataclass(frozen=True)
class VisionShape:
    """What the memory estimate of an image-text job needs from the vision tower's config."""

    hidden: int
    intermediate: int
    patch: int  # pixels per patch side
    merge: int  # merge x merge patches -> one vision token (the language model's)
    patch_values: int  # pixel values per patch: channels x temporal patch x patch x patch
    deepstack: int  # decoder layers DeepStack adds visual features to

    @classmethod
    def from_config(cls, config: Any) -> VisionShape:
        v = getattr(config, "vision_config", None)
        if v is None:
            raise UserError(f"dataset.modality=image_text needs a vision tower, but the model's "
                            f"config ({getattr(config, 'model_type', '?')}) has no vision_config. "
                            "Plan a Qwen3-VL checkpoint or preset.")
        patch, temporal = int(v.patch_size), int(getattr(v, "temporal_patch_size", 1))
        return cls(int(v.hidden_size), int(v.intermediate_size), patch, int(v.spatial_merge_size),
                   int(getattr(v, "in_channels", 3)) * temporal * patch * patch,
                   len(getattr(v, "deepstack_visual_indexes", None) or []))

    def tokens_per_image(self, max_pixels: int) -> int:
        """Vision tokens of the largest image the processor makes within ``max_pixels`` (its
        sides are multiples of patch x merge pixels: one token per (patch x merge)^2 pixels)."""
        return max_pixels // (self.patch * self.merge) ** 2


MEMORY_FORMULAS = {
    "weights": "parameters x dtype bytes",
    "quantizers": "2 x largest quantizable weight x b (fake-quantized weight and its working "
                  "copy, lm_head the largest) + output features of quantized layers x 4 B x "
                  "(formats + 1) (amax buffers)",
    "checkpointed_inputs": "gradient: layers x B x S x hidden x b (ModelOpt turns on HF gradient "
                           "checkpointing: only each decoder layer's input is kept)",
    "layer_activations": "B x S x b x (6 hidden + 2 (heads + kv_heads) head_dim + 4 intermediate), "
                         "x2 for its backward (one decoder layer at a time)",
    "output_diffs": "gradient: formats x B x S x b x (q + k + v + o + gate + up + down outputs) of "
                    "the recomputed layer = formats x B x S x b x ((heads + 2 kv_heads) head_dim "
                    "+ 2 hidden + 2 intermediate)",
    "logits": "gradient: B x S x vocab x (b logits + 4 fp32 log-softmax + 4 fp32 grad + b grad "
              "+ formats x b lm_head output diff); kl_div: B x S x vocab x (b + 12)",
    "embedding_grad": "gradient: vocab x hidden x b (the only parameter gradient ModelOpt enables, "
                      "cleared right after it is computed)",
    "process": "CPU only: the interpreter and its libraries (a measured constant)",
    "peak": "process + weights + quantizers + checkpointed_inputs + embedding_grad "
            "+ max(logits, layer_activations + output_diffs)",
}
# Image-text jobs: S holds each sample's V vision tokens + prompt + caption (the language model
# terms above already count them); the vision tower runs first, on P = V x merge^2 patches per
# image, unquantized in the model's dtype (lm_only) and forward only (nothing in it needs a grad).
IMAGE_MEMORY_FORMULAS = {
    "vision_activations": "B x P x (4 B x patch values (fp32 pixels) + b x (10 vision_hidden + 4 "
                          "vision_intermediate)) (one vision block at a time, forward only)",
    "visual_features": "B x V x hidden x b x (1 + DeepStack layers) (the merged image embeddings "
                       "and DeepStack features, held through the language model's forward)",
    "peak": "process + weights + quantizers + checkpointed_inputs + embedding_grad "
            "+ visual_features + max(logits, layer_activations + output_diffs, "
            "vision_activations)",
}


def memory_estimate(shape: TextShape, *, parameters: int, largest_weight: int,
                    quantized_out_features: int, batch_size: int, seq_len: int, dtype_bytes: int,
                    method: Method, formats: int = 1, process_gib: float = 0.0,
                    vision: VisionShape | None = None, vision_tokens: int = 0
                    ) -> dict[str, float]:
    """Peak memory of an AutoQuantize job in GiB, term by term (see MEMORY_FORMULAS): GPU memory
    on CUDA, the peak resident set on CPU (``process_gib`` = :data:`CPU_PROCESS_GIB` there).

    B = batch_size, S = seq_len (an upper bound: batches are padded only to their longest
    caption), b = dtype_bytes. Calibration (forward only) needs less than scoring. With
    ``vision`` (an image-text job, one image of ``vision_tokens`` per sample) the vision tower's
    terms join (IMAGE_MEMORY_FORMULAS).
    """
    b, tokens = dtype_bytes, batch_size * seq_len
    s = shape
    weights = parameters * b
    quantizers = 2 * largest_weight * b + quantized_out_features * 4 * (formats + 1)
    layer = tokens * b * (6 * s.hidden + 2 * (s.heads + s.kv_heads) * s.head_dim + 4 * s.intermediate)
    if method == Method.gradient:
        checkpoints = s.layers * tokens * s.hidden * b
        layer_total = 2 * layer
        diffs = formats * tokens * b * ((s.heads + 2 * s.kv_heads) * s.head_dim + 2 * s.hidden
                                        + 2 * s.intermediate)
        logits = tokens * s.vocab * (2 * b + 8 + formats * b)
        embed_grad = s.vocab * s.hidden * b
    else:  # kl_div: forward passes only, reference and quantized logits
        checkpoints, layer_total, diffs, embed_grad = 0, layer, 0, 0
        logits = tokens * s.vocab * (b + 12)
    vision_total = features = 0
    if vision is not None:
        patches = batch_size * vision_tokens * vision.merge**2
        vision_total = patches * (4 * vision.patch_values
                                  + b * (10 * vision.hidden + 4 * vision.intermediate))
        features = batch_size * vision_tokens * s.hidden * b * (1 + vision.deepstack)
    process = process_gib * GIB
    peak = (process + weights + quantizers + checkpoints + embed_grad + features
            + max(logits, layer_total + diffs, vision_total))
    terms = {"process": process, "weights": weights, "quantizers": quantizers,
             "checkpointed_inputs": checkpoints,
             "layer_activations": layer_total, "output_diffs": diffs, "logits": logits,
             "embedding_grad": embed_grad, "peak": peak}
    if vision is not None:
        terms |= {"vision_activations": vision_total, "visual_features": features}
    return {k: v / GIB for k, v in terms.items()}


def gpus_needed(peak_gib: float, gpu_memory_gib: float) -> int:
    """GPUs of ``gpu_memory_gib`` each to hold ``peak_gib`` (a device map spreads the weights)."""
    if gpu_memory_gib <= 0:
        raise UserError(f"GPU memory {gpu_memory_gib} GiB must be positive.")
    return max(1, math.ceil(peak_gib / (gpu_memory_gib * GPU_USABLE_FRACTION)))


# --------------------------------------------------------------------------------------------
# The plan


def plan_dtype(cfg: ModelConfig, device: str) -> torch.dtype:
    """The dtype the job will use; ``device=auto`` plans for CUDA (what a plan is for)."""
    target = "cuda" if device == "auto" else device
    if cfg.dtype == DType.auto:
        return torch.bfloat16 if target.startswith("cuda") else torch.float32
    return getattr(torch, cfg.dtype.value)


def plan_model(cfg: ModelConfig, *, format_bits: float, targets: list[float] | None = None,
               batch_size: int = 4, seq_len: int = 128, method: Method = Method.gradient,
               device: str = "auto", coverage: Coverage = Coverage.lm_only, formats: int = 1,
               gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
               image_max_pixels: int | None = None) -> dict[str, Any]:
    """Build the architecture on the meta device (config.json of the checkpoint, else
    ``cfg.config``) and return the plan as plain data. Reads no weights and no data.

    ``image_max_pixels`` plans an image-text job: one image of at most that many pixels per
    sample, its vision tokens inside the ``seq_len`` tokens (image + prompt + caption)."""
    if batch_size <= 0 or seq_len <= 0:
        raise UserError(f"batch_size ({batch_size}) and seq_len ({seq_len}) must be positive.")
    values, source = architecture.architecture(cfg)
    config = architecture.hf_config(values, cfg.trust_remote_code)
    net = architecture.meta_model(config, cfg.trust_remote_code)
    frozen_patterns = scope.FROZEN_PATTERNS[coverage]
    in_scope, frozen = scope.weight_counts(net, frozen_patterns)
    groups = layer_groups(net, frozen_patterns)
    scoped = [g for g in groups.values() if g.in_scope]
    kinds = Counter(layer_and_kind(g.handle)[1] for g in scoped)
    layers = {layer_and_kind(g.handle)[0] for g in scoped} - {None}
    shape = TextShape.from_config(config)
    dtype = plan_dtype(cfg, device)
    planned_for = "cuda" if device == "auto" else device
    on_cpu = torch.device(planned_for).type == "cpu"
    modules = {name: m for name, m in net.named_modules()}
    quantized = [modules[n] for g in scoped for n in g.modules]
    largest = max((scope.quantizable_weight_numel(m) for m in quantized), default=0)
    out_features = sum(int(getattr(m, "out_features", 0) or getattr(m, "out_channels", 0) or 0)
                       for m in quantized)
    params = parameter_counts(net)
    vision, images = None, None
    if image_max_pixels is not None:
        vision = VisionShape.from_config(config)
        images = image_plan(vision, image_max_pixels, seq_len)
    memory = memory_estimate(shape, parameters=params["total"], largest_weight=largest,
                             quantized_out_features=out_features, batch_size=batch_size,
                             seq_len=seq_len, dtype_bytes=dtype.itemsize, method=method,
                             formats=formats, process_gib=CPU_PROCESS_GIB if on_cpu else 0.0,
                             vision=vision,
                             vision_tokens=images["vision_tokens_per_image"] if images else 0)
    targets = targets or [format_bits]
    plan = {
        "model": {
            "name": cfg.name,
            "architecture_source": source,
            "model_type": getattr(config, "model_type", None),
            "class": type(net).__name__,
            "init": ModelInit(cfg.init).value,
            "dtype": str(dtype).removeprefix("torch."),
            "planned_for": planned_for,
        },
        "parameters": params,
        "shapes": {"hidden": shape.hidden, "intermediate": shape.intermediate,
                   "layers": shape.layers, "heads": shape.heads, "kv_heads": shape.kv_heads,
                   "head_dim": shape.head_dim, "vocab": shape.vocab,
                   "tied_embeddings": shape.tied, "experts": shape.experts},
        "quantizable_weights": {"in_scope": in_scope, "frozen": frozen,
                                "coverage": coverage.value, "frozen_patterns": frozen_patterns},
        "groups": {
            "in_scope": len(scoped),
            "frozen": len(groups) - len(scoped),
            "decoder_layers": len(layers),
            "kinds": dict(sorted(kinds.items())),
            "handles": [g.handle for g in scoped],
        },
        "bits": {
            "format_bits": format_bits,
            "targets": [{"requested": t, "modelopt": scope.modelopt_bits(t, in_scope, frozen)}
                        for t in targets],
        },
        "job": {"batch_size": batch_size, "seq_len": seq_len, "method": method.value,
                "formats": formats},
        "memory_gib": memory,
        "memory_kind": "peak resident set (CPU)" if on_cpu else "peak GPU memory",
        "memory_formulas": MEMORY_FORMULAS | (IMAGE_MEMORY_FORMULAS if images else {}),
        "gpus": {"memory_gib": gpu_memory_gib, "usable_fraction": GPU_USABLE_FRACTION,
                 "needed": gpus_needed(memory["peak"], gpu_memory_gib)},
    }
    if images is not None:
        plan["images"] = images
    return plan


def image_plan(vision: VisionShape, max_pixels: int, seq_len: int) -> dict[str, Any]:
    """What one image costs: its vision tokens in the language model's sequence and its patches
    in the vision tower (the largest image within ``max_pixels``)."""
    tokens = vision.tokens_per_image(max_pixels)
    if tokens <= 0 or tokens >= seq_len:
        raise UserError(
            f"dataset.image_max_pixels={max_pixels} gives {tokens} vision tokens per image "
            f"({vision.patch * vision.merge} x {vision.patch * vision.merge} pixels each), which "
            f"leaves no room for the prompt and caption in dataset.calib_seq_len={seq_len}. "
            + ("Raise dataset.image_max_pixels." if tokens <= 0 else
               "Raise dataset.calib_seq_len or lower dataset.image_max_pixels."))
    return {"max_pixels": max_pixels, "vision_tokens_per_image": tokens,
            "patches_per_image": tokens * vision.merge**2, "patch_size": vision.patch,
            "merge_size": vision.merge, "deepstack_layers": vision.deepstack,
            "vision_hidden": vision.hidden, "vision_intermediate": vision.intermediate,
            "sequence": f"{tokens} vision tokens + prompt + caption <= {seq_len} tokens"}


def write_plan(plan: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PLAN_FILE
    path.write_text(json.dumps(plan, indent=2) + "\n")
    return path


def _count(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as a short human-readable text."""
    m, p, g, mem = plan["model"], plan["parameters"], plan["groups"], plan["memory_gib"]
    q, job, gpus = plan["quantizable_weights"], plan["job"], plan["gpus"]
    kinds = ", ".join(f"{k} {n}" for k, n in g["kinds"].items())
    lines = [
        f"plan for {m['name']} ({m['class']}, {m['init']} init, {m['dtype']} on {m['planned_for']}; "
        f"architecture from {m['architecture_source']})",
        f"  parameters: {_count(p['total'])} total = language model {_count(p['language_model'])}"
        f" + vision {_count(p['vision'])}" + (f" + other {_count(p['other'])}" if p["other"] else ""),
        f"  quantizable weights: {_count(q['in_scope'])} in scope, {_count(q['frozen'])} kept at "
        f"16 bits ({q['coverage']})",
        f"  layer groups: {g['in_scope']} in scope over {g['decoder_layers']} decoder layers "
        f"({kinds}); {g['frozen']} frozen",
    ]
    for t in plan["bits"]["targets"]:
        lines.append(f"  bits: {t['requested']:g} over the language model -> ModelOpt "
                     f"effective_bits {t['modelopt']:.4f} (format {plan['bits']['format_bits']:g})")
    job_line = f"  job: batch {job['batch_size']} x {job['seq_len']} tokens, method {job['method']}"
    if "quant_pair" in job:
        job_line += (f", pair {job['quant_pair']} ({job['modelopt_base']}), {job['samples']} "
                     f"samples = {job['calib_batches']} calibration / {job['score_batches']} "
                     "score batches")
    lines.append(job_line)
    on_cpu = plan.get("memory_kind", "").endswith("(CPU)")
    lines.append(
        f"  {'peak resident set' if on_cpu else 'peak GPU memory'} ~{mem['peak']:.1f} GiB: "
        + (f"process {mem['process']:.2f}, " if on_cpu else "")
        + f"weights {mem['weights']:.1f}, checkpointed inputs {mem['checkpointed_inputs']:.2f}, "
        f"logits {mem['logits']:.2f}, one layer "
        f"{mem['layer_activations'] + mem['output_diffs']:.2f}, embedding grad "
        f"{mem['embedding_grad']:.2f}, quantizers {mem['quantizers']:.2f}")
    if "images" in plan:
        im = plan["images"]
        lines.append(
            f"  images: one per sample, {im['sequence']}; vision tower (unquantized, forward only) on "
            f"{im['patches_per_image']} patches per image: one block "
            f"{mem['vision_activations']:.2f} GiB, visual features {mem['visual_features']:.2f}")
    if not on_cpu:
        lines.append(f"  GPUs of {gpus['memory_gib']:g} GiB needed: {gpus['needed']}")
    return "\n".join(lines)


def dry_run(cfg: SensitivityConfig, out_dir: Path,
            gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB) -> dict[str, Any]:
    """Everything ``runner.dry_run=true`` does: validate the pair, count the captions (an
    image-text job: its image-caption pairs, each image checked), plan the model on the meta
    device, write ``plan.json`` into ``out_dir``; return the plan."""
    from . import calibration, catalogue
    from .pipeline import checked_targets, read_images, sample_count

    aq, pair, d = cfg.autoquant, cfg.quant_pair, cfg.dataset
    quant_cfg = catalogue.build_quant_config(pair, cfg.quant_granularity)
    fmt_bits = catalogue.format_effective_bits(quant_cfg)
    targets = checked_targets(aq.effective_bits, fmt_bits, pair)
    images = read_images(cfg, checkpoint=None)  # None for text; a plan needs no processor
    samples = len(images.pairs if images is not None
                  else calibration.read_captions(d.captions_path, sample_count(cfg)).lines)
    score_samples = min(aq.score_size or samples, samples)
    plan = plan_model(cfg.model, format_bits=fmt_bits, targets=targets, batch_size=aq.batch_size,
                      seq_len=d.calib_seq_len, method=aq.method, device=cfg.model.device,
                      coverage=aq.coverage, gpu_memory_gib=gpu_memory_gib,
                      image_max_pixels=d.image_max_pixels if d.modality == Modality.image_text
                      else None)
    plan["job"] |= {
        "quant_pair": pair.name,
        "modelopt_base": pair.modelopt_base,
        "granularity": cfg.quant_granularity.name,
        "requires_cuda": bool(pair.requires_cuda or catalogue.cuda_requirements(quant_cfg)),
        "samples": samples,
        "calib_batches": math.ceil(samples / aq.batch_size),
        "score_batches": math.ceil(score_samples / aq.batch_size),
    }
    path = write_plan(plan, out_dir)
    log.info("plan written to %s", path)
    return plan
