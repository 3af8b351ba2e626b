"""One AutoQuantize search for many pairs, stored as each pair's own score-cache entry.

A sweep over pairs repeats the expensive part of every job: the forward and backward passes that
score each layer group. With gradient scores, one search over all the pairs' formats yields every
pair's scores exactly (bit for bit; :func:`split_state` says why), so
:func:`precompute` runs that search once per set of jobs that share model, data, method and score
settings, and stores each pair's single-format state under the key its own job computes. Each job
then runs as usual and finds its scores stored (a cache hit): its run, status (FINISHED, FAILED,
KILLED), manifest, reports and recipes are what a job of its own gives, and a later single-pair
job is a hit too.

Explicit and launcher-independent: the sweep's Hydra callback calls :func:`precompute` before any
job starts (``cli/sweep_callback.py``); a notebook can call it before running the jobs. Nothing
here is needed for correctness: a job whose entry is missing (sharing off, a pre-pass that
failed) searches alone as before.

Only ``gradient`` is shared. ``kl_div`` splits exactly too, but it scores every (group, format)
with a full forward pass of its own, so one search costs what the separate ones cost (measured:
17.2 s shared vs 17 s for fp8,int8,int4,w4a8 on the embedded model); sharing it would only
serialise jobs a parallel launcher could run side by side.

No Hydra, no MLflow.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import autoquant, pipeline, scorecache, scoring
from .errors import UserError
from .model import placement, scope
from .reuse import Resources
from .schema import Method, SensitivityConfig

if TYPE_CHECKING:
    import torch

    from .calibration import Batch

log = logging.getLogger(__name__)

SHARED_METHODS = (Method.gradient,)
# The search is run at 16 LM bits: always feasible, and readers re-solve every target anyway.
SEARCH_BITS = 16.0


@dataclass
class PairOutcome:
    """What the pre-pass did for one job's pair."""

    pair: str
    granularity: str
    size: str
    status: str  # stored | already_stored | not_shared
    reason: str = ""
    key: str | None = None


@dataclass
class SharedReport:
    """The pre-pass as a whole: one entry per job config, searches run, seconds spent."""

    outcomes: list[PairOutcome] = field(default_factory=list)
    searches: int = 0  # shared AutoQuantize searches run
    formats_searched: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"searches": self.searches, "formats_searched": self.formats_searched,
                "seconds": round(self.seconds, 3),
                "jobs": [asdict(o) for o in self.outcomes]}

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)


@dataclass
class _Member:
    outcome: PairOutcome
    plan: pipeline.Plan
    cache: scorecache.ScoreCache
    key: str


def _outcome(cfg: SensitivityConfig, status: str, reason: str = "") -> PairOutcome:
    return PairOutcome(cfg.quant_pair.name, cfg.quant_granularity.name, cfg.dataset.size.value,
                       status, reason)


def share_key(ingredients: dict[str, Any], cache_dir: str) -> str:
    """Jobs whose score ingredients differ only in the format (pair and overlay) share a search."""
    rest = {k: v for k, v in ingredients.items() if k != "quant_cfg"}
    blob = json.dumps({"cache_dir": cache_dir, **rest}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def precompute(cfgs: Sequence[SensitivityConfig], resources: Resources | None = None
               ) -> SharedReport:
    """Store the scores of every job in ``cfgs`` with one search per group of shared settings.

    A config that does not validate (its job will fail and say why), has score reuse off, uses a
    method that is not shared, or whose scores are stored already is left to its job; a group
    with fewer than two formats to search is too (searching alone in the job costs the same).
    A failing shared search is logged and its jobs search alone. Interrupts propagate.
    """
    started = time.perf_counter()
    resources = resources or Resources()
    report = SharedReport()
    groups: dict[str, list[_Member]] = {}
    for cfg in cfgs:
        member = _member(cfg, resources, report)
        if member is not None:
            groups.setdefault(member.outcome.key or "", []).append(member)
    for members in groups.values():
        _search_group(members, resources, report)
    report.seconds = time.perf_counter() - started
    log.info("shared scores: %d search(es) over %d format(s); %d job(s) stored, %d already "
             "stored, %d left to their job (%.1f s)", report.searches, report.formats_searched,
             report.count("stored"), report.count("already_stored"), report.count("not_shared"),
             report.seconds)
    return report


def _member(cfg: SensitivityConfig, resources: Resources, report: SharedReport
            ) -> _Member | None:
    def skip(reason: str) -> None:
        report.outcomes.append(_outcome(cfg, "not_shared", reason))

    if not cfg.autoquant.reuse_scores:
        skip("autoquant.reuse_scores=false")
        return None
    if cfg.autoquant.method not in SHARED_METHODS:
        skip(f"autoquant.method={cfg.autoquant.method.value} is not shared (one forward pass "
             "per group and format: no saving)")
        return None
    try:
        p = pipeline.plan(cfg)
        batches = pipeline.calibration_data(p, resources)
        cache = scorecache.ScoreCache(Path(cfg.autoquant.score_cache_dir))
    except UserError as e:
        skip(f"the job does not validate: {str(e).splitlines()[0]}")
        return None
    ingredients = scoring.score_key_ingredients(
        p, placement.resolve_dtype(cfg.model.dtype, p.device), batches)
    key = cache.key(ingredients)
    outcome = _outcome(cfg, "pending")
    outcome.key = share_key(ingredients, cfg.autoquant.score_cache_dir)
    report.outcomes.append(outcome)
    return _Member(outcome, p, cache, key)


def _search_group(members: list[_Member], resources: Resources, report: SharedReport) -> None:
    todo: dict[str, list[_Member]] = {}  # entry key -> the jobs it serves (aliases share one)
    for m in members:
        if m.cache.load(m.key) is not None:
            m.outcome.status, m.outcome.key = "already_stored", m.key
        else:
            todo.setdefault(m.key, []).append(m)
    if len(todo) < 2:
        for ms in todo.values():
            for m in ms:
                m.outcome.status, m.outcome.key = "not_shared", m.key
                m.outcome.reason = "the only format of its settings to search: its job searches"
        return
    plans = [ms[0].plan for ms in todo.values()]
    try:
        states = _search(plans, resources)
    except Exception as e:  # noqa: BLE001 - the jobs search alone and report their own errors
        log.warning("shared search over %s failed (%s: %s); each job searches alone",
                    ", ".join(q.cfg.quant_pair.name for q in plans), type(e).__name__, e)
        for ms in todo.values():
            for m in ms:
                m.outcome.status, m.outcome.key = "not_shared", m.key
                m.outcome.reason = f"the shared search failed: {type(e).__name__}"
        return
    report.searches += 1
    report.formats_searched += len(plans)
    for (key, ms), state in zip(todo.items(), states, strict=True):
        try:
            path = ms[0].cache.store(key, state)
        except scorecache.InvalidState as e:
            log.warning("shared scores for %s not stored: %s", ms[0].plan.cfg.quant_pair.name, e)
            status, reason = "not_shared", f"not stored: {e}"
        else:
            log.info("shared scores for %s stored in %s", ms[0].plan.cfg.quant_pair.name, path)
            status, reason = "stored", ""
        for m in ms:
            m.outcome.status, m.outcome.reason, m.outcome.key = status, reason, key


def _search(plans: list[pipeline.Plan], resources: Resources) -> list[dict[str, Any]]:
    import torch

    p = plans[0]
    batches = pipeline.calibration_data(p, resources)
    loaded = resources.model(p.cfg.model, p.checkpoint, p.device)
    in_scope, frozen = scope.weight_counts(loaded.model, p.frozen_patterns)
    on_device = [{k: v.to(p.device) for k, v in b.items()} for b in batches]
    log.info("shared search: one AutoQuantize search over %s",
             ", ".join(f"{q.cfg.quant_pair.name}/{q.cfg.quant_granularity.name}" for q in plans))
    torch.manual_seed(p.cfg.autoquant.seed)
    try:
        return run_shared(
            loaded.model, on_device, [q.quant_cfg for q in plans], method=p.cfg.autoquant.method,
            modelopt_bits=scope.modelopt_bits(SEARCH_BITS, in_scope, frozen),
            frozen_patterns=p.frozen_patterns, num_score_steps=p.score_steps)
    finally:
        del loaded, on_device


# ------------------------------------------------------------------------------------------
# Several formats searched once, split into the single-format states a search per format returns


def run_shared(model: torch.nn.Module, batches: list[Batch], quant_cfgs: Sequence[dict[str, Any]],
               *, method: Method, modelopt_bits: float, frozen_patterns: list[str],
               num_score_steps: int) -> list[dict[str, Any]]:
    """One ``auto_quantize`` over every format of ``quant_cfgs``; returns, per format, the state
    ``autoquant.run(model, batches, quant_cfgs[i], ...)`` would have returned (see :func:`split_state`)."""
    state = autoquant.run_formats(model, batches, quant_cfgs, method=method, modelopt_bits=modelopt_bits,
                        frozen_patterns=frozen_patterns, num_score_steps=num_score_steps)
    raw = raw_scores(model)
    return [split_state(state, raw, quant_cfgs, i) for i in range(len(quant_cfgs))]


def raw_scores(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    """Each group's unclipped score per format, read from the search's hyperparameters.

    ModelOpt 0.47 clips ``candidate_stats`` scores to be monotone in compression
    (``initialize_candidate_stats``: ``score = min(score, prev_score)``), so two formats of equal
    bits share the smaller score there. The per-(group, format) scores it clips are still held by
    the ``QuantRecipeHparam`` of each group, which ``auto_quantize`` leaves on the model it
    returns: ``hparam.get_score(recipe)`` is the value before clipping. Keyed by group handle,
    then by the format's ``checkpoint_signature``.
    """
    from modelopt.torch.opt.utils import named_hparams
    from modelopt.torch.quantization.algorithms import QuantRecipeHparam

    out = {}
    for name, hparam in named_hparams(model, unique=True):
        if isinstance(hparam, QuantRecipeHparam):
            out[name] = {r.checkpoint_signature: float(hparam.get_score(r))
                         for r in hparam.solver_choices}
    if not out:
        raise RuntimeError("the searched model holds no AutoQuantize hyperparameters to read "
                           "unclipped scores from (ModelOpt changed?)")
    return out


def split_state(state: dict[str, Any], raw: dict[str, dict[str, float]],
                quant_cfgs: Sequence[dict[str, Any]], index: int) -> dict[str, Any]:
    """The single-format state of ``quant_cfgs[index]`` out of a multi-format search.

    Exact in ModelOpt 0.47 (checked bit for bit against single-format searches, both methods):
    each format is calibrated with every group in that format and nothing else, and both methods
    score a (group, format) against the otherwise unquantized model (gradient: one forward with
    every group at NONE, each format's output difference per module, the same backward; kl_div: a
    forward with that one group in that format). So a group's raw score for a format does not
    depend on which other formats are searched; only ModelOpt's clipping does, and it is undone
    by taking ``raw`` (see :func:`raw_scores`) and applying the rule to [format, NONE] alone.
    The format is renamed as a single-format call names it (``CUSTOM_0`` unless a preset);
    ``best`` is left for readers to re-solve (as in ModelOpt's own checkpoint).
    """
    from modelopt.torch.quantization.algorithms import QuantRecipe

    multi = autoquant.search_recipes(quant_cfgs)[index]
    (single,) = autoquant.search_recipes([quant_cfgs[index]])
    none = QuantRecipe(quant_cfg=None)
    keep = {multi.checkpoint_signature, none.checkpoint_signature}
    stats = {}
    for handle, st in state["candidate_stats"].items():
        pick = [i for i, f in enumerate(st["formats"]) if f.checkpoint_signature in keep]
        formats = [single if st["formats"][i] == multi else st["formats"][i] for i in pick]
        scores, previous = [], float("inf")
        for i in pick:  # ModelOpt's rule, over this format and NONE only
            own = raw.get(handle, {}).get(st["formats"][i].checkpoint_signature)
            if own is None:
                raise autoquant.NotComposable(f"no unclipped score for group {handle}")
            previous = min(own, previous)
            scores.append(previous)
        stats[handle] = {**copy.deepcopy({k: v for k, v in st.items()
                                          if k not in ("formats", "scores", "costs")}),
                         "formats": formats, "scores": scores,
                         "costs": [st["costs"][i] for i in pick]}
    out = {k: copy.deepcopy(v) for k, v in state.items()
           if k not in ("candidate_stats", "quantizer_states", "best")}
    out.update({
        "candidate_stats": stats,
        "quantizer_states": {single: state["quantizer_states"][multi]},
        "best": {"recipe": {}, "constraints": {}, "score": float("inf"), "is_satisfied": False},
        "quantization_formats_signature": (single.checkpoint_signature,),
    })
    if state.get("resolved_search_setup_signature") is not None:
        out["resolved_search_setup_signature"] = tuple(
            (*item[:4], tuple(s for s in item[4] if s in keep), *item[5:])
            for item in state["resolved_search_setup_signature"])
    return out
