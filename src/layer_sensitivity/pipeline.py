"""One sensitivity job as plain function calls: plan (validate, no model) then run.

No Hydra, no MLflow: callers pass a ``SensitivityConfig`` and an output directory.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import autoquant, calibration, catalogue, manifest, model, report, scorecache
from .errors import UserError
from .reuse import Resources
from .schema import Coverage, Precision, SensitivityConfig

BITS_TOLERANCE = 1e-9


@dataclass
class Plan:
    """Everything decided before the model loads."""

    cfg: SensitivityConfig
    checkpoint: Path
    device: str
    captions: calibration.Captions
    quant_cfg: dict[str, Any]
    format_bits: float
    targets: list[float]  # requested averages over the language model's quantizable weights
    score_samples: int

    @property
    def target_bits(self) -> float:
        """The main target; the others (a frontier) are re-solved from the same scores."""
        return self.targets[0]

    @property
    def scheme_name(self) -> str:
        c = self.cfg
        scope = "lm" if c.autoquant.coverage == Coverage.lm_only else "full"
        return f"{c.model.name}_autoquant_{c.quant_pair.name}_{scope}_{c.dataset.size.value}"


@dataclass
class Result:
    manifest: dict[str, Any]
    files: list[Path]
    seconds: dict[str, float] = field(default_factory=dict)


def sample_count(cfg: SensitivityConfig) -> int:
    d = cfg.dataset
    if d.max_calib_samples is not None:
        return d.max_calib_samples
    if d.size.value not in d.size_samples:
        raise UserError(
            f"dataset.size={d.size.value} has no entry in dataset.size_samples "
            f"({sorted(d.size_samples)}). Add one or set dataset.max_calib_samples."
        )
    return d.size_samples[d.size.value]


def plan(cfg: SensitivityConfig) -> Plan:
    """Validate the job and resolve every input that does not need the model."""
    aq, pair = cfg.autoquant, cfg.quant_pair
    for name, value in (("autoquant.batch_size", aq.batch_size),
                        ("dataset.calib_seq_len", cfg.dataset.calib_seq_len),
                        ("autoquant.score_size", aq.score_size),
                        ("dataset.max_calib_samples", cfg.dataset.max_calib_samples)):
        if value is not None and value <= 0:
            raise UserError(f"{name}={value} must be a positive integer. Set it to 1 or more.")
    device = model.resolve_device(cfg.model.device)
    # Pair and overlay: preset available, overlay meaningful, runnable on this device.
    quant_cfg = catalogue.build_quant_config(pair, cfg.quant_granularity)
    catalogue.check_device(pair, cfg.quant_granularity, quant_cfg, device)
    checkpoint = model.checkpoint_dir(cfg.model)
    catalogue.check_layer_fit(cfg.quant_granularity, checkpoint,
                              model.FROZEN_PATTERNS[aq.coverage], cfg.model.trust_remote_code)
    captions = calibration.read_captions(cfg.dataset.captions_path, sample_count(cfg))
    fmt_bits = catalogue.format_effective_bits(quant_cfg)
    targets = bit_targets(aq.effective_bits, fmt_bits)
    for target in targets:
        if not (fmt_bits - BITS_TOLERANCE <= target <= 16.0):
            raise UserError(
                f"autoquant.effective_bits={target:g} is out of reach for quant_pair={pair.name}: "
                f"the language model can average between {fmt_bits:g} bits (every layer in "
                f"{pair.modelopt_base}) and 16 bits (nothing quantized). Set "
                f"autoquant.effective_bits to a value in [{fmt_bits:g}, 16], or null for "
                f"{fmt_bits:g}."
            )
    score_samples = min(aq.score_size or len(captions.lines), len(captions.lines))
    return Plan(cfg, checkpoint, device, captions, quant_cfg, fmt_bits, targets, score_samples)


def bit_targets(value: Any, natural: float) -> list[float]:
    """``autoquant.effective_bits`` as a list: null -> [natural], 6 -> [6.0], [8, 6] -> [8.0, 6.0]."""
    if value is None:
        return [natural]
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        targets = [float(v) for v in values if not isinstance(v, bool)]
    except (TypeError, ValueError):
        targets = []
    if not values or len(targets) != len(values):
        raise UserError(
            f"autoquant.effective_bits={value!r} is not a number or a list of numbers. Use e.g. "
            "autoquant.effective_bits=6 or autoquant.effective_bits=[4.5,6,8] (a frontier)."
        )
    if len(set(targets)) != len(targets):
        raise UserError(f"autoquant.effective_bits={value!r} repeats a target; list each once.")
    return targets


def _versions() -> dict[str, str]:
    import modelopt
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "modelopt": modelopt.__version__}


FRONTIER_DIR = "frontier"


def write_frontier_recipes(frontier: list[dict[str, Any]], directory: Path) -> list[Path]:
    """One JSON per bit target: the chosen format of every in-scope layer group."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for point in frontier:
        path = directory / f"recipe_{point['target_bits']:g}bits.json"
        path.write_text(json.dumps(point, indent=2) + "\n")
        paths.append(path)
    return paths


def score_key_ingredients(p: Plan, fingerprint: str, dtype: torch.dtype,
                          batches: list[calibration.Batch], score_steps: int) -> dict[str, Any]:
    """Everything stored scores depend on (ModelOpt itself checks only the formats)."""
    import modelopt

    c = p.cfg
    return {
        "model_fingerprint": fingerprint,
        "dtype": str(dtype),
        "device_type": torch.device(p.device).type,
        "captions_sha256": p.captions.sha256,
        "samples": len(p.captions.lines),
        "seq_len": c.dataset.calib_seq_len,
        "batch_size": c.autoquant.batch_size,
        "pad_to_longest": c.dataset.pad_to_longest,
        "sort_by_length": c.dataset.sort_by_length,
        "batches_sha256": scorecache.batches_digest(batches),
        "num_calib_steps": len(batches),
        "num_score_steps": score_steps,
        "method": c.autoquant.method.value,
        "coverage": c.autoquant.coverage.value,
        "frozen_patterns": model.FROZEN_PATTERNS[c.autoquant.coverage],
        # Insertion order is deterministic for a derived config; keys mix int and str (block sizes).
        "quant_cfg": json.dumps(p.quant_cfg, default=str),
        "modelopt": modelopt.__version__,
    }


def run(p: Plan, out_dir: Path, log: Callable[[str], None] = print,
        resources: Resources | None = None) -> Result:
    """Load, calibrate, score and solve; write manifest and reports into ``out_dir``.

    ``resources`` lets the jobs of one process share loaded models and tokenized batches.
    """
    cfg = p.cfg
    resources = resources or Resources()
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    torch.manual_seed(cfg.autoquant.seed)

    t = time.perf_counter()
    loaded = resources.model(cfg.model, p.checkpoint, p.device)
    frozen = model.FROZEN_PATTERNS[cfg.autoquant.coverage]
    in_scope, frozen_weights = model.weight_counts(loaded.model, frozen)
    fingerprint = model.fingerprint(p.checkpoint)
    seconds["load"] = time.perf_counter() - t
    log(f"loaded {p.checkpoint} on {p.device} ({loaded.dtype}) in {seconds['load']:.1f}s")

    t = time.perf_counter()
    batches = resources.batches(p.captions, loaded.tokenizer, f"{p.checkpoint.resolve()}",
                                cfg.autoquant.batch_size, cfg.dataset.calib_seq_len,
                                cfg.dataset.pad_to_longest, cfg.dataset.sort_by_length)
    real_tokens, padded_tokens = calibration.batch_tokens(batches)
    batches = [{k: v.to(p.device) for k, v in b.items()} for b in batches]
    seconds["calibration_data"] = time.perf_counter() - t

    t = time.perf_counter()
    givens = [model.modelopt_bits(b, in_scope, frozen_weights) for b in p.targets]
    given = givens[0]
    score_steps = math.ceil(p.score_samples / cfg.autoquant.batch_size)
    cache = None
    if cfg.autoquant.reuse_scores:
        cache = scorecache.entry(Path(cfg.autoquant.score_cache_dir), score_key_ingredients(
            p, fingerprint, loaded.dtype, batches, score_steps))
    cache_hit = bool(cache and cache.hit)
    if cache:
        log(f"scores {'reused from' if cache_hit else 'stored in'} {cache.path}")
    try:
        state = autoquant.run(loaded.model, batches, p.quant_cfg, method=cfg.autoquant.method,
                              modelopt_bits=given, frozen_patterns=frozen,
                              num_score_steps=score_steps,
                              checkpoint=None if cache is None else
                              str(cache.path if cache_hit else cache.staging))
        if cache and not cache_hit:
            cache.commit()
    except autoquant.InfeasibleTarget as e:
        lm_min = model.scope_bits(e.minimum_bits, in_scope, frozen_weights)
        raise UserError(
            f"autoquant.effective_bits={p.target_bits:g} is infeasible for quant_pair="
            f"{cfg.quant_pair.name} on this model: the language model can reach at least "
            f"{lm_min:.4f} bits (ModelOpt was given {given:.4f} bits over all its layers, vision "
            f"included at 16, and reports a minimum of {e.minimum_bits:.4f}). Set "
            f"autoquant.effective_bits to {math.ceil(lm_min * 100) / 100:g} or more."
        ) from None
    fmt_name = catalogue.format_name(cfg.quant_pair, cfg.quant_granularity)
    raw_groups = autoquant.group_stats(state, frozen)
    groups = catalogue.name_custom_format(raw_groups, fmt_name)
    frontier = []
    if len(p.targets) > 1:
        for target, modelopt_target in zip(p.targets, givens, strict=True):
            recipe = autoquant.resolve(state, modelopt_target)
            point = autoquant.frontier_point(raw_groups, recipe, target, modelopt_target)
            frontier.append(asdict(point) | {"recipe": {
                h: catalogue.custom_label(f, fmt_name) for h, f in point.recipe.items()}})
    seconds["autoquant"] = time.perf_counter() - t

    t = time.perf_counter()
    q, g = cfg.quant_pair, cfg.quant_granularity
    doc = manifest.build(
        scheme={
            "name": p.scheme_name,
            "effective_bits_requested": p.target_bits,
            "effective_bits_modelopt": given,
            "method": cfg.autoquant.method.value,
            "score_size": p.score_samples,
            "coverage": cfg.autoquant.coverage.value,
            "formats": [catalogue.format_name(q, g)],
        },
        model={
            "id": str(p.checkpoint),
            "name": cfg.model.name,
            "dtype": str(loaded.dtype).removeprefix("torch."),
            "device": p.device,
            "fingerprint": model.fingerprint(p.checkpoint),
            "weights_in_scope": in_scope,
            "weights_frozen": frozen_weights,
        },
        dataset={
            "name": cfg.dataset.name,
            "size": cfg.dataset.size.value,
            "path": str(p.captions.path),
            "sha256": p.captions.sha256,
            "samples_used": len(p.captions.lines),
            "samples_max": p.captions.requested,
            "samples_available": p.captions.available,
            "seq_len": cfg.dataset.calib_seq_len,
            "batch_size": cfg.autoquant.batch_size,
            "batches": len(batches),
            "score_batches": score_steps,
            "real_tokens": real_tokens,
            "padded_tokens": padded_tokens,
        },
        quantization={
            "pair": q.name,
            "weight_dtype": q.weight.value,
            "activation_dtype": q.activation.value,
            "activations_quantized": q.activation != Precision.fp16,
            "fp4_format": q.fp4_format.value if q.fp4_format else None,
            "modelopt_format": catalogue.format_name(q, g),
            "modelopt_base": q.modelopt_base,
            "edits": [str(e) for e in q.edits],
            "granularity": g.name,
            "granularity_weight": g.weight.value,
            "granularity_group_size": g.group_size,
            "granularity_activation": g.activation.value,
            # Exact settings of a decoder linear layer's quantizers (type, num_bits, axis, blocks).
            "weight_quantizer": catalogue.quantizer_settings(p.quant_cfg, catalogue.WEIGHT),
            "input_quantizer": catalogue.quantizer_settings(p.quant_cfg, catalogue.INPUT),
            "requires_cuda": q.requires_cuda,
            "experimental": q.experimental,
        },
        groups=groups,
        autoquant={
            "effective_bits_achieved": autoquant.achieved_scope_bits(groups),
            "modelopt_effective_bits_achieved": float(state["best"]["constraints"]["effective_bits"]),
            "min_effective_bits": autoquant.min_scope_bits(groups),
            "total_score": float(state["best"]["score"]),
            "satisfied": bool(state["best"]["is_satisfied"]),
        },
        versions=_versions(),
    )
    doc["score_cache"] = None if cache is None else {"key": cache.key, "hit": cache_hit,
                                                     "path": str(cache.path)}
    files = []
    if frontier:
        doc["frontier"] = frontier
        files += write_frontier_recipes(frontier, out_dir / FRONTIER_DIR)
    files = [manifest.write(doc, out_dir), *report.write_reports(doc, out_dir), *files]
    seconds["reports"] = time.perf_counter() - t
    return Result(doc, files, seconds)
