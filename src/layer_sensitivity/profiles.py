"""Sensitivity profiles of one manifest: where each group sits in depth, its per-sample score,
share and rank, and the metrics and key table the tracking layer logs. No torch, no MLflow.

AutoQuantize scores are sums over score batches: raw values grow with the number of score samples
and differ by 10^3-10^4 between the gradient and kl_div methods. Per-sample scores compare runs of
one method across calibration sizes; shares (a group's importance over the run's total) and ranks
compare across sizes and methods.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

import pandas as pd

from .groups import KIND_ORDER, depth_key, layer_and_kind, module_of

if TYPE_CHECKING:
    from .manifest_model import Manifest

Metric = tuple[str, float, int | None]  # (key, value, step); step None = a single value
T = TypeVar("T")

MAX_KEY_LENGTH = 250  # MLflow's limit on metric key length
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit on metrics in one log_batch call
LM_HEAD = "lm_head"
TOP_CONCENTRATION = 10  # "share of the top 10" summary
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./: ]")  # MLflow keys: letters, digits, _ - . / : and space
_FRONTIER_KEYS = {"effective_bits_achieved": "achieved_bits", "total_score": "total_score",
                  "satisfied": "satisfied"}


@dataclass(frozen=True)
class GroupProfile:
    """One in-scope layer group as the reports and metrics show it."""

    handle: str  # ModelOpt's "<first module>.quant_recipe"
    name: str  # depth-sortable short name: "L03.mlp.gate_up", "lm_head"
    layer: int | None  # decoder layer index; None outside the decoder stack
    kind: str  # "attn.qkv", "attn.o", "mlp.gate_up", "mlp.down", "lm_head", ...
    modules: tuple[str, ...]
    importance: float  # raw score: a sum over score batches
    per_sample: float | None  # importance / score samples; None when the count is unknown
    share: float  # importance / sum of importances over in-scope groups
    rank: int  # 1 = most sensitive

    @property
    def key(self) -> str:
        return f"sensitivity/{self.name}"


def safe_key(text: str) -> str:
    """``text`` with characters MLflow refuses in metric keys replaced by ``_``, cut to 250."""
    return _UNSAFE.sub("_", text)[:MAX_KEY_LENGTH]


def layer_width(num_layers: int) -> int:
    """Digits of the zero-padded layer index: at least 2, so runs of models up to 100 layers
    share keys."""
    return max(2, len(str(max(num_layers - 1, 0))))


def group_name(handle: str, num_layers: int) -> str:
    """``L03.mlp.gate_up`` for a decoder group, the module name (``lm_head``) otherwise."""
    layer, kind = layer_and_kind(handle)
    name = kind if layer is None else f"L{layer:0{layer_width(num_layers)}d}.{kind}"
    return safe_key(name)[: MAX_KEY_LENGTH - len("sensitivity/")]


def metric_key(handle: str, num_layers: int) -> str:
    """Depth-sortable per-group metric key, e.g. ``sensitivity/L03.mlp.gate_up``."""
    return f"sensitivity/{group_name(handle, num_layers)}"


def num_decoder_layers(manifest: Manifest) -> int:
    """Decoder layers spanned by the in-scope groups (highest layer index + 1; 0 if none)."""
    return manifest.num_decoder_layers


def score_samples(manifest: Manifest) -> int | None:
    """Samples the scores were summed over (``Manifest.score_samples``, computed once)."""
    return manifest.score_samples


def group_profiles(manifest: Manifest) -> list[GroupProfile]:
    """Every in-scope group, most sensitive first (``Manifest.profiles``, computed once)."""
    return manifest.profiles


def rank_groups(groups: dict[str, tuple[float, Sequence[str] | None]], num_layers: int,
                samples: int | None) -> list[GroupProfile]:
    """Profiles of ``groups`` (handle -> (importance, modules)), most sensitive first (ties by
    handle, as the manifest ranks them)."""
    total = sum(float(importance) for importance, _ in groups.values())
    order = sorted(groups, key=lambda h: (-float(groups[h][0]), h))
    names = _unique([group_name(h, num_layers) for h in order])
    profiles = []
    for rank, (handle, name) in enumerate(zip(order, names, strict=True), start=1):
        importance, modules = float(groups[handle][0]), groups[handle][1]
        layer, kind = layer_and_kind(handle)
        profiles.append(GroupProfile(
            handle=handle, name=name, layer=layer, kind=kind,
            modules=tuple(modules or [module_of(handle)]),
            importance=importance,
            per_sample=None if samples is None else importance / samples,
            share=importance / total if total > 0 else 0.0,
            rank=rank,
        ))
    return profiles


def _unique(names: list[str]) -> list[str]:
    """Names made unique (``_2``, ``_3`` ...) should sanitising ever map two groups to one key."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def kind_order(kind: str) -> tuple[int, str]:
    """Sort key for kinds: the known decoder kinds in execution order, then others by name."""
    return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), kind)


def depth_order(profiles: Sequence[GroupProfile]) -> list[GroupProfile]:
    """Groups in model depth order (``groups.depth_key``): embeddings, decoder layers with their
    kinds in execution order, then final groups such as ``lm_head``."""
    return sorted(profiles, key=lambda p: (depth_key(p.handle), p.name))


def top_is_lm_head(profiles: Sequence[GroupProfile]) -> bool:
    """Whether ``lm_head`` is the most sensitive group (deploy runtimes usually keep it at 16 bits)."""
    return bool(profiles) and profiles[0].layer is None and profiles[0].kind == LM_HEAD


def top_share(profiles: Sequence[GroupProfile], k: int = TOP_CONCENTRATION) -> float:
    """Concentration: the share of the run's total held by its ``k`` most sensitive groups."""
    return sum(p.share for p in profiles[:k])


def profile_frame(manifest: Manifest) -> pd.DataFrame:
    """``group_profiles`` as a table, most sensitive first (layer is a nullable integer)."""
    rows = [{"key": p.key, "name": p.name, "handle": p.handle, "layer": p.layer, "kind": p.kind,
             "modules": list(p.modules), "importance": p.importance,
             "per_sample": math.nan if p.per_sample is None else p.per_sample,
             "share": p.share, "rank": p.rank} for p in manifest.profiles]
    df = pd.DataFrame(rows, columns=["key", "name", "handle", "layer", "kind", "modules",
                                     "importance", "per_sample", "share", "rank"])
    return df.astype({"layer": "Int64"})


def key_table(manifest: Manifest) -> pd.DataFrame:
    """Metric key -> group handle -> layer -> kind -> modules -> importance -> share -> rank,
    in depth order (the tracking layer logs it as a table artifact)."""
    rows = [{"Metric key": p.key, "Group": p.handle, "Layer": p.layer, "Kind": p.kind,
             "Modules": ", ".join(p.modules), "Importance": p.importance,
             "Per-sample score": math.nan if p.per_sample is None else p.per_sample,
             "Share": p.share, "Rank": p.rank}
            for p in depth_order(manifest.profiles)]
    df = pd.DataFrame(rows, columns=["Metric key", "Group", "Layer", "Kind", "Modules",
                                     "Importance", "Per-sample score", "Share", "Rank"])
    return df.astype({"Layer": "Int64"})


DEPTH_PROFILE = "depth_profile"  # prefix of the per-kind step series (step = decoder layer)
# Prefix of the run's headline values. MLflow's chart view orders sections by name (unprefixed keys
# last, under "Model metrics"): `run/` puts the headline before `seconds/` and `sensitivity/`.
HEADLINE = "run"
PERCENT = 100.0  # shares are logged in percent, as the descriptions and reports print them


def run_metrics(manifest: Manifest) -> list[Metric]:
    """Every metric of one job's manifest, as (key, value, step).

    What MLflow shows first must mean what its name says. MLflow's Overview, runs table and
    Compare page show a step series' *last* step, so:

    - the run's headline numbers are single values, ``run/<name>`` (``summary_values``:
      ``run/top1_share``, ``run/top10_share``, ``run/lm_head_share``, ``run/total_score``, bits
      requested and achieved, ...);
    - per-layer step series (step = decoder layer index) are named as depth profiles,
      ``depth_profile/share/<kind>`` and ``depth_profile/rank/<kind>``, so their last step (the
      last decoder layer) cannot be read as the run's value (per-sample scores, 1e-8-sized, stay
      in the reports and the key table: a chart's axis would read 0);
    - every group also logs ``sensitivity/<group>``: its share of the run's total score in percent
      (raw scores are sums over score batches, 1e-6 on small models: MLflow's bar charts label
      values with two decimals and would print 0.00).

    Shares are in percent everywhere in the metrics. Then the frontier series (step = target bits
    x 100). Non-finite or missing values are left out.
    """
    profiles = manifest.profiles
    # MLflow lists a run's metrics in the order they were logged (Overview; the Compare page's
    # first plotted metric): the headline first, then the groups, then the depth profiles.
    metrics: list[Metric] = [(f"{HEADLINE}/{k}", v, None)
                             for k, v in summary_values(manifest, profiles).items()]
    ordered = depth_order(profiles)
    metrics += [(p.key, p.share * PERCENT, None) for p in ordered]
    for p in ordered:
        if p.layer is None:  # outside the decoder stack: no depth to profile over
            continue
        kind = safe_key(p.kind)[:200]
        metrics += [(f"{DEPTH_PROFILE}/share/{kind}", p.share * PERCENT, p.layer),
                    (f"{DEPTH_PROFILE}/rank/{kind}", float(p.rank), p.layer)]
    metrics += frontier_metrics(manifest)
    return [(k, float(v), s) for k, v, s in metrics if math.isfinite(v)]


def summary_values(manifest: Manifest,
                   profiles: Sequence[GroupProfile] | None = None) -> dict[str, float]:
    """One number per run (MLflow's headline metrics): concentration of the scores, the solver's
    result and the scale of its scores. Shares in percent."""
    profiles = manifest.profiles if profiles is None else profiles
    aq, requested = manifest.autoquant, manifest.scheme.effective_bits_requested
    samples = manifest.score_samples
    values: dict[str, float] = {}
    if profiles:
        values["top1_share"] = profiles[0].share * PERCENT
        values[f"top{TOP_CONCENTRATION}_share"] = top_share(profiles) * PERCENT
    head = next((p for p in profiles if p.layer is None and p.kind == LM_HEAD), None)
    if head is not None:
        values["lm_head_share"] = head.share * PERCENT
        values["lm_head_rank"] = float(head.rank)
    if _is_number(requested):
        values["effective_bits_requested"] = float(requested)
    if _is_number(aq.effective_bits_achieved):
        values["effective_bits_achieved"] = float(aq.effective_bits_achieved)
    if aq.satisfied is not None:
        values["constraint_satisfied"] = float(aq.satisfied)
    if _is_number(aq.total_score):
        values["total_score"] = float(aq.total_score)
        if samples:
            values["total_score_per_sample"] = float(aq.total_score) / samples
    if samples:
        values["score_samples"] = float(samples)
    values["num_layer_groups"] = float(len(profiles))
    return values


def headline_tags(manifest: Manifest) -> dict[str, str]:
    """Headline values that are names, not numbers: ``top1_group`` (the most sensitive group)."""
    ranked = manifest.profiles
    return {"top1_group": ranked[0].name} if ranked else {}


def frontier_metrics(manifest: Manifest) -> list[Metric]:
    """``frontier/<key>`` series over bit targets (step = round(target bits x 100))."""
    samples = manifest.score_samples
    out: list[Metric] = []
    for point in manifest.frontier:
        step = frontier_step(point.target_bits)
        for key, field in _FRONTIER_KEYS.items():
            out.append((f"frontier/{key}", float(getattr(point, field)), step))
        if samples:
            out.append(("frontier/score_per_sample", float(point.total_score) / samples, step))
        quantized = sum(not str(f).startswith("NONE") for f in point.recipe.values())
        out.append(("frontier/quantized_groups", float(quantized), step))
    return out


def frontier_step(target_bits: float) -> int:
    """MLflow steps are integers: a frontier point's step is its target in hundredths of a bit."""
    return round(float(target_bits) * 100)


def batches(items: Sequence[T], size: int = MAX_METRICS_PER_BATCH) -> list[list[T]]:
    """``items`` in consecutive chunks of at most ``size`` (MLflow takes 1000 metrics a batch)."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _is_number(x: Any) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
