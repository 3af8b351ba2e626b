#!/usr/bin/env python
"""Run one ``python -m layer_sensitivity`` job in this process and record its memory per phase.

    python scripts/measure_job.py --report peaks.json -- model=qwen3_vl_2b model.init=random ...

Per pipeline phase (calibration_data, autoquant, solve, reports) and for the whole job: wall
seconds, peak resident set (Linux: VmHWM, reset at each phase start through
``/proc/self/clear_refs``) and, on CUDA, peak allocated and reserved bytes. ModelOpt calls
``torch.cuda.reset_peak_memory_stats()`` when scoring starts; that call is wrapped so the peak
before it is kept (the ``autoquant`` phase is also split there into ``calibration`` and
``scoring``), and the whole-job peaks are never reset. Right after the model is built the
resident set and allocated bytes are recorded (``model_loaded``: the weights).

Used by scripts/gpu_smoke.py (GPU jobs) and benchmarks/bench.py (the CPU real-shape row).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import runpy
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GIB = 1024**3


def rss_bytes(field: str = "VmRSS") -> int:
    """A ``/proc/self/status`` size (VmRSS now, VmHWM peak) in bytes; 0 where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_rss_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Recorder:
    """Peaks per phase and for the whole job; CUDA counters only when CUDA is in use."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        self.phases: dict[str, dict[str, float]] = {}
        self.events: dict[str, dict[str, float]] = {}
        self.job = {"rss_peak_gib": 0.0, "cuda_allocated_peak_gib": 0.0,
                    "cuda_reserved_peak_gib": 0.0}
        self.rss_resettable = reset_rss_peak()
        self._open: list[tuple[str, float]] = []  # phases running (name, start)
        self._carry = {"cuda_allocated_peak_gib": 0.0, "cuda_reserved_peak_gib": 0.0}
        self._original_reset = torch.cuda.reset_peak_memory_stats

    def now(self) -> dict[str, float]:
        """Peaks since the last reset (CUDA ones folded across ModelOpt's resets)."""
        out = {"rss_peak_gib": rss_bytes("VmHWM") / GIB, "rss_gib": rss_bytes() / GIB}
        if self.cuda:
            c = self.torch.cuda
            out["cuda_allocated_peak_gib"] = max(c.max_memory_allocated() / GIB,
                                                 self._carry["cuda_allocated_peak_gib"])
            out["cuda_reserved_peak_gib"] = max(c.max_memory_reserved() / GIB,
                                                self._carry["cuda_reserved_peak_gib"])
            out["cuda_allocated_gib"] = c.memory_allocated() / GIB
        return out

    def _fold_job(self, peaks: dict[str, float]) -> None:
        for k in self.job:
            self.job[k] = max(self.job[k], peaks.get(k, 0.0))

    def _reset(self) -> None:
        self._fold_job(self.now())
        if self.rss_resettable:
            reset_rss_peak()
        if self.cuda:
            self._original_reset()
        self._carry = {k: 0.0 for k in self._carry}

    def modelopt_reset(self, *args: Any, **kwargs: Any) -> None:
        """Stands in for torch.cuda.reset_peak_memory_stats while the job runs: ModelOpt's call
        at the start of scoring closes the ``calibration`` part of the autoquant phase."""
        peaks = self.now()
        self._fold_job(peaks)
        if self._open and self._open[-1][0] == "autoquant":
            self.events["calibration"] = peaks | {"seconds": time.perf_counter() - self._open[-1][1]}
            self._reset()
            self.events["scoring_start"] = self.now() | {"at": time.perf_counter()}
        else:  # another caller: keep the peaks across it
            for k in self._carry:
                self._carry[k] = max(self._carry[k], peaks.get(k, 0.0))
            self._original_reset(*args, **kwargs)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._reset()
        start = time.perf_counter()
        self._open.append((name, start))
        try:
            yield
        finally:
            self._open.pop()
            peaks = self.now()
            self._fold_job(peaks)
            self.phases[name] = peaks | {"seconds": time.perf_counter() - start}
            if name == "autoquant" and "scoring_start" in self.events:
                at = self.events.pop("scoring_start")["at"]
                self.events["scoring"] = peaks | {"seconds": time.perf_counter() - at}

    def model_loaded(self) -> None:
        self.events["model_loaded"] = self.now()

    def report(self) -> dict[str, Any]:
        self._fold_job(self.now())
        return {"phases": self.phases, "events": self.events, "job": self.job,
                "cuda": self.cuda, "rss_peak_resettable": self.rss_resettable}


def instrument(rec: Recorder) -> None:
    """Wrap the pipeline's phases, the model load and torch's peak reset (this process only)."""
    from layer_sensitivity import pipeline
    from layer_sensitivity.model import loader

    original_call = pipeline.Phases.__call__

    @contextlib.contextmanager
    def measured(self: Any, name: str) -> Iterator[None]:
        with rec.phase(name), original_call(self, name):
            yield

    pipeline.Phases.__call__ = measured  # type: ignore[method-assign]
    original_load = loader.load

    def load(*args: Any, **kwargs: Any) -> Any:
        loaded = original_load(*args, **kwargs)
        rec.model_loaded()
        return loaded

    loader.load = load  # type: ignore[assignment]
    rec.torch.cuda.reset_peak_memory_stats = rec.modelopt_reset  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, required=True, help="where the JSON goes")
    parser.add_argument("overrides", nargs="*", help="the job's Hydra overrides (after --)")
    args = parser.parse_args(argv)
    rec = Recorder()
    instrument(rec)
    code: int | str | None = 0
    sys.argv = ["layer_sensitivity", *args.overrides]
    try:
        runpy.run_module("layer_sensitivity", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    finally:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(rec.report(), indent=2) + "\n")
    return code if isinstance(code, int) else (0 if code is None else 1)


if __name__ == "__main__":
    sys.exit(main())
