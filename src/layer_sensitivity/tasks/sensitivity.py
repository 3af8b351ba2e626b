"""One sensitivity job logged as one run: plan (nothing logged yet), run the pipeline, log it.

The tracker decides where it goes (MLflow, or nowhere); this module only says what a run holds.
No Hydra, no MLflow.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import catalogue, paths, pipeline, profiles, sweep
from ..errors import UserError
from ..manifest import Manifest
from ..phases import Phases
from ..redact import redact_text
from ..reuse import Resources
from ..schema import OutputLayout, SensitivityConfig
from ..tracking import Run, Tracker
from ..tracking.base import end_status, error_text
from .lifecycle import Ended, Outputs, RunSpec, Task, run_task, seconds_metrics

log = logging.getLogger(__name__)

CONFIG_FILE = "composed_config.yaml"
KEY_TABLE = "metric_keys"
# Config keys that are not parameters of the analysis: where things are written and tracked.
NOT_PARAMS = ("tracking.", "output_layout.dir", "output_layout.root", "runner.",
              "autoquant.score_cache_dir")
# The MLproject's parameter names (what `mlflow run` logs itself) for the Hydra keys they set:
# every run carries these short names, however it was started, and not the Hydra key twice.
SHORT_PARAMS = {"quant_pair": "quant_pair.name", "dataset_size": "dataset.size",
                "model": "model.name", "method": "autoquant.method",
                "effective_bits": "autoquant.effective_bits"}


@dataclass
class JobRequest:
    """One job as the entry point hands it over: config, where it writes, how it is named."""

    cfg: SensitivityConfig
    out_dir: Path
    config_yaml: str  # the composed config, as written next to the outputs
    flat_config: dict[str, Any]  # the resolved config as dotted keys
    choices: Mapping[str, str] = field(default_factory=dict)  # config group -> option chosen
    run_name: str | None = None
    parent_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    log_file: Path | None = None  # the job's log (Hydra's per-job file), logged when the run ends


def default_run_name(cfg: SensitivityConfig) -> str:
    """``<pair>/<granularity>/<size>``, plus the method and bit targets when not the defaults."""
    name = f"{cfg.quant_pair.name}/{cfg.quant_granularity.name}/{cfg.dataset.size.value}"
    if cfg.dataset.modality.value != "text":
        name += f" {cfg.dataset.modality.value}"
    if cfg.autoquant.method.value != "gradient":
        name += f" {cfg.autoquant.method.value}"
    bits = cfg.autoquant.effective_bits
    if bits is not None:  # validated later (pipeline.plan): any value must name the run here
        shown = ",".join(_bits_text(b) for b in (bits if isinstance(bits, (list, tuple)) else [bits]))
        name += f" @{shown}bits"
    return name


def _bits_text(value: Any) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def output_dir(cfg: SensitivityConfig, plan: pipeline.Plan, hydra_dir: Path) -> Path:
    if cfg.output_layout.kind == OutputLayout.publish:
        from ..publish import analysis_dir

        return analysis_dir(Path(cfg.output_layout.root), cfg, plan.scheme_name)
    return hydra_dir


def _check_publish_target(cfg: SensitivityConfig, out_dir: Path) -> None:
    if cfg.output_layout.kind != OutputLayout.publish:
        return  # hydra.run.dir: checked by the Hydra callback before Hydra makes it
    existing = paths.nearest_existing(out_dir)
    why = paths.write_failure(existing)
    if why is not None:
        raise UserError(f"output_layout.root={cfg.output_layout.root} cannot be written: nothing "
                        f"can be created in '{existing}' ({why}). Set output_layout.root to a "
                        "writable directory.")


def config_params(req: JobRequest) -> dict[str, Any]:
    """The analysis' parameters as configured: short names first, then the other config keys."""
    flat = req.flat_config
    bits = flat.get("autoquant.effective_bits")
    # `quant_pair` is the pair as typed (`mlflow run -P quant_pair=fp8` logs it so itself, and a
    # param cannot change); `pair` is its canonical name, so `params.pair = "wfp8_afp8"` finds every
    # run of the pair however it was typed.
    short = {"quant_pair": req.choices.get("quant_pair", flat.get("quant_pair.name")),
             "pair": flat.get("quant_pair.name"),
             "dataset_size": flat.get("dataset.size"),
             "model": req.choices.get("model", flat.get("model.name")),
             "method": flat.get("autoquant.method"),
             "effective_bits": "null" if bits is None else bits}
    rest = {k: v for k, v in flat.items()
            if k not in SHORT_PARAMS.values() and not k.startswith(NOT_PARAMS)}
    return short | rest


def resolved_params(plan: pipeline.Plan) -> dict[str, Any]:
    """What the plan decided from the config (logged once the job validated)."""
    return {
        "resolved.quant_pair": plan.cfg.quant_pair.name,
        "resolved.device": plan.device,
        "resolved.samples": len(plan.captions.lines),
        "resolved.score_samples": plan.score_samples,
        "resolved.effective_bits_requested": plan.target_bits,
        "resolved.weight_quantizer": plan.weight_quantizer["summary"],
        "resolved.input_quantizer": plan.input_quantizer["summary"],
    }


def describe(m: Manifest) -> str:
    """The run's description (MLflow shows its first lines on the run page): the verdict first,
    then what ran. Shares match the run's ``run/top1_share`` / ``sensitivity/<group>`` metrics."""
    s, aq, d, q = m.scheme, m.autoquant, m.dataset, m.quantization
    ranked = m.profiles
    top = ranked[0] if ranked else None
    verdict = (f"Most sensitive: **`{top.name}`** ({top.share:.1%} of the total score); the top "
               f"{profiles.TOP_CONCENTRATION} groups hold {profiles.top_share(ranked):.1%}."
               if top else "No layer group in scope.")
    lines = "\n".join(f"{g.rank}. `{g.name}` {g.share:.1%} ({', '.join(g.modules)})"
                      for g in ranked[:3])
    return (f"{verdict}\n\n**{q.pair}** ({q.granularity}) "
            f"on {m.model.name}, {s.method} scores over {d.samples_used} captions "
            f"({d.size}); LM bits requested {s.effective_bits_requested:g}, achieved "
            f"{aq.effective_bits_achieved:.3f}.\n\nMost sensitive groups:\n{lines}\n")


def summary_lines(m: Manifest, run_id: str | None, out_dir: Path) -> list[str]:
    """The job's last lines on the command line: the verdict, the bits, where it went."""
    ranked = m.profiles
    top = ", ".join(f"{g.name} {g.share:.1%}" for g in ranked[:3])
    return [f"{m.quantization.pair}: most sensitive {top} "
            f"(top {profiles.TOP_CONCENTRATION}: {profiles.top_share(ranked):.1%})",
            f"LM bits requested {m.scheme.effective_bits_requested:g}, achieved "
            f"{m.autoquant.effective_bits_achieved:.3f}; outputs in {out_dir}",
            f"run {run_id}" if run_id else "not tracked (tracking=none)"]


def write_config(path: Path, config_yaml: str) -> Path:
    """The composed config next to the outputs, credentials redacted."""
    path.write_text(redact_text(config_yaml))
    return path


def log_inputs(run: Run, plan: pipeline.Plan, output_dir: Path, config_file: Path | None) -> None:
    """What a job ran on, logged before it runs: device, model, data, config, where it writes."""
    run.set_tags({"device": plan.device, "model.fingerprint": plan.fingerprint,
                  "output_dir": str(output_dir)})
    run.log_dataset(list(plan.captions.lines), str(plan.captions.path), plan.cfg.dataset.name,
                    plan.captions.sha256)
    if config_file is not None:
        run.log_files({config_file.name: config_file})


def provenance_tags(m: Manifest) -> dict[str, str]:
    """Library versions, and whether the scores came from the score cache."""
    cache = m.score_cache
    return {f"version.{k}": v for k, v in m.versions.items()} | {
        "score_cache": "off" if cache is None else "hit" if cache.hit else "miss"}


class SensitivityTask(Task[pipeline.Result]):
    """One sensitivity job: the pipeline's plan, run and outputs as one run's lifecycle."""

    def __init__(self, req: JobRequest, resources: Resources | None = None) -> None:
        self.req, self.resources = req, resources
        self.plan: pipeline.Plan | None = None
        self.final_dir = self.out_dir = req.out_dir  # out_dir: a staging directory when publishing

    def validate(self) -> None:
        cfg = self.req.cfg
        self.plan = pipeline.plan(cfg)
        self.final_dir = output_dir(cfg, self.plan, self.req.out_dir)
        _check_publish_target(cfg, self.final_dir)  # e.g. a publish root on a read-only disk

    def spec(self) -> RunSpec:
        cfg, req = self.req.cfg, self.req
        tags = req.tags | {"quant_pair": cfg.quant_pair.name,
                           "quant_pair.alias": req.choices.get("quant_pair", cfg.quant_pair.name),
                           "experimental": str(cfg.quant_pair.experimental).lower(),
                           "host.platform": platform.platform()}
        return RunSpec(req.run_name or cfg.tracking.run_name or default_run_name(cfg),
                       req.parent_id, tags)

    def params(self) -> dict[str, Any]:
        return config_params(self.req)

    @contextmanager
    def workspace(self) -> Iterator[None]:
        """Hydra's output directory itself, or for ``output_layout=publish`` a staging directory
        beside the analysis directory, renamed into place once everything is logged (a full disk
        or an interruption leaves nothing half-written in the publish tree)."""
        if self.req.cfg.output_layout.kind == OutputLayout.publish:
            from ..staging import staged

            with staged(self.final_dir) as self.out_dir:
                yield
            return
        self.final_dir.mkdir(parents=True, exist_ok=True)
        yield

    def execute(self, run: Run, phases: Phases) -> pipeline.Result:
        cfg, req, plan, out_dir = self.req.cfg, self.req, self.plan, self.out_dir
        assert plan is not None  # validated
        warning = catalogue.experimental_warning(cfg.quant_pair)
        if warning:
            log.warning(warning)
        log.info("job %s -> %s", plan.scheme_name, self.final_dir)
        run.log_params(resolved_params(plan))
        log_inputs(run, plan, self.final_dir, write_config(out_dir / CONFIG_FILE, req.config_yaml))
        return pipeline.run(plan, out_dir, self.resources, phases)

    def outputs(self, result: pipeline.Result) -> Outputs:
        m = result.manifest
        return Outputs(
            metrics=[*profiles.run_metrics(m), *seconds_metrics(result.seconds)],
            tables={KEY_TABLE: profiles.key_table(m)},
            tags=provenance_tags(m) | profiles.headline_tags(m),
            description=describe(m),
            files={f.relative_to(self.out_dir).as_posix(): f for f in result.files})


def run_job(req: JobRequest, tracker: Tracker, resources: Resources | None = None,
            on_end: Callable[[Ended], None] | None = None) -> pipeline.Result:
    """Validate, then run and log into one run.

    A job of its own validates before anything is logged (bad input leaves no run); a sweep's
    job validates inside its child run, so a bad combination is a FAILED child with error.txt.
    """
    task = SensitivityTask(req, resources)
    done = run_task(task, tracker, validate_in_run=bool(req.parent_id), log_file=req.log_file,
                    on_end=on_end, out_of_space_what="the job's outputs")
    # The files where they ended up (a staging directory was renamed into place).
    files = [task.final_dir / f.relative_to(task.out_dir) for f in done.result.files]
    return replace(done.result, files=files, run_id=done.run_id)


def run_sweep_job(req: JobRequest, make_tracker: Callable[[], Tracker], resources: Resources, *,
                  num: int, overrides: list[str]) -> pipeline.Result:
    """One job of a sweep: a child run of the sweep's parent, and ``job_status.json`` in its
    output directory however it ends (what the sweep's summary and progress read)."""
    started = time.monotonic()
    recorded: list[Ended] = []

    def record(ended: Ended) -> None:
        recorded.append(ended)
        result = ended.result
        sweep.write_status(req.out_dir, num=num, name=req.run_name or "", overrides=overrides,
                           status=ended.status, run_id=ended.run_id,
                           manifest=result.manifest if result is not None else None,
                           planned=_planned(req.cfg),
                           error=ended.error, seconds=time.monotonic() - started)
        log.info("sweep: %s", sweep.progress(req.out_dir.parent))

    try:
        return run_job(req, make_tracker(), resources, on_end=record)
    except BaseException as e:
        if not recorded:  # it never got as far as a run (e.g. the store could not be opened)
            record(Ended(None, end_status(e), error_text(e)))
        raise


def _planned(cfg: SensitivityConfig) -> dict[str, Any]:
    """What a job that produced no manifest is known by in the sweep's table."""
    return {"pair": cfg.quant_pair.name, "granularity": cfg.quant_granularity.name,
            "size": cfg.dataset.size.value}
