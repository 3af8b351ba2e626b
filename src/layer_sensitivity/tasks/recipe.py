"""``recipe``: a mixed-format search at one or more LM bit budgets, logged as one run (the search
is ``mixed/``)."""

from __future__ import annotations

import json
import logging
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import (
    catalogue,
    figures,
    profiles,
)
from ..manifest import Manifest
from ..mixed import (
    CHOICES_TABLE,
    CONFIG_FILE,
    REPORT_NAME,
    MixedPlan,
    MixedResult,
    choices_frame,
    describe_heldout,
    heldout_metrics,
    plan,
    run,
)
from ..mixed.heldout import mix_of
from ..mixed.plan import AUTO
from ..phases import Phases
from ..reuse import Resources
from ..schema import SensitivityConfig
from ..tracking import Run, Tracker
from ..tracking.base import Metric
from . import sensitivity as job
from .lifecycle import Outputs, RunSpec, Task, run_task, seconds_metrics

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# One run


@dataclass
class MixedRequest:
    """A ``recipe`` job as the entry point hands it over."""

    cfgs: list[SensitivityConfig]  # one per format, identical but for the pair
    budgets: Any  # one LM budget, a list, or None (midpoint of the formats' bits)
    out_dir: Path
    requested: list[str] | None = None  # formats as typed (aliases), for messages and params
    strategy: str = AUTO
    config_yaml: str | None = None  # the composed configs, written next to the outputs
    params: dict[str, Any] = field(default_factory=dict)  # extra params (e.g. the overrides)
    run_name: str | None = None
    heldout: bool = True  # measure held-out quality (a few fresh quantized models; see run())


def default_run_name(mp: MixedPlan) -> str:
    name = f"mixed/{'+'.join(mp.requested)}/{','.join(f'{b:g}' for b in mp.budgets)}bits"
    modality = mp.cfg.dataset.modality.value
    return name if modality == "text" else f"{name} {modality}"  # as sensitivity run names


def image_params(mp: MixedPlan) -> dict[str, Any]:
    """An image-text run's data settings, named as a sensitivity run logs them (text runs: none)."""
    d = mp.cfg.dataset
    if mp.formats[0].images is None:
        return {}
    return {"dataset.modality": d.modality.value, "dataset.annotations_path": d.annotations_path,
            "dataset.images_dir": d.images_dir, "dataset.image_prompt": d.image_prompt,
            "dataset.image_min_pixels": d.image_min_pixels,
            "dataset.image_max_pixels": d.image_max_pixels}


def params(req: MixedRequest, mp: MixedPlan) -> dict[str, Any]:
    """The MLproject's parameter names first (``mlflow run`` logs those itself), then resolved."""
    c = mp.cfg
    return {
        "formats": ",".join(mp.requested),
        "effective_bits": ",".join(f"{b:g}" for b in mp.budgets),
        "model": c.model.name, "dataset_size": c.dataset.size.value,
        "method": c.autoquant.method.value, **req.params,
        "resolved.pairs": mp.tag,
        "resolved.formats": ", ".join(f"{n} ({p.format_bits:g} bits)"
                                      for n, p in zip(mp.names, mp.formats, strict=True)),
        "resolved.budgets": json.dumps(mp.budgets),
        "resolved.strategy": mp.strategy,
        "resolved.device": mp.formats[0].device,
        "resolved.samples": len(mp.formats[0].captions.lines),
        "resolved.score_samples": mp.formats[0].score_samples,
        "resolved.batch_size": c.autoquant.batch_size,
        "resolved.seq_len": c.dataset.calib_seq_len,
        "resolved.lm_head": c.autoquant.lm_head,
        "resolved.granularity": c.quant_granularity.name,
        "heldout": str(req.heldout).lower(),
        **image_params(mp),
    }


def run_metrics(doc: Manifest) -> list[Metric]:
    """Main budget as single values; per budget (step = bits x 100) achieved bits, score and each
    format's share of the weights and groups; each format's own frontier under ``single/``."""
    aq = doc.autoquant
    out: list[Metric] = [("effective_bits_requested", _value(doc.scheme.effective_bits_requested), None),
                         ("effective_bits_achieved", _value(aq.effective_bits_achieved), None),
                         ("total_score", _value(aq.total_score), None),
                         ("constraint_satisfied", float(_value(aq.satisfied)), None),
                         ("num_layer_groups", float(len(doc.layer_sensitivity)), None)]
    for p in doc.frontier:
        step = profiles.frontier_step(p.target_bits)
        out += [("mixed/effective_bits_achieved", p.achieved_bits, step),
                ("mixed/total_score", p.total_score, step),
                ("mixed/satisfied", float(p.satisfied), step)]
        for name, mix in (p.mix or {}).items():
            key = profiles.safe_key(name)[:180]
            out += [(f"mixed/weights_share/{key}", mix.weights_share, step),
                    (f"mixed/groups/{key}", mix.groups, step)]
    for name, points in mix_of(doc).single_frontiers.items():
        key = profiles.safe_key(name)[:180]
        for q in points:
            step = profiles.frontier_step(q.target_bits)
            out += [(f"single/{key}/effective_bits_achieved", q.achieved_bits, step),
                    (f"single/{key}/total_score", q.total_score, step)]
    return [(k, float(v), s) for k, v, s in out if math.isfinite(float(v))]


def _value(x: float | None) -> float:
    """A value a mixed run always records (the solver's outcome at the main budget)."""
    if x is None:
        raise ValueError("a mixed run's manifest records the solver's outcome")
    return x


def describe(doc: Manifest, heldout: dict[str, Any] | None = None) -> str:
    """The run's description: the verdict at the main budget (the mix's estimated damage against
    each single format at the same bits), its held-out quality against the best single format at
    equal bits, then the mix and where the scores came from."""
    p, mixed = doc.frontier[0], mix_of(doc)
    names = figures.pair_names(doc)
    mix = ", ".join(f"{names.get(n, n)} {int(v.groups)} groups "
                    f"({v.weights_share:.0%} of weights)" for n, v in (p.mix or {}).items())
    singles = []
    for name, points in mixed.single_frontiers.items():
        same = [q for q in points if math.isclose(float(q.target_bits), float(p.target_bits))]
        if same and same[0].satisfied:
            singles.append(f"{names.get(name, name)} alone {float(same[0].total_score):.4g}")
        elif same:
            singles.append(f"{names.get(name, name)} alone cannot reach it")
    versus = f" vs {'; '.join(singles)}" if singles else ""
    return (f"**{p.target_bits:g} LM bits** ({p.achieved_bits:.3f} achieved) mixing "
            f"{' + '.join(mixed.pairs)}: total score **{float(p.total_score):.4g}**"
            f"{versus} (AutoQuantize's estimate of the damage, lower is better).\n\n"
            f"{describe_heldout(heldout)}\n\n{mix}.\n\nModel {doc.model.name}; scores: "
            f"{mixed.reason}. Report: `{REPORT_NAME.replace('.md', '.html')}`.\n")


class RecipeTask(Task[MixedResult]):
    """A ``recipe`` job: the mixed search's plan, run and outputs as one run's lifecycle."""

    def __init__(self, req: MixedRequest, resources: Resources | None = None) -> None:
        self.req, self.resources = req, resources
        self.mp: MixedPlan | None = None

    def validate(self) -> None:
        req = self.req
        self.mp = plan(req.cfgs, req.budgets, requested=req.requested, strategy=req.strategy)

    def _plan(self) -> MixedPlan:
        assert self.mp is not None, "validate() first"
        return self.mp

    def spec(self) -> RunSpec:
        mp = self._plan()
        tags = {"entry_point": "recipe", "mixed.formats": mp.tag, "mixed.strategy": mp.strategy,
                "experimental": str(any(p.cfg.quant_pair.experimental for p in mp.formats)).lower(),
                "host.platform": platform.platform()}
        return RunSpec(self.req.run_name or mp.cfg.tracking.run_name or default_run_name(mp),
                       tags=tags)

    def params(self) -> dict[str, Any]:
        return params(self.req, self._plan())

    def execute(self, tracked: Run, phases: Phases) -> MixedResult:
        mp, req = self._plan(), self.req
        for warning in filter(None, (catalogue.experimental_warning(p.cfg.quant_pair)
                                     for p in mp.formats)):
            log.warning(warning)
        req.out_dir.mkdir(parents=True, exist_ok=True)
        config = (None if req.config_yaml is None
                  else job.write_config(req.out_dir / CONFIG_FILE, req.config_yaml))
        job.log_inputs(tracked, mp.formats[0], req.out_dir, config)
        return run(mp, req.out_dir, self.resources, phases, heldout=req.heldout)

    def outputs(self, result: MixedResult) -> Outputs:
        doc, out_dir = result.manifest, self.req.out_dir
        return Outputs(
            metrics=[*heldout_metrics(result.heldout), *run_metrics(doc),
                     *seconds_metrics(result.seconds)],
            tables={CHOICES_TABLE: choices_frame(doc)},
            tags=job.provenance_tags(doc) | {
                "mixed.composed": str(mix_of(doc).composed).lower(),
                "mixed.reason": str(mix_of(doc).reason)},
            description=describe(doc, result.heldout),
            files={f.relative_to(out_dir).as_posix(): f for f in result.files
                   if f.name != f"{CHOICES_TABLE}.csv"})  # the table is logged as a table


def run_and_log(req: MixedRequest, tracker: Tracker, resources: Resources | None = None,
                log_file: Path | None = None) -> MixedResult:
    """Validate (bad input: no run, no model), then run and log one run."""
    done = run_task(RecipeTask(req, resources), tracker, log_file=log_file,
                    out_of_space_what="the recipe's outputs")
    done.result.run_id = done.run_id
    return done.result
