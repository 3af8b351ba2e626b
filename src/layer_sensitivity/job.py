"""One sensitivity job logged as one run: plan (nothing logged yet), run the pipeline, log it.

The tracker decides where it goes (MLflow, or nowhere); this module only says what a run holds.
No Hydra, no MLflow.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import catalogue, paths, pipeline, profiles
from .errors import UserError, out_of_space
from .redact import redact_text
from .reuse import Resources
from .schema import OutputLayout, SensitivityConfig
from .tracking import Interrupted, Run, Tracker

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
        from .publish import analysis_dir

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
        "resolved.weight_quantizer": catalogue.quantizer_settings(
            plan.quant_cfg, catalogue.WEIGHT)["summary"],
        "resolved.input_quantizer": catalogue.quantizer_settings(
            plan.quant_cfg, catalogue.INPUT)["summary"],
    }


def describe(m: dict[str, Any]) -> str:
    """The run's description (MLflow shows its first lines on the run page): the verdict first,
    then what ran. Shares match the run's ``run/top1_share`` / ``sensitivity/<group>`` metrics."""
    s, aq, d = m["scheme"], m["autoquant"], m["dataset"]
    ranked = profiles.group_profiles(m)
    top = ranked[0] if ranked else None
    verdict = (f"Most sensitive: **`{top.name}`** ({top.share:.1%} of the total score); the top "
               f"{profiles.TOP_CONCENTRATION} groups hold {profiles.top_share(ranked):.1%}."
               if top else "No layer group in scope.")
    lines = "\n".join(f"{g.rank}. `{g.name}` {g.share:.1%} ({', '.join(g.modules)})"
                      for g in ranked[:3])
    return (f"{verdict}\n\n**{m['quantization']['pair']}** ({m['quantization']['granularity']}) "
            f"on {m['model']['name']}, {s['method']} scores over {d['samples_used']} captions "
            f"({d['size']}); LM bits requested {s['effective_bits_requested']:g}, achieved "
            f"{aq['effective_bits_achieved']:.3f}.\n\nMost sensitive groups:\n{lines}\n")


def summary_lines(m: dict[str, Any], run_id: str | None, out_dir: Path) -> list[str]:
    """The job's last lines on the command line: the verdict, the bits, where it went."""
    ranked = profiles.group_profiles(m)
    top = ", ".join(f"{g.name} {g.share:.1%}" for g in ranked[:3])
    return [f"{m['quantization']['pair']}: most sensitive {top} "
            f"(top {profiles.TOP_CONCENTRATION}: {profiles.top_share(ranked):.1%})",
            f"LM bits requested {m['scheme']['effective_bits_requested']:g}, achieved "
            f"{m['autoquant']['effective_bits_achieved']:.3f}; outputs in {out_dir}",
            f"run {run_id}" if run_id else "not tracked (tracking=none)"]


def run_job(req: JobRequest, tracker: Tracker, resources: Resources | None = None
            ) -> pipeline.Result:
    """Validate, then run and log into one run.

    A job of its own validates before anything is logged (bad input leaves no run); a sweep's
    job validates inside its child run, so a bad combination is a FAILED child with error.txt.
    """
    cfg = req.cfg
    plan = None if req.parent_id else pipeline.plan(cfg)
    if plan is not None:  # e.g. a publish root on a file or read-only: refused before any run
        _check_publish_target(cfg, output_dir(cfg, plan, req.out_dir))
    name = req.run_name or cfg.tracking.run_name or default_run_name(cfg)
    tags = req.tags | {"quant_pair": cfg.quant_pair.name,
                       "quant_pair.alias": req.choices.get("quant_pair", cfg.quant_pair.name),
                       "experimental": str(cfg.quant_pair.experimental).lower(),
                       "host.platform": platform.platform()}
    with tracker.run(name, parent_id=req.parent_id, tags=tags) as run:
        try:
            run.log_params(config_params(req))  # also for a sweep job that fails to validate
            try:
                result = _run_and_log(req, plan or pipeline.plan(cfg), run, resources)
            except OSError as e:  # a full disk or read-only target: one paragraph, no traceback
                clean = out_of_space(e, "the job's outputs")
                if clean is None:
                    raise
                raise clean from None
        except BaseException as e:
            e.run_id = run.run_id  # type: ignore[attr-defined]  # for the sweep's summary
            raise
        finally:
            if req.log_file is not None and req.log_file.is_file():
                with suppress(Exception):  # partial logs of a failed run help; never mask it
                    run.log_files({req.log_file.name: req.log_file})
        if run.run_id:
            log.info("run %s (%s) in %s", run.run_id, name, tracker.where)
    result.run_id = run.run_id
    return result


def _run_and_log(req: JobRequest, plan: pipeline.Plan, run: Run, resources: Resources | None
                 ) -> pipeline.Result:
    cfg = req.cfg
    warning = catalogue.experimental_warning(cfg.quant_pair)
    if warning:
        log.warning(warning)
    final_dir = output_dir(cfg, plan, req.out_dir)
    with _writing_into(cfg, final_dir) as out_dir:
        result = _run_into(req, plan, run, resources, out_dir, final_dir)
    # The files where they ended up (a staging directory was renamed into place).
    return replace(result, files=[final_dir / f.relative_to(out_dir) for f in result.files])


@contextmanager
def _writing_into(cfg: SensitivityConfig, final_dir: Path) -> Iterator[Path]:
    """Where the job writes: Hydra's output directory itself, or for ``output_layout=publish`` a
    staging directory beside the analysis directory, renamed into place once complete (a disk
    full or an interruption leaves nothing half-written in the publish tree)."""
    if cfg.output_layout.kind == OutputLayout.publish:
        from .publish import staged

        with staged(final_dir) as stage:
            yield stage
        return
    final_dir.mkdir(parents=True, exist_ok=True)
    yield final_dir


def _run_into(req: JobRequest, plan: pipeline.Plan, run: Run, resources: Resources | None,
              out_dir: Path, final_dir: Path) -> pipeline.Result:
    cfg = req.cfg
    config_file = out_dir / CONFIG_FILE
    config_file.write_text(redact_text(req.config_yaml))
    log.info("job %s -> %s", plan.scheme_name, final_dir)
    run.set_tags({"device": plan.device, "model.fingerprint": plan.fingerprint,
                  "output_dir": str(final_dir)})
    run.log_params(resolved_params(plan))
    run.log_dataset(list(plan.captions.lines), str(plan.captions.path), cfg.dataset.name,
                    plan.captions.sha256)
    run.log_files({CONFIG_FILE: config_file})
    phases = pipeline.Phases()
    try:
        result = pipeline.run(plan, out_dir, resources, phases)
    except Interrupted as e:
        e.where = phases.current
        raise
    m = result.manifest
    run.log_metrics([*profiles.run_metrics(m),
                     *((f"seconds/{k}", v, None) for k, v in result.seconds.items())])
    run.log_table(profiles.key_table(m), KEY_TABLE)
    run.set_tags({f"version.{k}": v for k, v in m["versions"].items()} | profiles.headline_tags(m) | {
        "score_cache": ("off" if m["score_cache"] is None
                        else "hit" if m["score_cache"]["hit"] else "miss"),
        "mlflow.note.content": describe(m),
    })
    run.log_files({f.relative_to(out_dir).as_posix(): f for f in result.files})
    return result
