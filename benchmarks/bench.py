#!/usr/bin/env python
"""What the pipeline's savings are worth, measured side by side on the `bench` model.

    python benchmarks/bench.py            # full run (about 20 minutes on 2 cores)
    python benchmarks/bench.py --quick    # smoke run of the harness on the tiny model (targets not enforced)
    python benchmarks/bench.py --out bench-results   # also writes bench-results/bench.{md,json}

Every measured thing is a fresh process (``python -m layer_sensitivity ...``, ``mlflow run ...``,
``benchmarks/bare_autoquant.py``) timed from start to exit; its peak RSS is the largest resident
set of that process or any process it waited for (``os.wait4``). Both sides of a row run one
after the other in this invocation. Everything goes to a temporary directory: an SQLite tracking
store (created before the first measurement, as a user's store already exists), score caches,
job outputs and logs. Score reuse is off except in the rerun row.

The model (``conf/model/bench_qwen3_vl.yaml``, ``.cache/bench-qwen3-vl``) is generated on first
use with ``scripts/make_tiny_qwen3vl.py --preset bench`` (deterministic, about a minute).

Exit status: 0 when every target holds, 1 when one is missed, 2 when a measurement failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(PYTHON).parent
BENCH_MODEL_DIR = REPO / ".cache" / "bench-qwen3-vl"
EXPERIMENT = "qwen3-vl-layer-sensitivity"  # conf/tracking/mlflow.yaml
FRONTIER = "[8,10,12,14]"
README_BEGIN, README_END = "<!-- bench:begin -->", "<!-- bench:end -->"


# Each measured command runs under this launcher, a bare interpreter of a few MB: ru_maxrss of a
# process counts the image it was forked from, so forking the command from this (pandas-laden)
# script would put a floor of this script's size under every peak RSS.
LAUNCHER = """
import os, sys, time
report, cmd = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as f:
    f.write(f"{time.perf_counter() - start} {usage.ru_maxrss}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


class MeasurementFailed(RuntimeError):
    pass


def _cpu_ticks_of_others() -> dict[int, int]:
    """CPU time (own + waited-for children, in clock ticks) of every process but this one."""
    ticks = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[int(entry)] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks


def other_cpu_seconds(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds that processes outside the measurement used between two samples."""
    delta = sum(t - before.get(pid, 0) for pid, t in after.items() if t >= before.get(pid, 0))
    return delta / os.sysconf("SC_CLK_TCK")


@dataclass
class Measured:
    seconds: float
    rss_mb: float
    out_dirs: list[Path] = field(default_factory=list)
    other_cpu_s: float = 0.0  # CPU used by unrelated processes meanwhile (noise)


@dataclass
class Row:
    comparison: str
    baseline: str
    candidate: str
    baseline_s: float
    candidate_s: float
    target: str  # shown in the table
    time_ok: Callable[[float], bool] | None
    baseline_rss_mb: float
    candidate_rss_mb: float
    rss_ok: Callable[[float], bool] | None = None
    extra: str = ""
    extra_ok: bool = True
    other_cpu_s: float = 0.0

    @property
    def ratio(self) -> float:
        return self.candidate_s / self.baseline_s

    @property
    def rss_ratio(self) -> float:
        return self.candidate_rss_mb / self.baseline_rss_mb

    @property
    def passed(self) -> bool | None:
        checks = [c for c in (self.time_ok, self.rss_ok) if c is not None]
        if not checks:
            return None
        return (all(c(r) for c, r in ((self.time_ok, self.ratio), (self.rss_ok, self.rss_ratio))
                    if c is not None) and self.extra_ok)

    def record(self) -> dict[str, Any]:
        return {
            "comparison": self.comparison,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "baseline s": round(self.baseline_s, 1),
            "candidate s": round(self.candidate_s, 1),
            "ratio": round(self.ratio, 3),
            "target": self.target,
            "peak RSS MB (baseline / candidate)": f"{self.baseline_rss_mb:.0f} / {self.candidate_rss_mb:.0f}",
            "RSS ratio": round(self.rss_ratio, 2),
            "extra": self.extra,
            "other CPU s": round(self.other_cpu_s),
            "result": {True: "pass", False: "FAIL", None: "info"}[self.passed],
        }


# --- Running and measuring ------------------------------------------------------------------


class Bench:
    def __init__(self, work: Path, model_overrides: list[str], size: str, sweep_sizes: str,
                 repeat: int) -> None:
        self.work = work
        self.model_overrides = model_overrides
        self.size = size
        self.sweep_sizes = sweep_sizes
        self.repeat = repeat
        self.store = f"sqlite:///{work / 'mlflow.db'}"
        self.env = dict(os.environ)
        self.env["PATH"] = f"{BIN}{os.pathsep}{self.env.get('PATH', '')}"  # mlflow run calls `python`
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "src"), *filter(None, [self.env.get("PYTHONPATH")])])
        self.env["MLFLOW_TRACKING_URI"] = self.store
        self.env.pop("MLFLOW_RUN_ID", None)
        self.env.pop("MLFLOW_EXPERIMENT_NAME", None)
        self.env.pop("MLFLOW_EXPERIMENT_ID", None)
        self._n = 0
        self.other_cpu_s = 0.0

    def _dir(self, kind: str, label: str) -> Path:
        self._n += 1
        return self.work / kind / f"{self._n:02d}-{re.sub(r'[^A-Za-z0-9]+', '-', label).strip('-')}"

    def run(self, label: str, cmds: list[list[str]], out_dirs: list[Path] | None = None) -> Measured:
        """Run ``cmds`` one after another; total wall time, the largest peak RSS among them."""
        total, rss = 0.0, 0.0
        before = _cpu_ticks_of_others()
        for i, cmd in enumerate(cmds):
            log = self._dir("logs", f"{label}-{i}").with_suffix(".log")
            log.parent.mkdir(parents=True, exist_ok=True)
            report = log.with_suffix(".usage")
            with log.open("w") as f:
                f.write(f"$ {shlex.join(cmd)}\n")
                f.flush()
                code = subprocess.call([PYTHON, "-S", "-c", LAUNCHER, str(report), *cmd], cwd=REPO,
                                       env=self.env, stdout=f, stderr=subprocess.STDOUT)
            if code != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
                raise MeasurementFailed(f"{label}: `{shlex.join(cmd)}` exited {code} "
                                        f"(log {log}):\n{tail}")
            seconds, maxrss_kib = report.read_text().split()
            total += float(seconds)
            rss = max(rss, int(maxrss_kib) / 1024)  # KiB on Linux
        other = other_cpu_seconds(before, _cpu_ticks_of_others())
        print(f"    {label}: {total:6.1f} s, peak RSS {rss:5.0f} MB, other processes "
              f"{other:.1f} CPU s", flush=True)
        return Measured(total, rss, out_dirs or [], other)

    def measure(self, label: str, make: Callable[[], tuple[list[list[str]], list[Path]]]) -> Measured:
        """``repeat`` runs (fresh outputs each); the median time and RSS, the last run's outputs."""
        runs = []
        for _ in range(self.repeat):
            cmds, dirs = make()
            runs.append(self.run(label, cmds, dirs))
        return Measured(statistics.median(r.seconds for r in runs),
                        statistics.median(r.rss_mb for r in runs), runs[-1].out_dirs,
                        sum(r.other_cpu_s for r in runs))

    def pair(self, label_a: str, make_a: Callable[[], tuple[list[list[str]], list[Path]]],
             label_b: str, make_b: Callable[[], tuple[list[list[str]], list[Path]]]
             ) -> tuple[Measured, Measured]:
        a, b = self.measure(label_a, make_a), self.measure(label_b, make_b)
        self.other_cpu_s = a.other_cpu_s + b.other_cpu_s  # read by the row builders
        return a, b

    # Commands ----------------------------------------------------------------------------------

    def job(self, label: str, *overrides: str, cache: Path | None = None,
            reuse: bool = False) -> tuple[list[list[str]], list[Path]]:
        """``python -m layer_sensitivity``, tracking on (the temporary store), like a user runs it."""
        out = self._dir("out", label)
        cache = cache or self._dir("cache", label)
        cmd = [PYTHON, "-m", "layer_sensitivity", *self.model_overrides,
               f"dataset.size={self.size}", f"autoquant.reuse_scores={str(reuse).lower()}",
               f"autoquant.score_cache_dir={cache}", f"hydra.run.dir={out}", *overrides]
        return [cmd], [out]

    def mlflow_separate(self, pairs: list[str], sizes: list[str]) -> tuple[list[list[str]], list[Path]]:
        cmds, outs = [], []
        for pair in pairs:
            for size in sizes:
                out = self._dir("out", f"sep-{pair}-{size}")
                overrides = [*self.model_overrides[1:], "autoquant.reuse_scores=false",
                             f"autoquant.score_cache_dir={self._dir('cache', 'sep')}",
                             f"hydra.run.dir={out}"]
                cmds.append([str(BIN / "mlflow"), "run", str(REPO), "-e", "sensitivity",
                             "-P", f"quant_pair={pair}", "-P", f"dataset_size={size}",
                             "-P", f"model={self.model_overrides[0].split('=', 1)[1]}",
                             "-P", f"overrides={' '.join(overrides)}",
                             "--env-manager", "local", "--experiment-name", EXPERIMENT])
                outs.append(out)
        return cmds, outs

    def mlflow_sweep(self, pairs: list[str], sizes: list[str]) -> tuple[list[list[str]], list[Path]]:
        out = self._dir("out", "sweep")
        overrides = [*self.model_overrides, "autoquant.reuse_scores=false",
                     f"autoquant.score_cache_dir={self._dir('cache', 'sweep')}",
                     f"hydra.sweep.dir={out}"]
        cmd = [str(BIN / "mlflow"), "run", str(REPO), "-e", "sweep",
               "-P", f"quant_pairs={','.join(pairs)}", "-P", f"dataset_sizes={','.join(sizes)}",
               "-P", f"overrides={' '.join(overrides)}",
               "--env-manager", "local", "--experiment-name", EXPERIMENT]
        return [cmd], [out]

    def multirun(self, label: str, pairs: list[str], sizes: list[str], *launcher: str,
                 threads: int | None = None) -> tuple[list[list[str]], list[Path]]:
        """``python -m layer_sensitivity -m`` over pairs x sizes (tracking on) with ``launcher``
        overrides; ``threads`` sets OMP/MKL threads for the whole command (None: inherited)."""
        out = self._dir("out", label)
        env = ["env", f"OMP_NUM_THREADS={threads}", f"MKL_NUM_THREADS={threads}"] if threads else []
        cmd = [*env, PYTHON, "-m", "layer_sensitivity", "-m", *self.model_overrides,
               f"quant_pair={','.join(pairs)}", f"dataset.size={','.join(sizes)}",
               "autoquant.reuse_scores=false", f"autoquant.score_cache_dir={self._dir('cache', label)}",
               f"hydra.sweep.dir={out}", *launcher]
        return [cmd], [out]

    def shared_sweep(self, label: str, pairs: list[str], share: bool
                     ) -> tuple[list[list[str]], list[Path]]:
        """A multirun over ``pairs`` at ``self.size`` with score reuse on (a fresh cache), the
        shared-scores pre-pass on or off: today's sweep and the shared one, same invocation."""
        out = self._dir("out", label)
        cmd = [PYTHON, "-m", "layer_sensitivity", "-m", *self.model_overrides,
               f"quant_pair={','.join(pairs)}", f"dataset.size={self.size}",
               "autoquant.reuse_scores=true", f"autoquant.score_cache_dir={self._dir('cache', label)}",
               f"hydra.callbacks.sweep_runs.share_scores={str(share).lower()}",
               f"hydra.sweep.dir={out}"]
        return [cmd], [out]

    def recipe(self, label: str, cache: Path, reuse: bool, *overrides: str
               ) -> tuple[list[list[str]], list[Path]]:
        """``python -m layer_sensitivity.cli.recipe --formats fp8,int4 --effective-bits 6``."""
        out = self._dir("out", label)
        cmd = [PYTHON, "-m", "layer_sensitivity.cli.recipe", "--formats", "fp8,int4",
               "--effective-bits", "6", *self.model_overrides, f"dataset.size={self.size}",
               f"autoquant.reuse_scores={str(reuse).lower()}", f"autoquant.score_cache_dir={cache}",
               f"hydra.run.dir={out}", *overrides]
        return [cmd], [out]

    def bare(self, model_dir: Path, samples: int) -> tuple[list[list[str]], list[Path]]:
        out = self._dir("out", "bare")
        out.mkdir(parents=True)
        cmd = [PYTHON, str(REPO / "benchmarks" / "bare_autoquant.py"), "--model", str(model_dir),
               "--samples", str(samples), "--scores", str(out / "scores.json")]
        return [cmd], [out]


# --- Reading results ------------------------------------------------------------------------


def manifest(out_dir: Path) -> dict[str, Any]:
    (path,) = out_dir.glob("*_quant_manifest.json")
    return json.loads(path.read_text())


def scores(doc: dict[str, Any]) -> dict[str, float]:
    return {h: float(s["importance"]) for h, s in doc["layer_sensitivity"].items()}


def spearman(a: dict[str, float], b: dict[str, float]) -> float:
    keys = sorted(set(a) & set(b))
    if len(keys) < 3 or len(keys) < 0.9 * max(len(a), len(b)):
        raise MeasurementFailed(f"score vectors do not match ({len(a)} vs {len(b)} groups, "
                                f"{len(keys)} shared)")
    frame = pd.DataFrame({"a": [a[k] for k in keys], "b": [b[k] for k in keys]})
    return float(frame.rank().corr().iloc[0, 1])


def _sweep_job_dirs(sweep_out: Path) -> dict[tuple[str, str], Path]:
    found = {}
    for d in sweep_out.iterdir():
        if d.is_dir() and list(d.glob("*_quant_manifest.json")):
            m = manifest(d)
            found[(m["quantization"]["pair"], m["dataset"]["size"])] = d
    return found


# --- The rows -------------------------------------------------------------------------------


def row_padding(b: Bench) -> Row:
    fixed, default = b.pair(
        "fixed padding to 512", lambda: b.job("fixed512", "dataset.pad_to_longest=false",
                                              "dataset.calib_seq_len=512"),
        "default (pad to longest)", lambda: b.job("default"))
    mf, md = manifest(fixed.out_dirs[0]), manifest(default.out_dirs[0])
    rho = spearman(scores(mf), scores(md))
    positions = f"{md['dataset']['padded_tokens']:,} vs {mf['dataset']['padded_tokens']:,} positions"
    return Row("1. padding: fixed 512 -> default", "fixed 512", "default", fixed.seconds,
               default.seconds, "<= 0.20 (>= 5x faster), Spearman >= 0.9",
               lambda r: r <= 0.2, fixed.rss_mb, default.rss_mb,
               extra=f"Spearman {rho:.4f}; {positions}", extra_ok=rho >= 0.9)


def row_rerun(b: Bench) -> Row:
    if b.repeat > 1:
        raise MeasurementFailed("--repeat > 1 would make every first run after the first a hit")
    cache = b._dir("cache", "rerun")
    first, again = b.pair("first run (scores stored)", lambda: b.job("first", cache=cache, reuse=True),
                          "identical rerun (scores reused)",
                          lambda: b.job("rerun", cache=cache, reuse=True))
    m1, m2 = manifest(first.out_dirs[0]), manifest(again.out_dirs[0])
    hit = (m1["score_cache"]["hit"], m2["score_cache"]["hit"])
    same = scores(m1) == scores(m2)
    return Row("2. score reuse: first run -> identical rerun", "first run", "rerun", first.seconds,
               again.seconds, "<= 0.20", lambda r: r <= 0.2, first.rss_mb, again.rss_mb,
               extra=f"cache hit {hit[0]} -> {hit[1]}; scores identical: {same}",
               extra_ok=hit == (False, True) and same)


def row_frontier(b: Bench) -> Row:
    one, four = b.pair("one bit target", lambda: b.job("one-target"),
                       f"frontier {FRONTIER}",
                       lambda: b.job("frontier", f"autoquant.effective_bits={FRONTIER}"))
    points = manifest(four.out_dirs[0]).get("frontier", [])
    achieved = "/".join(f"{p['achieved_bits']:.2f}" for p in points)
    ok = len(points) == 4 and all(p["satisfied"] for p in points)
    return Row("3. frontier: one target -> 4 targets", "1 target", "4 targets", one.seconds,
               four.seconds, "<= 1.30", lambda r: r <= 1.3, one.rss_mb, four.rss_mb,
               extra=f"achieved bits {achieved}", extra_ok=ok)


def row_sweep(b: Bench, pairs: list[str], sizes: list[str]) -> Row:
    sep, sweep = b.pair("4 x mlflow run -e sensitivity", lambda: b.mlflow_separate(pairs, sizes),
                        "1 x mlflow run -e sweep", lambda: b.mlflow_sweep(pairs, sizes))
    by_job = _sweep_job_dirs(sweep.out_dirs[0])
    rhos = []
    for d in sep.out_dirs:
        m = manifest(d)
        key = (m["quantization"]["pair"], m["dataset"]["size"])
        if key not in by_job:
            raise MeasurementFailed(f"the sweep has no job {key}: {sorted(by_job)}")
        rhos.append(spearman(scores(m), scores(manifest(by_job[key]))))
    jobs = len(pairs) * len(sizes)
    saved = (sep.seconds - sweep.seconds) / jobs
    return Row(f"4. {jobs} jobs ({','.join(pairs)} x {','.join(sizes)}): separate -> sweep",
               f"{jobs} mlflow runs", "1 sweep run", sep.seconds, sweep.seconds, "<= 0.60",
               lambda r: r <= 0.6, sep.rss_mb, sweep.rss_mb,
               extra=f"{saved:.1f} s saved per job; Spearman vs separate >= {min(rhos):.4f}",
               extra_ok=min(rhos) >= 0.99)


def row_overhead(b: Bench, model_dir: Path, samples: int) -> Row:
    bare, full = b.pair("bare load + mtq.auto_quantize", lambda: b.bare(model_dir, samples),
                        "full sensitivity job", lambda: b.job("full"))
    rho = spearman(json.loads((bare.out_dirs[0] / "scores.json").read_text()),
                   scores(manifest(full.out_dirs[0])))
    return Row("5. runner overhead: bare script -> full job", "bare script", "full job",
               bare.seconds, full.seconds, "<= 1.25, RSS <= 1.30", lambda r: r <= 1.25,
               bare.rss_mb, full.rss_mb, rss_ok=lambda r: r <= 1.3,
               extra=f"Spearman {rho:.4f}", extra_ok=rho >= 0.99)


def row_sorting(b: Bench) -> Row:
    default, ordered = b.pair("default (file order)", lambda: b.job("file-order"),
                              "sort_by_length", lambda: b.job("sorted", "dataset.sort_by_length=true"))
    md, ms = manifest(default.out_dirs[0]), manifest(ordered.out_dirs[0])
    rho = spearman(scores(md), scores(ms))
    return Row("6. sorting by length (info)", "file order", "sorted", default.seconds,
               ordered.seconds, "none (informational)", None, default.rss_mb, ordered.rss_mb,
               extra=(f"Spearman {rho:.4f}; {ms['dataset']['padded_tokens']:,} vs "
                      f"{md['dataset']['padded_tokens']:,} positions "
                      f"({md['dataset']['real_tokens']:,} real)"))


def row_parallel(b: Bench, pairs: list[str], sizes: list[str]) -> Row:
    """The same sweep in one process (all cores to each job in turn) and in 2 local_parallel
    workers (the cores split between them)."""
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // 2)
    seq, par = b.pair(
        f"sequential multirun (1 process x {cores} threads)",
        lambda: b.multirun("sequential", pairs, sizes, threads=cores),
        f"local_parallel (2 workers x {threads} threads)",
        lambda: b.multirun("parallel", pairs, sizes, "hydra/launcher=local_parallel",
                           "hydra.launcher.n_jobs=2", f"hydra.callbacks.worker_setup.threads={threads}"))
    a, c = _sweep_job_dirs(seq.out_dirs[0]), _sweep_job_dirs(par.out_dirs[0])
    jobs = len(pairs) * len(sizes)
    if len(a) != jobs or set(a) != set(c):
        raise MeasurementFailed(f"the sweeps ran different jobs: {sorted(a)} vs {sorted(c)}")
    rho = min(spearman(scores(manifest(a[k])), scores(manifest(c[k]))) for k in a)
    return Row(f"7. {jobs}-job sweep: sequential -> local_parallel (info)", f"1 x {cores} threads",
               f"2 workers x {threads}", seq.seconds, par.seconds, "none (informational)", None,
               seq.rss_mb, par.rss_mb, extra=f"Spearman vs sequential >= {rho:.4f}",
               extra_ok=rho >= 0.99)


def row_mixed(b: Bench) -> Row:
    """A mixed fp8,int4 recipe at 6 bits: one direct multi-format search against the same
    search composed from the two single-format analyses' stored scores (run first, not timed)."""
    cache = b._dir("cache", "mixed")
    b.run("setup: fp8 and int4 analyses (scores stored)",
          [*b.job("single-fp8", "quant_pair=fp8", cache=cache, reuse=True)[0],
           *b.job("single-int4", "quant_pair=int4", cache=cache, reuse=True)[0]])
    direct, composed = b.pair("direct multi-format search",
                              lambda: b.recipe("direct", b._dir("cache", "direct"), False),
                              "composed from stored scores", lambda: b.recipe("composed", cache, True))
    md, mc = manifest(direct.out_dirs[0]), manifest(composed.out_dirs[0])
    same = md["frontier"][0]["recipe"] == mc["frontier"][0]["recipe"]
    ok = mc["mixed"]["composed"] and bool(mc["score_cache"]["hit"]) and same
    return Row("8. mixed fp8,int4 at 6 bits: direct -> composed", "direct search", "composed",
               direct.seconds, composed.seconds, "<= 0.20", lambda r: r <= 0.2, direct.rss_mb,
               composed.rss_mb, extra=(f"composed {mc['mixed']['composed']}; same choice per group: "
                                       f"{same}; achieved {mc['frontier'][0]['achieved_bits']:.3f} "
                                       "bits"), extra_ok=ok)


def _phase_seconds(job_dir: Path, phase: str) -> float:
    """Seconds from a phase's start to the next phase's, from the job's log timestamps."""
    stamps = []
    for log in job_dir.glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            m = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\].* - phase (\w+)$", line)
            if m:
                stamps.append((dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), m.group(2)))
    for (t0, name), (t1, _) in zip(stamps, stamps[1:], strict=False):
        if name == phase:
            return (t1 - t0).total_seconds()
    return float("nan")


def row_shared(b: Bench, pairs: list[str]) -> Row:
    """A sweep over ``pairs`` at one size: one search per pair (today) against one shared search
    split into every pair's scores (the sweep callback's pre-pass); per-group scores compared."""
    alone, shared = b.pair(f"sweep, {len(pairs)} searches", lambda: b.shared_sweep(
                               "per-pair", pairs, share=False),
                           "sweep, one shared search",
                           lambda: b.shared_sweep("shared", pairs, share=True))
    a, c = _sweep_job_dirs(alone.out_dirs[0]), _sweep_job_dirs(shared.out_dirs[0])
    if len(a) != len(pairs) or set(a) != set(c):
        raise MeasurementFailed(f"the sweeps ran different jobs: {sorted(a)} vs {sorted(c)}")
    exact = worst = 0.0
    for k in a:
        sa, sc = scores(manifest(a[k])), scores(manifest(c[k]))
        exact += sa == sc
        worst = max([worst, *(abs(sa[h] - sc[h]) / max(abs(sa[h]), 1e-30) for h in sa)])
    hits = sum(bool(manifest(d)["score_cache"]["hit"]) for d in c.values())
    searches = sum(_phase_seconds(d, "autoquant") for d in a.values())
    shared_file = shared.out_dirs[0] / "shared_scores.json"
    one = json.loads(shared_file.read_text())["seconds"] if shared_file.is_file() else float("nan")
    return Row(f"9. {len(pairs)}-pair sweep at {b.size}: a search per pair -> one shared search",
               f"{len(pairs)} searches", "1 shared", alone.seconds, shared.seconds, "<= 0.40",
               lambda r: r <= 0.4, alone.rss_mb, shared.rss_mb,
               extra=(f"scores identical in {exact:.0f} of {len(pairs)} jobs (max rel. diff "
                      f"{worst:.1g}); {hits} of {len(pairs)} jobs hit the shared scores; scoring "
                      f"alone {searches:.1f} s (the jobs' autoquant phases) -> {one:.1f} s (the "
                      f"pre-pass) = {one / searches:.2f}"),
               extra_ok=exact == len(pairs) and hits == len(pairs))


REAL_SHAPE = ["model=qwen3_vl_2b", "model.init=random", "model.device=cpu", "quant_pair=fp8",
              "autoquant.method=gradient", "autoquant.batch_size=1", "dataset.max_calib_samples=3",
              "dataset.pad_to_longest=false", "dataset.calib_seq_len=128"]


def row_real_shape(b: Bench) -> Row:
    """Qwen3-VL-2B's real shape (random weights, fp32) as one CPU job: 3 batches of 1 x 128 tokens
    (fixed padding), gradient scoring; the planner's CPU estimate (a dry run of the same job)
    against the job's measured peak RSS (scripts/measure_job.py: per phase too). Opt-in (about
    12 GB of memory and several minutes): --rows 10."""
    cache = b._dir("cache", "real-shape")
    plan_dir, out = b._dir("out", "real-shape-plan"), b._dir("out", "real-shape")
    peaks = out.with_name(out.name + "-peaks.json")
    common = [*REAL_SHAPE, f"autoquant.score_cache_dir={cache}"]
    planned = b.run("planner (dry run)", [[PYTHON, "-m", "layer_sensitivity", *common,
                                           "runner.dry_run=true", "tracking=none",
                                           f"hydra.run.dir={plan_dir}"]])
    plan = json.loads((plan_dir / "plan.json").read_text())
    measured = b.run("2B random-init job", [[PYTHON, str(REPO / "scripts" / "measure_job.py"),
                                            "--report", str(peaks), "--", *common,
                                            "autoquant.reuse_scores=false",
                                            f"hydra.run.dir={out}"]])
    b.other_cpu_s = planned.other_cpu_s + measured.other_cpu_s
    report = json.loads(peaks.read_text())
    planned_mb = plan["memory_gib"]["peak"] * 1024
    phases = "; ".join(f"{k} {v['seconds']:.0f} s / {v['rss_peak_gib']:.2f} GiB"
                       for k, v in report["phases"].items())
    loaded = report["events"].get("model_loaded", {}).get("rss_gib")
    return Row("10. Qwen3-VL-2B shape on CPU (random init, fp32, 3 x 1 x 128 tokens): planned -> "
               "measured peak RSS", "planner (CPU mode)", "measured job", planned.seconds,
               measured.seconds, "peak RSS within 20% of plan", None, planned_mb,
               measured.rss_mb, rss_ok=lambda r: 0.8 <= r <= 1.2,
               extra=(f"per phase (seconds / peak RSS): {phases}; RSS after the model was built "
                      f"{loaded:.2f} GiB (planned process + weights "
                      f"{plan['memory_gib']['process'] + plan['memory_gib']['weights']:.2f})"))


# --- Setup and facts ------------------------------------------------------------------------


# The generator's main(), in a child process: torch stays out of this one (see LAUNCHER).
GENERATE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("make_tiny_qwen3vl", sys.argv[1])
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)
preset = gen.PRESETS["bench"]
if sys.argv[2] == "--preset-only":
    print(json.dumps(dict(architecture=dict(preset["text"], vision=preset["vision"]),
                          steps=preset["steps"])))
else:
    gen.main(["--preset", "bench", "--out", sys.argv[2], "--steps", str(preset["steps"])])
"""


def _generator(arg: str, capture: bool) -> str:
    proc = subprocess.run([PYTHON, "-W", "ignore", "-c", GENERATE,
                           str(REPO / "scripts" / "make_tiny_qwen3vl.py"), arg],
                          check=True, text=True, stdout=subprocess.PIPE if capture else None)
    return proc.stdout or ""


def ensure_bench_model(model_dir: Path) -> dict[str, Any]:
    """Generate the bench checkpoint unless one made with the current preset is there."""
    preset = json.loads(_generator("--preset-only", capture=True).strip().splitlines()[-1])
    report_file = model_dir / "training_report.json"
    if report_file.is_file():
        report = json.loads(report_file.read_text())
        if (report.get("architecture"), report.get("steps")) == (preset["architecture"],
                                                                 preset["steps"]):
            return report
        print(f"{model_dir} was made with another bench preset; regenerating", flush=True)
    print(f"generating the bench model in {model_dir} (once; about a minute)", flush=True)
    tmp = model_dir.with_name(model_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    _generator(str(tmp), capture=False)
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.replace(model_dir)
    return json.loads(report_file.read_text())


FACTS_SCRIPT = """
import json, os, platform, sys
import torch, transformers, mlflow, hydra
import modelopt, modelopt.torch.quantization
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                  "transformers": transformers.__version__, "modelopt": modelopt.__version__,
                  "mlflow": mlflow.__version__, "hydra": hydra.__version__,
                  "torch_threads": torch.get_num_threads()}))
"""


def machine_facts(b: Bench) -> dict[str, Any]:
    """Versions and torch's thread count as a job sees them (this also warms the file cache)."""
    out = subprocess.run([PYTHON, "-W", "ignore", "-c", FACTS_SCRIPT], env=b.env, check=True,
                         capture_output=True, text=True).stdout
    facts = json.loads(out.strip().splitlines()[-1])
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "cpu": cpu,
            "cores": len(os.sched_getaffinity(0)), "memory_gb": round(mem_gb), **facts,
            "platform": platform.platform()}


def init_store(b: Bench) -> None:
    """Create the tracking store and experiment (artifacts in the work dir) before measuring."""
    code = (f"import mlflow; mlflow.set_tracking_uri({b.store!r}); "
            f"mlflow.create_experiment({EXPERIMENT!r}, "
            f"artifact_location={(b.work / 'artifacts').as_uri()!r})")
    subprocess.run([PYTHON, "-W", "ignore", "-c", code], env=b.env, check=True,
                   capture_output=True)


def header(facts: dict[str, Any], setup: dict[str, Any]) -> str:
    return (
        f"Machine: {facts['cpu']}, {facts['cores']} cores, {facts['memory_gb']} GB; torch threads "
        f"{facts['torch_threads']}; Python {facts['python']}, torch {facts['torch']}, transformers "
        f"{facts['transformers']}, modelopt {facts['modelopt']}, mlflow {facts['mlflow']}, hydra "
        f"{facts['hydra']}; {facts['date']}.\n"
        f"Model: {setup['model']}. Data: {setup['data']}. Jobs: {setup['jobs']}."
    )


def render(rows: list[Row], facts: dict[str, Any], setup: dict[str, Any], total_s: float) -> str:
    table = pd.DataFrame([r.record() for r in rows]).to_markdown(index=False)
    return f"{header(facts, setup)}\n\n{table}\n\nBenchmark wall time: {total_s / 60:.1f} min.\n"


def update_readme(path: Path, text: str) -> None:
    content = path.read_text()
    if README_BEGIN not in content or README_END not in content:
        raise SystemExit(f"{path} has no {README_BEGIN} ... {README_END} markers")
    before, rest = content.split(README_BEGIN, 1)
    _, after = rest.split(README_END, 1)
    path.write_text(f"{before}{README_BEGIN}\n{text}{README_END}{after}")


# --- Main -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run on the embedded tiny model and small captions (minutes); "
                        "targets are shown but not enforced")
    p.add_argument("--out", type=Path, default=None, help="also write bench.md and bench.json here")
    p.add_argument("--readme", type=Path, default=None,
                   help="write the table between the bench markers of this README")
    p.add_argument("--work", type=Path, default=None,
                   help="working directory (default: a temporary one, removed unless --keep)")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.add_argument("--model-dir", type=Path, default=BENCH_MODEL_DIR)
    p.add_argument("--size", default=None,
                   help="dataset.size of rows 1-3, 5, 6, 9 (default: large)")
    p.add_argument("--sweep-pairs", default="fp8,int8")
    p.add_argument("--sweep-sizes", default="small,medium")
    p.add_argument("--shared-pairs", default="fp8,int8,int4,w4a8",
                   help="pairs of row 9 (shared scores); e.g. the 10 CPU pairs")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per measurement, median taken (rerun row: 1 only)")
    p.add_argument("--rows", default="1,2,3,4,5,6,7,8,9",
                   help="which rows, e.g. 1,5; row 10 (2B shape on CPU, ~12 GB) only when named")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    wanted = {int(r) for r in args.rows.split(",")}
    if args.quick:
        model_dir = REPO / "src" / "layer_sensitivity" / "assets" / "tiny-qwen3-vl"
        model_overrides = ["model=tiny_qwen3_vl"]
        size = args.size or "small"
        model_desc = "embedded tiny-qwen3-vl (quick smoke run)"
    elif wanted <= {10}:  # the real-shape row needs no bench model
        model_dir, model_overrides = args.model_dir.resolve(), ["model=bench_qwen3_vl"]
        size = args.size or "large"
        model_desc = "Qwen3-VL-2B shape, random init (row 10 only)"
    else:
        model_dir = args.model_dir.resolve()
        report = ensure_bench_model(model_dir)
        model_overrides = ["model=bench_qwen3_vl"]
        if model_dir != BENCH_MODEL_DIR:
            model_overrides.append(f"model.path={model_dir}")
        size = args.size or "large"
        params = report["params"]
        model_desc = (f"bench-qwen3-vl ({report['architecture']['num_hidden_layers']} layers, hidden "
                      f"{report['architecture']['hidden_size']}, "
                      f"{params['language_model'] / 1e6:.1f} M LM + {params['vision'] / 1e6:.1f} M "
                      f"vision parameters, {report['steps']} training steps, fp32 on CPU)")

    started = time.perf_counter()  # after generating the model: that happens once
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="layer-sens-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    b = Bench(work, model_overrides, size, args.sweep_sizes, args.repeat)
    sizes = {"small": 16, "medium": 128, "large": 512}
    samples = sizes[size]
    pairs, sweep_sizes = args.sweep_pairs.split(","), args.sweep_sizes.split(",")
    setup = {
        "model": model_desc,
        "data": f"bundled captions, dataset.size={size} ({samples} captions, batch 4, "
                f"calib_seq_len 128)",
        "jobs": (f"quant_pair=fp8, gradient, tracking on (SQLite), reuse_scores=false except row 2; "
                 f"rows 4, 7: {' x '.join([args.sweep_pairs, args.sweep_sizes])}; "
                 f"{args.repeat} run(s) per measurement"),
    }
    print(f"work dir {work}", flush=True)
    facts = machine_facts(b)
    init_store(b)
    print(header(facts, setup), flush=True)

    makers: list[tuple[int, Callable[[], Row]]] = [
        (1, lambda: row_padding(b)),
        (2, lambda: row_rerun(b)),
        (3, lambda: row_frontier(b)),
        (4, lambda: row_sweep(b, pairs, sweep_sizes)),
        (5, lambda: row_overhead(b, model_dir, samples)),
        (6, lambda: row_sorting(b)),
        (7, lambda: row_parallel(b, pairs, sweep_sizes)),
        (8, lambda: row_mixed(b)),
        (9, lambda: row_shared(b, args.shared_pairs.split(","))),
        (10, lambda: row_real_shape(b)),
    ]
    rows = []
    try:
        for num, make in makers:
            if num in wanted:
                print(f"row {num}", flush=True)
                row = make()
                row.other_cpu_s = b.other_cpu_s
                rows.append(row)
    except MeasurementFailed as e:
        print(f"error: {e}\n(work dir kept: {work})", file=sys.stderr)
        return 2
    total = time.perf_counter() - started
    text = render(rows, facts, setup, total)
    print()
    print(text)

    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench.md").write_text(text)
        (args.out / "bench.json").write_text(json.dumps({
            "facts": facts, "setup": setup, "wall_seconds": round(total, 1),
            "rows": [r.record() | {"baseline_s": r.baseline_s, "candidate_s": r.candidate_s,
                                   "rss_ratio": r.rss_ratio}
                     for r in rows],
        }, indent=2) + "\n")
    if args.readme:
        update_readme(args.readme, text)
    if not (args.keep or args.work):
        shutil.rmtree(work, ignore_errors=True)

    noisy = [r.comparison.split(".")[0] for r in rows
             if r.other_cpu_s > 0.05 * (r.baseline_s + r.candidate_s)]
    if noisy:
        print(f"warning: other processes used CPU during row(s) {', '.join(noisy)} (column 'other "
              "CPU s'); their times are not reliable. Rerun on a quiet machine.", file=sys.stderr)
    missed = [r.comparison for r in rows if r.passed is False]
    if missed and args.quick:
        print(f"(quick run: targets not enforced; missed: {'; '.join(missed)})")
        return 0
    if missed:
        print(f"targets missed: {'; '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
