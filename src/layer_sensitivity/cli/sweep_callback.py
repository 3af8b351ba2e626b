"""Hydra callback: a multirun is one parent run with a nested child run per job, any launcher.

Configured in conf/sensitivity.yaml (``hydra.callbacks.sweep_runs``). The parent starts when the
multirun starts and ends when it ends; if Hydra stops early (a failed job re-raised by the
sweeper, Ctrl-C, SIGTERM), the entry point's safety net ends it through ``finish_active``.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .. import console, sweep, tracking
from ..errors import UserError
from ..schema import TrackingConfig
from . import common
from .app_state import APP, COMPOSE_ERRORS
from .common import fail
from .config_store import check_known_keys

log = logging.getLogger(__name__)


def planned_jobs(cfg: DictConfig) -> tuple[list[str], set[str], list[str]]:
    """(each job's overrides key, the swept keys, all overrides) as the basic sweeper expands
    them: ``hydra.sweeper.params`` first, command-line overrides after (later wins)."""
    jobs, swept, args = planned_overrides(cfg)
    return [sweep.overrides_key(j) for j in jobs], swept, args


def planned_overrides(cfg: DictConfig) -> tuple[list[list[str]], set[str], list[str]]:
    """:func:`planned_jobs` with each job's overrides as a list (what composes its config)."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    args = [*(f"{k}={v}" for k, v in params.items()), *cfg.hydra.overrides.task]
    parsed = {o.key_or_group: o for o in OverridesParser.create().parse_overrides(args)}
    axes = []
    for o in parsed.values():
        try:
            # As the sweeper writes each job's overrides (escaped values, `+`/`~` kept), so a
            # planned job matches its job_status.json (tracking.uri=http\://host\:5000).
            values = (list(o.sweep_string_iterator()) if o.is_sweep_override()
                      else [o.get_value_element_as_str()])
        except HydraException:  # glob sweeps need the config repository: plan unknown
            return [], {k for k, o in parsed.items() if o.is_sweep_override()}, args
        axes.append([f"{o.get_key_element()}={v}" for v in values])
    combos = [list(c) for c in itertools.product(*axes)]
    return combos, {k for k, o in parsed.items() if o.is_sweep_override()}, args


def check_output_dir(path: Path, key: str) -> None:
    """Hydra would print a traceback for an output directory it cannot create: one paragraph."""
    try:
        common.check_out_dir(path, key)
    except UserError as e:
        fail(str(e))


class SweepRuns(Callback):
    """``share_scores`` (``hydra.callbacks.sweep_runs.share_scores``): before the jobs start,
    score all pairs that share model, data and score settings in one search and store each
    pair's scores, so every job is a score-cache hit (``shared_scores.precompute``)."""

    def __init__(self, share_scores: bool = True) -> None:
        self.share_scores = share_scores

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_output_dir(Path(str(config.hydra.run.dir)), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_output_dir(Path(str(config.hydra.sweep.dir)), "hydra.sweep.dir")
        try:
            check_known_keys(config)  # a typo'd `+key` would fail every job alike: refuse it now
            if OmegaConf.select(config, "autoquant.reuse_scores", default=True):
                from .. import scorecache

                scorecache.check_key_file()  # e.g. world-readable: every job would fail alike
        except UserError as e:
            fail(str(e))
        jobs, swept, args = planned_overrides(config)
        composed = compose_jobs(config, jobs)  # before any run exists: a bad job refuses the sweep
        planned = [sweep.overrides_key(j) for j in jobs]
        tcfg: TrackingConfig = OmegaConf.to_object(  # type: ignore[assignment]
            OmegaConf.merge(OmegaConf.structured(TrackingConfig), config.tracking))
        s = sweep.Sweep(tracking.create(tcfg), Path(str(config.hydra.sweep.dir)).resolve(),
                        sweep_name(args, len(planned)), {"overrides": args, "jobs": planned},
                        planned, frozenset(swept),
                        sweep.launcher_workers(OmegaConf.select(config, "hydra.launcher") or {}))
        s.start()
        APP.sweep = s
        if self.share_scores:
            share_scores(config, composed, s)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        finish_active(None)


def compose_jobs(config: DictConfig, jobs: list[list[str]]) -> list[tuple[list[str], DictConfig]]:
    """Every planned job's config, composed as Hydra's sweeper is about to compose it; one that
    does not compose refuses the sweep here (exit 2, one paragraph), before its parent run
    exists. (The sweeper would stop the whole sweep on it anyway, before launching any job.)"""
    composed = []
    for overrides in jobs:
        try:
            composed.append((overrides, compose(str(config.hydra.job.config_name), overrides=[
                *overrides, f"output_layout.dir={config.hydra.sweep.dir}"])))
        except COMPOSE_ERRORS as e:
            fail(f"The sweep's job `{' '.join(overrides)}` does not compose: {why(e)}. "
                 "Fix that override; no job ran.")
        except Exception as e:  # noqa: BLE001 - not a compose error: Hydra's sweeper decides
            log.info("%s not composed here (%s)", " ".join(overrides), why(e))
    return composed


def why(e: Exception) -> str:
    """Hydra's compose error on one line, with the first line of the value error behind it."""
    cause = str(e.__cause__).strip().splitlines()[:1] if e.__cause__ is not None else []
    return ": ".join(" ".join(part.split()).rstrip(".") for part in [str(e), *cause])


def share_scores(config: DictConfig, composed: list[tuple[list[str], DictConfig]],
                 s: sweep.Sweep) -> None:
    """Store shared scores for the planned jobs (on the parent run: ``shared_scores.json`` and
    ``seconds/shared_scores``). Runs where the sweep was started, so not for SLURM (the login
    node): there each job scores itself."""
    launcher = str(OmegaConf.select(config, "hydra.launcher._target_") or "")
    if "slurm" in launcher.lower():
        log.info("shared scores: off for %s (it would run on the submitting node); each job "
                 "scores itself", launcher.rsplit(".", 1)[-1])
        return
    cfgs = []
    for overrides, cfg in composed:
        try:
            cfgs.append(OmegaConf.to_object(cfg))
        except Exception as e:  # noqa: BLE001 - that job fails on its own, with its own message
            log.info("shared scores: %s left to its job (%s)", " ".join(overrides),
                     str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    if len(cfgs) < 2:
        return
    from .. import shared_scores

    report = shared_scores.precompute(cfgs)  # type: ignore[arg-type]
    s.record_shared_scores(report.as_dict())


def finish_active(error: BaseException | None) -> bool:
    """End this process's sweep (if any) once; True when it had failed or interrupted jobs."""
    active, APP.sweep = APP.sweep, None
    if active is None:
        return False
    table = active.finish(error)
    if table is not None:
        run_id = active.run.run_id if active.run is not None else None
        console.summary([*(line.replace("**", "").replace("`", "") for line in active.verdict),
                         f"sweep parent run {run_id}" if run_id else "",
                         console.ui_hint(active.tracker.where) if run_id else ""])
    return table is not None and bool((table["status"] != "FINISHED").any())


def sweep_name(args: list[str], jobs: int) -> str:
    """E.g. ``sweep quant_pair=fp8,int8 dataset.size=small (2 jobs)``."""
    shown = " ".join(a for a in args if not a.startswith("hydra"))
    return f"sweep {shown[:200]} ({jobs or '?'} jobs)"
