"""The scores phase of a job: the AutoQuantize search state, stored (verified, keyed by everything
it depends on) or searched on the plan's model and stored for the next job with the same inputs.
No Hydra, no MLflow."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import (
    autoquant,
    calibration,
    scorecache,
)
from .errors import UserError
from .groups import min_scope_bits
from .model import loader, placement, scope
from .reuse import Resources

if TYPE_CHECKING:
    from .pipeline import Plan

log = logging.getLogger(__name__)


@dataclass
class Scores:
    """A completed AutoQuantize search: ModelOpt's state and what it was computed from."""

    state: dict[str, Any]
    dtype: str
    cache: dict[str, Any] | None  # {key, hit, path} or None when reuse is off
    weights_in_scope: int
    weights_frozen: int

    def modelopt_bits(self, target: float) -> float:
        """ModelOpt averages over every quantizable layer it sees; frozen ones cost 16 bits."""
        return scope.modelopt_bits(target, self.weights_in_scope, self.weights_frozen)


def score_key_ingredients(p: Plan, dtype: torch.dtype, batches: list[calibration.Batch]
                          ) -> dict[str, Any]:
    """Everything stored scores depend on (ModelOpt itself checks only the formats)."""
    c = p.cfg
    images = {} if p.images is None else {  # text jobs keep their keys (and stored scores)
        "modality": c.dataset.modality.value,
        "images_sha256": p.images.sha256,
        "image_settings": p.image_settings.as_dict(),
        "pixel_values_sha256": scorecache.tensors_digest(batches, "pixel_values", "image_grid_thw",
                                                         "labels"),
    }
    return {
        **images,
        "model_fingerprint": p.fingerprint,
        "weights_sha256": p.weights_sha256,  # the weights' bytes, not only their shapes
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
        "num_score_steps": p.score_steps,
        "method": c.autoquant.method.value,
        "coverage": c.autoquant.coverage.value,
        "frozen_patterns": p.frozen_patterns,
        # Insertion order is deterministic for a derived config; keys mix int and str (block sizes).
        "quant_cfg": json.dumps(p.quant_cfg, default=str),
        "modelopt": metadata.version("nvidia-modelopt"),
    }


def scores(p: Plan, batches: list[calibration.Batch], resources: Resources) -> Scores:
    """Stored scores when everything they depend on matches (no model load), else a search."""
    c = p.cfg
    dtype = placement.resolve_dtype(c.model.dtype, p.device)
    cache = key = None
    if c.autoquant.reuse_scores:
        cache = scorecache.ScoreCache(Path(c.autoquant.score_cache_dir))
        key = cache.key(score_key_ingredients(p, dtype, batches))
        state = cache.load(key)
        if state is not None:
            log.info("scores reused from %s", cache.path(key))
            stored = _scores(state, dtype, {"key": key, "hit": True, "path": str(cache.path(key))})
            _check_reachable(p, stored)
            return stored
    try:
        # No checkpoint file: ModelOpt saves one mid-search too, and only a completed search may
        # become a cache entry.
        state = search(p, [p.quant_cfg], p.target_bits, batches, resources)
    except Infeasible as e:
        raise UserError(
            f"autoquant.effective_bits={p.target_bits:g} is infeasible for quant_pair="
            f"{c.quant_pair.name} on this model: the language model can reach at least "
            f"{e.lm_min:.4f} bits (ModelOpt was given {e.given:.4f} bits over all its layers, "
            f"vision included at 16, and reports a minimum of {e.minimum:.4f}). Set "
            f"autoquant.effective_bits to {e.fix:g} or more."
        ) from None
    if cache is None or key is None:
        return _scores(state, dtype, None)
    try:
        path = cache.store(key, state)  # verified and renamed into place atomically
    except scorecache.InvalidState as e:
        log.warning("scores not stored for reuse: %s", e)
        return _scores(state, dtype, None)
    log.info("scores stored in %s", path)
    return _scores(state, dtype, {"key": key, "hit": False, "path": str(path)})


def _check_reachable(p: Plan, s: Scores) -> None:
    """Stored scores (another target's search, or a sweep's shared one) fail an unreachable main
    target as ModelOpt's own check fails a search: the same job fails whether scores were
    stored or not."""
    groups = autoquant.group_stats(s.state, p.frozen_patterns)
    lm_min = min_scope_bits(groups)
    if p.target_bits < lm_min - 1e-9:
        raise UserError(
            f"autoquant.effective_bits={p.target_bits:g} is infeasible for quant_pair="
            f"{p.cfg.quant_pair.name} on this model: the language model can reach at least "
            f"{lm_min:.4f} bits (stored scores). Set autoquant.effective_bits to "
            f"{math.ceil(lm_min * 100) / 100:g} or more.")


class Infeasible(Exception):
    """ModelOpt's search cannot reach the LM bit target (each caller words the fix)."""

    def __init__(self, lm_min: float, given: float, minimum: float) -> None:
        super().__init__(f"the language model reaches at least {lm_min:.4f} bits")
        self.lm_min, self.given, self.minimum = lm_min, given, minimum
        self.fix = math.ceil(lm_min * 100) / 100  # the smallest target that works, rounded up


def search(p: Plan, quant_cfgs: list[dict[str, Any]], target_bits: float,
           batches: list[calibration.Batch], resources: Resources) -> dict[str, Any]:
    """One AutoQuantize search over ``quant_cfgs`` (one format, or a mix) on the plan's model,
    for an LM-level ``target_bits``: the model loaded (refused when not finite), the target
    translated to ModelOpt's all-layer bits, seeded. Raises ``Infeasible``."""
    c = p.cfg
    loaded = resources.model(c.model, p.checkpoint, p.device)
    loader.check_finite(loaded.model, p.checkpoint)
    in_scope, frozen = scope.weight_counts(loaded.model, p.frozen_patterns)
    given = scope.modelopt_bits(target_bits, in_scope, frozen)
    on_device = [{k: v.to(p.device) for k, v in b.items()} for b in batches]
    torch.manual_seed(c.autoquant.seed)
    try:
        return autoquant.run_formats(loaded.model, on_device, quant_cfgs,
                                     method=c.autoquant.method, modelopt_bits=given,
                                     frozen_patterns=p.frozen_patterns,
                                     num_score_steps=p.score_steps)
    except autoquant.InfeasibleTarget as e:
        raise Infeasible(scope.scope_bits(e.minimum_bits, in_scope, frozen), given,
                         e.minimum_bits) from None


def _scores(state: dict[str, Any], dtype: torch.dtype, cache: dict[str, Any] | None) -> Scores:
    in_scope, frozen = autoquant.state_weight_counts(state)
    return Scores(state, str(dtype).removeprefix("torch."), cache, in_scope, frozen)
