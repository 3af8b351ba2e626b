#!/usr/bin/env python
"""Driver of scripts/gpu_smoke.sh: timed GPU phases, measured peak memory next to the plan.

    python scripts/gpu_smoke.py [--out DIR] [--skip-4b] [--timeout SECONDS]

Every job is ``python -m layer_sensitivity ... tracking=none`` run by scripts/measure_job.py in a
child process: whole-job peaks of allocated and reserved GPU memory (ModelOpt's
``torch.cuda.reset_peak_memory_stats()`` at the start of scoring is wrapped, not obeyed), the
peaks of each phase, calibration and scoring apart, and the memory right after the model loads.
Jobs run at the planned batch and sequence length with fixed padding (every batch B x S tokens,
``dataset.pad_to_longest=false``), so the planner's estimate for the same model, batch and
sequence length applies; each planned term stands next to what was measured, with the ratio.
Installs nothing; the bench model is generated locally when missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / ".cache" / "bench-qwen3-vl"
CUDA_PAIRS = ["wfp4_afp16", "wfp4_afp8", "wfp4_afp4", "wmxfp4_afp16", "wmxfp4_afp8", "wmxfp4_amxfp4"]
BATCH, SEQ_LEN = 4, 128  # passed to every job and to the planner, so estimate and job agree
# Every batch exactly BATCH x SEQ_LEN tokens (16 captions = 4 batches), as the plan assumes.
FIXED_SHAPE = [f"autoquant.batch_size={BATCH}", f"dataset.calib_seq_len={SEQ_LEN}",
               "dataset.pad_to_longest=false", "dataset.size=small"]
MIN_PHASE_SECONDS = 20  # a phase that cannot get this much is skipped, not started


@dataclass
class Phase:
    name: str
    status: str = "skipped"  # ok | failed | timeout | skipped
    seconds: float = 0.0
    peak_gib: float | None = None  # measured whole-job peak, allocated
    reserved_gib: float | None = None  # measured whole-job peak, reserved by the allocator
    estimate_gib: float | None = None  # planner.plan_model: the planned peak
    detail: str = ""
    log: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    planned: dict[str, float] = field(default_factory=dict)  # the plan's memory terms, GiB
    measured: dict[str, Any] = field(default_factory=dict)  # scripts/measure_job.py's report


# Planned terms that one run can measure apart, and how: (label, planned, measured) in GiB.
def term_rows(planned: dict[str, float], measured: dict[str, Any]
              ) -> list[tuple[str, float | None, float | None]]:
    """Each planned memory term next to its measurement (None where one run cannot separate it)."""
    events, job = measured.get("events", {}), measured.get("job", {})
    loaded = events.get("model_loaded", {}).get("cuda_allocated_gib")
    scoring = events.get("scoring", {}).get("cuda_allocated_peak_gib")
    calibration = events.get("calibration", {}).get("cuda_allocated_peak_gib")
    weights = planned.get("weights")
    rows: list[tuple[str, float | None, float | None]] = [
        ("weights (allocated after the model loads)", weights, loaded)]
    for term in ("quantizers", "checkpointed_inputs", "embedding_grad", "logits",
                 "layer_activations", "output_diffs"):
        rows.append((term, planned.get(term), None))
    if weights is not None and "peak" in planned:
        rows.append(("scoring above the weights (peak - weights)", planned["peak"] - weights,
                     None if scoring is None or loaded is None else scoring - loaded))
    rows.append(("calibration peak (forward only; planned: below the peak)", None, calibration))
    rows.append(("whole-job peak, allocated", planned.get("peak"), job.get("cuda_allocated_peak_gib")))
    rows.append(("whole-job peak, reserved", planned.get("peak"), job.get("cuda_reserved_peak_gib")))
    return rows


def ratio(planned: float | None, measured: float | None) -> float | None:
    """measured / planned (None when either is missing or the plan is 0)."""
    if planned is None or measured is None or planned <= 0:
        return None
    return measured / planned


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def run_job(phase: Phase, overrides: list[str], out: Path, deadline: Deadline) -> None:
    if deadline.left() < MIN_PHASE_SECONDS:
        phase.detail = "not started: out of time"
        return
    log = out / "logs" / f"{phase.name}.log"
    peak_file = out / "logs" / f"{phase.name}.peaks.json"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO / "scripts" / "measure_job.py"), "--report", str(peak_file),
           "--", *overrides, *FIXED_SHAPE, "tracking=none",
           f"hydra.run.dir={out / 'jobs' / phase.name}"]
    env = os.environ | {"LAYER_SENSITIVITY_CACHE_DIR": str(out / "cache")}
    start = time.monotonic()
    with log.open("w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                timeout=deadline.left()).returncode
            phase.status = "ok" if rc == 0 else "failed"
            phase.detail = "" if rc == 0 else f"exit status {rc}"
        except subprocess.TimeoutExpired:
            phase.status, phase.detail = "timeout", "killed at the overall deadline"
    phase.seconds = time.monotonic() - start
    phase.log = str(log.relative_to(out))
    if peak_file.is_file():
        phase.measured = json.loads(peak_file.read_text())
        phase.peak_gib = phase.measured["job"].get("cuda_allocated_peak_gib")
        phase.reserved_gib = phase.measured["job"].get("cuda_reserved_peak_gib")
    if phase.status == "failed":
        phase.detail += ": " + " | ".join(log.read_text().strip().splitlines()[-3:])[-400:]


def estimate(model_cfg: Any, quant_bits: float = 8.0) -> dict[str, Any]:
    from layer_sensitivity import planner

    return planner.plan_model(model_cfg, format_bits=quant_bits, batch_size=BATCH, seq_len=SEQ_LEN,
                              device="cuda")


def ensure_bench_model(phase: Phase, deadline: Deadline) -> None:
    if (BENCH_DIR / "config.json").is_file():
        phase.status, phase.detail = "ok", "already present"
        return
    start = time.monotonic()
    cmd = [sys.executable, str(REPO / "scripts" / "make_tiny_qwen3vl.py"), "--preset", "bench",
           "--out", str(BENCH_DIR), "--threads", str(min(8, os.cpu_count() or 1))]
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=deadline.left())
        phase.status = "ok" if done.returncode == 0 else "failed"
        phase.detail = "" if done.returncode == 0 else done.stderr.strip()[-400:]
    except subprocess.TimeoutExpired:
        phase.status, phase.detail = "timeout", "bench model not generated in time"
    phase.seconds = time.monotonic() - start


def preset(name: str, random_init: bool = False) -> Any:
    """A conf/model preset as a ModelConfig (plain YAML; no Hydra needed here)."""
    import yaml

    from layer_sensitivity.schema import ModelConfig, ModelInit

    data = yaml.safe_load((REPO / "conf" / "model" / f"{name}.yaml").read_text())
    data = {k: v for k, v in data.items() if k in ModelConfig.__dataclass_fields__}
    if str(data.get("path") or "").startswith("${"):  # the bench preset's interpolated path
        data["path"] = str(BENCH_DIR)
    data["init"] = ModelInit.random if random_init else ModelInit.pretrained
    return ModelConfig(**data)


def random_job(phase: Phase, preset_name: str, out: Path, deadline: Deadline) -> None:
    import torch

    plan = estimate(preset(preset_name, random_init=True))
    phase.estimate_gib = plan["memory_gib"]["peak"]
    phase.planned = plan["memory_gib"]
    phase.extra = {"parameters": plan["parameters"], "groups_in_scope": plan["groups"]["in_scope"]}
    free = torch.cuda.mem_get_info()[0] / 1024**3
    if phase.estimate_gib > free:
        phase.detail = f"not started: estimate {phase.estimate_gib:.1f} GiB > free {free:.1f} GiB"
        return
    run_job(phase, [f"model={preset_name}", "model.init=random", "model.path=null",
                    "model.device=cuda", "model.dtype=bfloat16", "quant_pair=fp8",
                    "autoquant.method=gradient", "autoquant.reuse_scores=false"], out, deadline)


def write_reports(out: Path, phases: list[Phase], started: float) -> int:
    import torch

    props = torch.cuda.get_device_properties(0)
    doc = {
        "gpu": {"name": props.name, "memory_gib": props.total_memory / 1024**3},
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda,
                     "python": platform.python_version()},
        "batch_size": BATCH, "seq_len": SEQ_LEN,
        "total_seconds": time.monotonic() - started,
        "phases": [asdict(p) for p in phases],
    }
    (out / "gpu-smoke.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "gpu-smoke.md").write_text(render(doc))
    return exit_status(phases)


def exit_status(phases: list[Phase]) -> int:
    """0 when every required phase passed (the 4B job may be skipped), else 1."""
    required = [p for p in phases if p.name != "random_4b"]
    return 0 if all(p.status == "ok" for p in required) and all(
        p.status in ("ok", "skipped") for p in phases) else 1


def _gib(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _ratio(planned: float | None, measured: float | None) -> str:
    r = ratio(planned, measured)
    return "" if r is None else f"{r:.2f}"


def render(doc: dict[str, Any]) -> str:
    """The Markdown report from the JSON one (no torch): a row per phase, then per job with a
    plan its planned terms next to the measured ones and measured / planned."""
    gpu, phases = doc["gpu"], doc["phases"]
    lines = [f"# GPU smoke: {gpu['name']} ({gpu['memory_gib']:.0f} GiB)", "",
             f"torch {doc['versions']['torch']}, CUDA {doc['versions']['cuda']}; jobs at batch "
             f"{doc['batch_size']} x {doc['seq_len']} tokens (fixed padding); total "
             f"{doc['total_seconds']:.0f} s.", "",
             "| phase | status | seconds | peak GiB allocated | peak GiB reserved | "
             "peak GiB planned | allocated / planned | detail |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for p in phases:
        lines.append(f"| {p['name']} | {p['status']} | {p['seconds']:.1f} | {_gib(p['peak_gib'])} "
                     f"| {_gib(p.get('reserved_gib'))} | {_gib(p['estimate_gib'])} | "
                     f"{_ratio(p['estimate_gib'], p['peak_gib'])} | "
                     f"{p['detail'].replace('|', '/')} |")
    for p in phases:
        if not p.get("planned") or not p.get("measured"):
            continue
        lines += ["", f"## {p['name']}: planned vs measured", "",
                  "| term | planned GiB | measured GiB | measured / planned |",
                  "|---|---:|---:|---:|"]
        for label, planned, measured in term_rows(p["planned"], p["measured"]):
            lines.append(f"| {label} | {_gib(planned)} | {_gib(measured)} | "
                         f"{_ratio(planned, measured)} |")
        seconds = {k: v.get("seconds") for k, v in p["measured"].get("phases", {}).items()}
        for part in ("calibration", "scoring"):
            if part in p["measured"].get("events", {}):
                seconds[f"autoquant.{part}"] = p["measured"]["events"][part].get("seconds")
        if seconds:
            lines += ["", "Seconds per phase: " + ", ".join(
                f"{k} {v:.1f}" for k, v in seconds.items() if v is not None) + "."]
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-smoke"))
    parser.add_argument("--skip-4b", action="store_true")
    parser.add_argument("--timeout", type=float, default=470.0, help="overall seconds")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device available to torch; run the GPU smoke test on a GPU host.",
              file=sys.stderr)
        return 2
    started, deadline = time.monotonic(), Deadline(args.timeout)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    phases: list[Phase] = []

    bench = Phase("bench_model")
    phases.append(bench)
    ensure_bench_model(bench, deadline)
    bench_plan = estimate(preset("bench_qwen3_vl"))["memory_gib"] if bench.status == "ok" else {}
    bench_estimate = bench_plan.get("peak")
    for pair in CUDA_PAIRS:
        phase = Phase(f"pair_{pair}", estimate_gib=bench_estimate)
        phases.append(phase)
        if bench.status != "ok":
            phase.detail = "no bench model"
            continue
        phase.planned = bench_plan
        run_job(phase, ["model=bench_qwen3_vl", f"model.path={BENCH_DIR}", "model.device=cuda",
                        f"quant_pair={pair}", "autoquant.reuse_scores=false"], out, deadline)
    phases.append(Phase("random_2b"))
    random_job(phases[-1], "qwen3_vl_2b", out, deadline)
    phases.append(Phase("random_4b"))
    if args.skip_4b:
        phases[-1].detail = "--skip-4b"
    else:
        random_job(phases[-1], "qwen3_vl_4b", out, deadline)
    code = write_reports(out, phases, started)
    print((out / "gpu-smoke.md").read_text())
    return code


if __name__ == "__main__":
    sys.exit(main())
