"""``sweep``: many sensitivity jobs in one process; one parent MLflow run, one child run per job.

    python -m layer_sensitivity.cli.sweep [--quant-pairs fp8,int8] [--dataset-sizes small] [overrides]

Overrides use Hydra's syntax, sweeps included (``autoquant.method=gradient,kl_div``), and
``sweep=<preset>`` picks a preset from conf/sweep/ (``sweep=cpu_all``: every CPU-capable pair x
every size). Later wins: --quant-pairs / --dataset-sizes, then the preset, then explicit overrides.

Every job's config is composed (with Hydra's compose API) before anything runs or is logged, so
a bad value stops the sweep at once (exit 2). Then the jobs run one after another: each is a child
run named ``<pair>/<granularity>/<size>`` nested under the parent (the run ``mlflow run -e sweep``
created, or a new one). A job that fails is recorded as a FAILED child with its error as
``error.txt`` and the sweep goes on; the parent gets the sweep definition, a summary table and
job counts, and the command exits 1 if any job failed.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # what `-m` expands with
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from .. import paths, pipeline, tracking
from ..errors import UserError
from ..reuse import Resources
from ..schema import SensitivityConfig
from .common import expand_packed_overrides, flatten, user_errors
from .config_store import CONF_DIR
from .sensitivity import output_dir, run_job

CONFIG_NAME = "sensitivity"
PRESET_GROUP = "sweep"
NAME_KEYS = ("quant_pair", "quant_granularity", "dataset.size")  # already in a child's name
SUMMARY = "sweep_summary"
DEFINITION = "sweep.json"
FINISHED, FAILED = "FINISHED", "FAILED"


@dataclass
class Job:
    num: int
    overrides: list[str]
    cfg: DictConfig  # composed, resolved, without the hydra node
    spec: SensitivityConfig
    name: str
    out_dir: Path | None = None  # None: the job cannot even be planned (it will fail)


@dataclass
class Sweep:
    quant_pairs: str | None
    dataset_sizes: str | None
    preset: str | None
    overrides: list[str]
    dir: Path
    jobs: list[Job]

    def definition(self) -> dict[str, Any]:
        return {
            "quant_pairs": self.quant_pairs,
            "dataset_sizes": self.dataset_sizes,
            "preset": self.preset,
            "overrides": self.overrides,
            "dir": str(self.dir),
            "jobs": [{"num": j.num, "name": j.name, "overrides": j.overrides,
                      "output_dir": str(j.out_dir) if j.out_dir else None} for j in self.jobs],
        }


@dataclass
class Outcome:
    job: Job
    status: str
    run_id: str | None = None
    total_score: float | None = None
    effective_bits_achieved: float | None = None
    error: str | None = None


class JobsFailed(Exception):
    """Some jobs failed (each already recorded); ends the parent run FAILED."""


# --- Definition: overrides -> one composed config per job ------------------------------------


def _parse(parser: OverridesParser, args: Sequence[str]) -> list[Override]:
    try:
        return parser.parse_overrides(list(args))
    except HydraException as e:
        raise UserError(f"Cannot parse the sweep's overrides {' '.join(args)!r}: {e}") from None


def _compose(overrides: list[str]) -> DictConfig:
    try:
        return compose(CONFIG_NAME, overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        cause = f" ({e.__cause__})" if e.__cause__ else ""
        raise UserError(
            f"The sweep job with overrides {' '.join(overrides)!r} does not compose: {e}{cause}. "
            "Fix the override; no job ran and nothing was logged."
        ) from None


def job_overrides(quant_pairs: str | None, dataset_sizes: str | None,
                  overrides: Sequence[str]) -> tuple[list[list[str]], str | None]:
    """Each job's override list (cartesian product of every sweep) and the preset's name.

    Needs an initialized Hydra (``initialize_config_dir``).
    """
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    base = [f"{key}={value}" for key, value in (("quant_pair", quant_pairs),
                                                ("dataset.size", dataset_sizes)) if value]
    final: dict[str, Override] = {}
    preset = None
    for o in [*_parse(parser, base), *_parse(parser, overrides)]:
        if o.key_or_group == PRESET_GROUP:
            if o.is_sweep_override():
                raise UserError(f"{o.input_line}: a sweep takes one preset ({PRESET_GROUP}=<name>).")
            preset = o.value()
            params = _compose([f"{PRESET_GROUP}={preset}"]).hydra.sweeper.params or {}
            for p in _parse(parser, [f"{k}={v}" for k, v in params.items()]):
                final[p.key_or_group] = p
        else:
            final[o.key_or_group] = o
    try:
        (batch,) = BasicSweeper.split_arguments(list(final.values()), None)
    except HydraException as e:
        raise UserError(f"Cannot expand the sweep: {e}. Use comma lists, range() or glob().") from None
    return [list(job) for job in batch], str(preset) if preset is not None else None


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _run_name(cfg: DictConfig, overrides: list[str], swept: set[str]) -> str:
    """``<pair>/<granularity>/<size>``, plus any other swept override so names stay distinct."""
    name = f"{cfg.quant_pair.name}/{cfg.quant_granularity.name}/{cfg.dataset.size}"
    extra = [o for o in overrides if _key(o) in swept - set(NAME_KEYS)]
    return " ".join([name, *extra])


def compose_jobs(all_overrides: list[list[str]]) -> tuple[Path, list[Job]]:
    """Compose every job (errors here stop the sweep before anything runs); the jobs' output
    directories are ``<hydra.sweep.dir>/<hydra.sweep.subdir>``, the sweep directory resolved once."""
    values: dict[str, set[str]] = {}
    for o in itertools.chain.from_iterable(all_overrides):
        values.setdefault(_key(o), set()).add(o)
    swept = {k for k, v in values.items() if len(v) > 1}  # keys whose value varies across jobs
    sweep_dir: Path | None = None
    jobs = []
    saved = HydraConfig.instance().cfg
    try:
        for num, overrides in enumerate(all_overrides):
            cfg = _compose(overrides)
            if sweep_dir is None:  # ${now:...} in it: resolved once for the whole sweep
                sweep_dir = Path(str(cfg.hydra.sweep.dir)).resolve()
            jobs.append(_job(num, overrides, cfg, sweep_dir, swept))
    finally:
        HydraConfig.instance().cfg = saved
    assert sweep_dir is not None
    return sweep_dir, jobs


def _job(num: int, overrides: list[str], cfg: DictConfig, sweep_dir: Path,
         swept: set[str]) -> Job:
    """What Hydra's launcher does for job ``num`` of a multirun, then resolve the job's config."""
    try:
        with open_dict(cfg):
            cfg.hydra.job.num = num
            cfg.hydra.job.id = str(num)
            cfg.hydra.sweep.dir = str(sweep_dir)
            cfg.hydra.runtime.output_dir = str(sweep_dir / str(cfg.hydra.sweep.subdir))
        HydraConfig.instance().set_config(cfg)  # for ${hydra:...} in the job's config
        task = copy.deepcopy(cfg)
        with read_write(task), open_dict(task):
            del task["hydra"]
        OmegaConf.resolve(task)
        if task.tracking.run_name is None:
            task.tracking.run_name = _run_name(task, overrides, swept)
        spec: SensitivityConfig = OmegaConf.to_object(task)  # type: ignore[assignment]
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(f"The sweep job {' '.join(overrides)!r} does not resolve: {e}") from None
    if spec.runner.report_only:
        raise UserError("runner.report_only=true regenerates one directory's reports; run it "
                        "with `python -m layer_sensitivity`, not as a sweep.")
    return Job(num, overrides, task, spec, str(task.tracking.run_name))


def _plan_dirs(jobs: list[Job]) -> None:
    """Output directory of every job that plans (no model); two jobs never share one."""
    seen: dict[Path, Job] = {}
    for job in jobs:
        try:
            job.out_dir = output_dir(job.spec, pipeline.plan(job.spec)).resolve()
        except Exception:  # noqa: BLE001 - the job fails again, and is recorded, when it runs
            continue
        if job.out_dir in seen:
            raise UserError(
                f"Sweep jobs {seen[job.out_dir].num} ({seen[job.out_dir].name}) and {job.num} "
                f"({job.name}) would both write to '{job.out_dir}'. Keep output_layout.dir "
                "unique per job (the default is) or sweep only values that the publish layout "
                "tells apart (model, pair, granularity, size). Nothing ran."
            )
        seen[job.out_dir] = job


def define(quant_pairs: str | None, dataset_sizes: str | None, overrides: list[str]) -> Sweep:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="sweep"):
        all_overrides, preset = job_overrides(quant_pairs, dataset_sizes, overrides)
        sweep_dir, jobs = compose_jobs(all_overrides)
    first = jobs[0].spec.tracking
    for job in jobs[1:]:
        t = job.spec.tracking
        if (t.enabled, t.uri, t.experiment) != (first.enabled, first.uri, first.experiment):
            raise UserError("All jobs of a sweep share one tracking store and experiment; do not "
                            "sweep tracking.* settings.")
    _plan_dirs(jobs)
    return Sweep(quant_pairs, dataset_sizes, preset, list(overrides), sweep_dir, jobs)


# --- Running ---------------------------------------------------------------------------------


def run_one(job: Job, parent_run_id: str | None, uri: str | None,
            resources: Resources | None = None) -> Outcome:
    """One job; failures are recorded (FAILED child + error.txt) and returned, never raised."""
    print(f"[sweep] job {job.num}: {job.name}", flush=True)
    with tracking.recording_runs() as started:
        try:
            result = run_job(job.cfg, resources)
        except Exception as e:  # noqa: BLE001 - any failure of one job is recorded, not fatal
            error = tracking.error_text(e)
            print(f"[sweep] job {job.num} FAILED: {error.strip()}", file=sys.stderr, flush=True)
            run_id = started[0] if started else None
            if parent_run_id and uri and not run_id:
                run_id = tracking.record_failed_child(uri, parent_run_id, job.name,
                                                      flatten(job.cfg), error)
            return Outcome(job, FAILED, run_id, error=error)
    aq = result.manifest["autoquant"]
    return Outcome(job, FINISHED, started[0] if started else None,
                   total_score=aq.get("total_score"),
                   effective_bits_achieved=aq.get("effective_bits_achieved"))


def summary(outcomes: list[Outcome]) -> pd.DataFrame:
    rows = [{
        "job": o.job.num,
        "pair": o.job.spec.quant_pair.name,
        "granularity": o.job.spec.quant_granularity.name,
        "size": o.job.spec.dataset.size.value,
        "status": o.status,
        "total_score": o.total_score,
        "effective_bits_achieved": o.effective_bits_achieved,
        "run_id": o.run_id,
        "name": o.job.name,
        "output_dir": str(o.job.out_dir) if o.job.out_dir else None,
        "error": (o.error or "").strip().splitlines()[-1] if o.error else None,
    } for o in outcomes]
    return pd.DataFrame(rows, columns=["job", "pair", "granularity", "size", "status", "total_score",
                                       "effective_bits_achieved", "run_id", "name", "output_dir",
                                       "error"])


def counts(outcomes: list[Outcome]) -> dict[str, float]:
    return {"jobs": float(len(outcomes)),
            "jobs_finished": float(sum(o.status == FINISHED for o in outcomes)),
            "jobs_failed": float(sum(o.status == FAILED for o in outcomes))}


def _write_summary(sweep: Sweep, table: pd.DataFrame) -> None:
    sweep.dir.mkdir(parents=True, exist_ok=True)
    (sweep.dir / DEFINITION).write_text(json.dumps(sweep.definition(), indent=2) + "\n")
    table.to_csv(sweep.dir / f"{SUMMARY}.csv", index=False)


def parent_name(sweep: Sweep) -> str:
    """E.g. ``sweep wfp8_afp8,wint8_aint8 x small (2 jobs)``, ``sweep cpu_all: 10 pairs x ...``."""
    pairs = list(dict.fromkeys(j.spec.quant_pair.name for j in sweep.jobs))
    sizes = list(dict.fromkeys(j.spec.dataset.size.value for j in sweep.jobs))
    shown = ",".join(pairs) if len(pairs) <= 3 else f"{len(pairs)} pairs"
    preset = f"{sweep.preset}: " if sweep.preset else ""
    return f"sweep {preset}{shown} x {','.join(sizes)} ({len(sweep.jobs)} jobs)"


def run(sweep: Sweep) -> list[Outcome]:
    """Run every job; raises JobsFailed at the end if any failed (all of them recorded)."""
    t = sweep.jobs[0].spec.tracking
    # One process for all jobs: each checkpoint is loaded and each captions file tokenized once.
    resources = Resources(keep=True)
    if not t.enabled:
        outcomes = [run_one(job, None, None, resources) for job in sweep.jobs]
        _write_summary(sweep, summary(outcomes))
        if any(o.status == FAILED for o in outcomes):
            raise JobsFailed(outcomes)
        return outcomes
    uri = tracking.resolve_uri(t.uri, paths.project_root())
    with tracking.job_run(uri, t.experiment, parent_name(sweep)) as parent:
        parent_id = parent.info.run_id
        tracking.set_tags({"mlflow.runName": parent_name(sweep), "sweep": "parent"})
        tracking.log_params({
            "sweep.quant_pairs": sweep.quant_pairs, "sweep.dataset_sizes": sweep.dataset_sizes,
            "sweep.preset": sweep.preset, "sweep.overrides": " ".join(sweep.overrides)[:6000],
            "sweep.num_jobs": len(sweep.jobs), "sweep.dir": str(sweep.dir),
        })
        tracking.log_text(json.dumps(sweep.definition(), indent=2) + "\n", DEFINITION)
        outcomes = []
        for job in sweep.jobs:
            outcome = run_one(job, parent_id, uri, resources)
            if outcome.run_id:
                tracking.set_run_tags(uri, outcome.run_id, {
                    "sweep.job": str(job.num), "sweep.overrides": " ".join(job.overrides)[:8000]})
            outcomes.append(outcome)
        table = summary(outcomes)
        _write_summary(sweep, table)
        tracking.log_table(table, SUMMARY)
        tracking.log_metrics(counts(outcomes))
        print(f"[sweep] parent run {parent_id} in {uri}")
        if any(o.status == FAILED for o in outcomes):
            raise JobsFailed(outcomes)
    return outcomes


def main(argv: list[str] | None = None) -> None:
    argv = expand_packed_overrides(list(sys.argv[1:] if argv is None else argv))
    argv = [a for a in argv if a not in ("-m", "--multirun")]  # a sweep is always a multirun
    parser = argparse.ArgumentParser(
        prog="python -m layer_sensitivity.cli.sweep",
        description="Run a sweep of sensitivity jobs: one parent MLflow run, one child per job.")
    parser.add_argument("--quant-pairs", default=None, help="comma-separated, e.g. fp8,int8")
    parser.add_argument("--dataset-sizes", default=None, help="comma-separated, e.g. small,medium")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (sweeps allowed), "
                                                     "e.g. sweep=cpu_all autoquant.batch_size=2")
    args = parser.parse_args(argv)
    with user_errors():
        sweep = define(args.quant_pairs, args.dataset_sizes, args.overrides)
        print(f"[sweep] {len(sweep.jobs)} jobs -> {sweep.dir}", flush=True)
        try:
            outcomes = run(sweep)
        except JobsFailed as e:
            outcomes = e.args[0]
            failed = [o for o in outcomes if o.status == FAILED]
            print(f"error: {len(failed)} of {len(outcomes)} sweep jobs failed (each is a FAILED "
                  "child run with its error.txt):", file=sys.stderr)
            for o in failed:
                last = (o.error or "").strip().splitlines()
                print(f"  job {o.job.num} {o.job.name}: {last[-1] if last else ''}",
                      file=sys.stderr)
            sys.exit(1)
    print(f"[sweep] all {len(outcomes)} jobs finished; summary in {sweep.dir / (SUMMARY + '.csv')}")


if __name__ == "__main__":
    main()
