#!/usr/bin/env python
"""Driver of scripts/gpu_smoke.sh: timed GPU phases, measured peak memory next to the plan.

    python scripts/gpu_smoke.py [--out DIR] [--skip-4b] [--timeout SECONDS]

Every job is ``python -m layer_sensitivity ... tracking=none`` in a child process started through
this file (``--child``), which records ``torch.cuda.max_memory_allocated`` when the job ends. The
planner's estimate for the same model, batch and sequence length stands next to it. Installs
nothing; the bench model is generated locally when missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
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
PEAK_ENV = "GPU_SMOKE_PEAK_FILE"
MIN_PHASE_SECONDS = 20  # a phase that cannot get this much is skipped, not started


@dataclass
class Phase:
    name: str
    status: str = "skipped"  # ok | failed | timeout | skipped
    seconds: float = 0.0
    peak_gib: float | None = None  # measured, torch.cuda.max_memory_allocated
    estimate_gib: float | None = None  # planner.plan_model
    detail: str = ""
    log: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def child(argv: list[str]) -> None:
    """Run one ``python -m layer_sensitivity`` job in this process; record its peak GPU memory."""
    import torch

    code: int | str | None = 0
    sys.argv = ["layer_sensitivity", *argv]
    try:
        runpy.run_module("layer_sensitivity", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    finally:
        peak = torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else None
        Path(os.environ[PEAK_ENV]).write_text(json.dumps({"peak_gib": peak}))
    sys.exit(code)


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
    peak_file = out / "logs" / f"{phase.name}.peak.json"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *overrides,
           "tracking=none", f"hydra.run.dir={out / 'jobs' / phase.name}"]
    env = os.environ | {PEAK_ENV: str(peak_file), "LAYER_SENSITIVITY_CACHE_DIR": str(out / "cache")}
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
        phase.peak_gib = json.loads(peak_file.read_text())["peak_gib"]
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
    phase.extra = {"parameters": plan["parameters"], "groups_in_scope": plan["groups"]["in_scope"]}
    free = torch.cuda.mem_get_info()[0] / 1024**3
    if phase.estimate_gib > free:
        phase.detail = f"not started: estimate {phase.estimate_gib:.1f} GiB > free {free:.1f} GiB"
        return
    run_job(phase, [f"model={preset_name}", "model.init=random", "model.path=null",
                    "model.device=cuda", "model.dtype=bfloat16", "quant_pair=fp8",
                    "autoquant.method=gradient", "autoquant.reuse_scores=false",
                    f"autoquant.batch_size={BATCH}", f"dataset.calib_seq_len={SEQ_LEN}",
                    "dataset.size=small"], out, deadline)


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

    def gib(x: float | None) -> str:
        return "" if x is None else f"{x:.2f}"

    rows = [f"| {p.name} | {p.status} | {p.seconds:.1f} | {gib(p.peak_gib)} | {gib(p.estimate_gib)} "
            f"| {p.detail.replace('|', '/')} |" for p in phases]
    (out / "gpu-smoke.md").write_text("\n".join([
        f"# GPU smoke: {props.name} ({props.total_memory / 2**30:.0f} GiB)", "",
        f"torch {torch.__version__}, CUDA {torch.version.cuda}; jobs at batch {BATCH} x {SEQ_LEN} "
        f"tokens; total {doc['total_seconds']:.0f} s.", "",
        "| phase | status | seconds | peak GiB (measured) | peak GiB (planner) | detail |",
        "|---|---|---:|---:|---:|---|", *rows, ""]))
    required = [p for p in phases if p.name != "random_4b"]
    return 0 if all(p.status == "ok" for p in required) and all(
        p.status in ("ok", "skipped") for p in phases) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1:])
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
    bench_estimate = estimate(preset("bench_qwen3_vl"))["memory_gib"]["peak"] \
        if bench.status == "ok" else None
    for pair in CUDA_PAIRS:
        phase = Phase(f"pair_{pair}", estimate_gib=bench_estimate)
        phases.append(phase)
        if bench.status != "ok":
            phase.detail = "no bench model"
            continue
        run_job(phase, ["model=bench_qwen3_vl", f"model.path={BENCH_DIR}", "model.device=cuda",
                        f"quant_pair={pair}", "autoquant.reuse_scores=false",
                        f"autoquant.batch_size={BATCH}", f"dataset.calib_seq_len={SEQ_LEN}"],
                out, deadline)
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
