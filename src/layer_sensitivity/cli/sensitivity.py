"""``sensitivity``: one Hydra job = one run; ``-m`` sweeps = one parent run + a child per job.

    python -m layer_sensitivity [hydra overrides]          # one job
    python -m layer_sensitivity -m quant_pair=fp8,int8     # a sweep (any Hydra launcher)
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .. import console, paths, sweep, tracking
from ..errors import ReportedError, UserError
from ..redact import redact_text
from ..schema import SensitivityConfig
from ..tasks import sensitivity as job
from . import config_store  # noqa: F401 - registers the schemas and resolvers
from .app_state import APP, compose_error
from .common import fail, flatten, install_signal_handlers, redact_logging, user_errors
from .config_store import CONF_DIR, check_known_keys
from .sweep_callback import finish_active
from .typos import check_overrides

log = logging.getLogger(__name__)



class JobFailed(CompactHydraException):
    """A sweep job's user error: Hydra prints the one paragraph, not a traceback."""


def _redact_hydra_files(out_dir: Path) -> None:
    """Hydra writes the overrides as given into .hydra/: no credentials left there."""
    for f in [*(out_dir / ".hydra").glob("*.yaml"), out_dir.parent / "multirun.yaml"]:
        if f.is_file():
            text = f.read_text()
            if redact_text(text) != text:
                f.write_text(redact_text(text))


def _remove_if_empty(out_dir: Path) -> None:
    """A job that stopped before producing anything leaves no output folder behind (nor the empty
    parents Hydra made for it, e.g. outputs/<pair>/<granularity>/<size>/)."""
    produced = [p for p in out_dir.iterdir() if p.name != ".hydra" and not p.name.endswith(".log")]
    if produced:
        return
    shutil.rmtree(out_dir, ignore_errors=True)
    stop = {Path.cwd().resolve(), paths.project_root().resolve()}
    parent = out_dir.resolve().parent
    while parent not in stop and parent != parent.parent:
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break
        parent = parent.parent


def _other_mode(spec: SensitivityConfig, out_dir: Path) -> None:
    if spec.runner.report_only:  # regenerate reports from a manifest; no model, no tracking
        from ..regenerate import report_only

        report_only(spec.runner.output_dir)
        _remove_if_empty(out_dir)
    else:  # dry run: shapes, groups, bits and memory; no weights, no data
        from ..planner import dry_run, format_plan

        print(format_plan(dry_run(spec, out_dir)))


def run_task(cfg: DictConfig) -> None:
    """One job, as Hydra hands it over: build the request, make one call."""
    redact_logging()
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    _redact_hydra_files(out_dir)
    try:  # unknown `+keys`; the typed schema checks values too (e.g. recipes.keep)
        check_known_keys(cfg)
        spec: SensitivityConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except UserError as e:
        _remove_if_empty(out_dir)
        if hc.mode == RunMode.MULTIRUN:
            raise JobFailed(str(e)) from None
        fail(str(e))
    if spec.runner.report_only or spec.runner.dry_run:
        try:
            _other_mode(spec, out_dir)
        except UserError as e:
            _remove_if_empty(out_dir)
            fail(str(e))
        return
    multirun = hc.mode == RunMode.MULTIRUN
    name = spec.tracking.run_name or job.default_run_name(spec)
    context = sweep.SweepContext.current() if multirun else sweep.SweepContext()
    if multirun:
        name = sweep.job_name(name, list(hc.overrides.task), set(context.swept_keys))
    req = job.JobRequest(
        cfg=spec, out_dir=out_dir, config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        flat_config=flatten(cfg), choices=dict(hc.runtime.choices), run_name=name,
        parent_id=context.parent_run_id,
        tags={"sweep.job": str(hc.job.num)} if multirun else {},
        log_file=out_dir / f"{hc.job.name}.log")
    if not multirun:
        try:
            tracker = tracking.create(spec.tracking)
            result = job.run_job(req, tracker)
        except UserError as e:
            _remove_if_empty(out_dir)
            fail(str(e))
        except ReportedError as e:  # e.g. the tracking server went away: no traceback either
            fail(str(e), 1)
        # Where the results are: Hydra's directory, or the analysis directory (output_layout=publish)
        where = result.files[0].parent if result.files else out_dir
        console.summary(job.summary_lines(result.manifest, result.run_id, where)
                        + [console.ui_hint(tracker.where) if result.run_id else ""])
        return
    try:
        job.run_sweep_job(req, lambda: tracking.create(spec.tracking), APP.resources,
                          num=hc.job.num, overrides=list(hc.overrides.task))
    except ReportedError as e:
        raise JobFailed(f"{name}: {e}") from None


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sensitivity")
def _hydra_main(cfg: DictConfig) -> None:
    run_task(cfg)


def main() -> None:
    """Hydra's app with the project's failure policy around it (exit 2 for bad input, 1 when a
    sweep job failed, 128 + signal when interrupted; sweeps always end their parent run)."""
    install_signal_handlers()
    console.quiet_third_party()
    with user_errors():
        check_overrides(sys.argv[1:])
        try:
            _hydra_main()
        except SystemExit as e:
            if compose_error(e) is not None:  # Hydra printed why; no job ran: bad input
                # (a sweep's parent run is open here only for a glob sweep, whose jobs its
                # callback could not compose before starting it)
                finish_active(UserError("The sweep's configuration does not compose (see the "
                                        "message above); no job ran."))
                tracking.discard_launched_run("The configuration does not compose.")
                raise SystemExit(2) from None
            finish_active(None)  # a failed job: the sweep's summary says how many
            raise
        except BaseException as e:
            finish_active(e)
            raise
        finish_active(None)
