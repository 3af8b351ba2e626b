"""``sensitivity``: one Hydra job = one MLflow run of one AutoQuantize sensitivity analysis."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .. import catalogue, paths, pipeline, publish, tracking
from ..reuse import Resources
from ..schema import OutputLayout, SensitivityConfig
from .common import flatten, user_errors
from .config_store import CONF_DIR

CONFIG_FILE = "composed_config.yaml"


def output_dir(job: SensitivityConfig, plan: pipeline.Plan) -> Path:
    if job.output_layout.kind == OutputLayout.publish:
        return publish.analysis_dir(Path(job.output_layout.root), job, plan.scheme_name)
    return Path(job.output_layout.dir)


def run_job(cfg: DictConfig, resources: Resources | None = None) -> pipeline.Result:
    """Validate (nothing logged yet), then run and log into one MLflow run.

    ``resources`` shares loaded models and batches between the jobs of one process (a sweep).
    """
    job: SensitivityConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    plan = pipeline.plan(job)
    warning = catalogue.experimental_warning(job.quant_pair)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    out_dir = output_dir(job, plan)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_file = out_dir / CONFIG_FILE
    config_file.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    print(f"job {plan.scheme_name} -> {out_dir}")
    if not job.tracking.enabled:
        return pipeline.run(plan, out_dir, resources=resources)

    uri = tracking.resolve_uri(job.tracking.uri, paths.project_root())
    run_name = job.tracking.run_name or (
        f"{job.quant_pair.name}/{job.quant_granularity.name}/{job.dataset.size.value}"
    )
    with tracking.job_run(uri, job.tracking.experiment, run_name) as run:
        tracking.log_params(flatten(cfg) | {
            "resolved.device": plan.device,
            "resolved.effective_bits_requested": plan.target_bits,
            "resolved.samples": len(plan.captions.lines),
            "resolved.score_samples": plan.score_samples,
            "resolved.output_dir": str(out_dir),
            "resolved.weight_quantizer": catalogue.quantizer_settings(plan.quant_cfg,
                                                                      catalogue.WEIGHT)["summary"],
            "resolved.input_quantizer": catalogue.quantizer_settings(plan.quant_cfg,
                                                                     catalogue.INPUT)["summary"],
        })
        tracking.log_captions(plan.captions.lines, str(plan.captions.path), job.dataset.name,
                              plan.captions.sha256)
        result = pipeline.run(plan, out_dir, resources=resources)
        m = result.manifest
        tracking.log_params({
            "resolved.effective_bits_modelopt": m["scheme"]["effective_bits_modelopt"],
            "resolved.dtype": m["model"]["dtype"],
            "resolved.modelopt_format": m["quantization"]["modelopt_format"],
        })
        tracking.set_tags(tracking.version_tags(m["versions"]) | {
            "device": plan.device,
            "host.platform": platform.platform(),
            "model.fingerprint": m["model"]["fingerprint"],
            "quant_pair": job.quant_pair.name,
            "experimental": str(job.quant_pair.experimental).lower(),
            "score_cache": ("off" if m["score_cache"] is None
                            else "hit" if m["score_cache"]["hit"] else "miss"),
        })
        tracking.log_job(m, result.files, result.seconds, config_file)
        print(f"mlflow run {run.info.run_id} in {uri}")
    return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sensitivity")
def main(cfg: DictConfig) -> None:
    with user_errors():
        if cfg.runner.report_only:  # regenerate reports from a manifest; no model, no MLflow
            from .report import report_only

            report_only(cfg.runner.output_dir)
            return
        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        run_job(cfg, _MULTIRUN_RESOURCES if multirun else None)


# Hydra's -m runs every job in this process: share loaded models and batches between them.
_MULTIRUN_RESOURCES = Resources(keep=True)
