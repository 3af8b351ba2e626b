"""``hydra/launcher=local_parallel``: a sweep's jobs in worker processes sized to the machine.

- Workers: ``hydra.launcher.n_jobs``, by default ``${local_parallel_workers:}``: one per visible
  GPU on a GPU host, else one per CPU core. Workers are hydra-joblib-launcher's loky processes;
  each runs several jobs in turn. (Hydra takes launchers from ``hydra_plugins`` only, so the
  default is a resolver, registered when Hydra instantiates ``WorkerSetup``, before the launcher.)
- Threads: when a worker's job starts, torch (and OpenMP / MKL) get ``cores // workers`` threads
  (at least 1), so workers x threads <= cores. On a busy 2-core machine two torch threads per
  process ran 33x slower than one.
- GPUs: the visible GPUs (``CUDA_VISIBLE_DEVICES``, else all that torch counts) are read once, by
  the sweep's own process, and shared out by worker slot: with W workers and G GPUs, slot i gets
  ``max(1, G // W)`` GPUs starting at GPU ``(i * share) % G`` (so one each when W = G, a pair each
  when W = G / 2, shared round robin when W > G). A worker claims the first free slot with a lock
  file in ``<sweep dir>/.worker-slots/`` when its first job starts, sets ``CUDA_VISIBLE_DEVICES``
  to its GPUs before anything touches CUDA, and keeps the slot until the process exits (the OS
  drops the lock then, so a replacement worker takes it over).

- Interruptions: SIGINT or SIGTERM to the sweep's process (Ctrl-C reaches the workers too) is
  passed on to the workers; each ends its running job as the project's signal handlers do (child
  run KILLED with error.txt, ``job_status.json``) and starts no other, and the sweep waits for
  that (at most ``GRACE_S``) before it ends the parent KILLED. Without the wait, joblib would
  SIGKILL workers mid-way and leave their child runs RUNNING.

Jobs nest under the sweep's parent run exactly as with the basic launcher: the parent's id
travels in the environment every worker inherits (``sweep.PARENT_ENV``), each job creates its own
child by explicit id, and each leaves ``job_status.json`` for the summary.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .. import signals
from ..sweep import STATUS_FILE
from ..tracking import Interrupted

log = logging.getLogger(__name__)

AUTO = "auto"
WORKERS_RESOLVER = "local_parallel_workers"
GPUS_ENV = "LAYER_SENSITIVITY_WORKER_GPUS"  # the GPUs the sweep shares out, read once ("" = none)
SLOT_DIR = ".worker-slots"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 30.0  # how long an interrupted sweep waits for its running jobs to record their end
WORKER_MARK = "popen_loky"  # in a loky worker's command line

_slot: FileLock | None = None  # this worker process's claimed slot, held for its lifetime
_gpus: list[str] = []  # the GPUs of that slot
_stopped_by: int | None = None  # the signal that stopped this worker: it starts no other job
_sweep_handlers: dict[int, Any] = {}  # the sweep process's handlers before on_multirun_start


def cores() -> int:
    """CPU cores this process may use (affinity and cgroup CPU quotas counted)."""
    import joblib

    return max(1, int(joblib.cpu_count()))


def visible_gpus() -> list[str]:
    """The GPUs to share out: ``GPUS_ENV`` when the sweep set it, else ``CUDA_VISIBLE_DEVICES``,
    else every GPU torch counts. Only the sweep's own process counts (it runs no job), so no
    worker initialises CUDA before its ``CUDA_VISIBLE_DEVICES`` is set."""
    for var in (GPUS_ENV, "CUDA_VISIBLE_DEVICES"):
        listed = os.environ.get(var)
        if listed is not None:
            return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch or no driver: a CPU host
        return []


def workers(n_jobs: int | str) -> int:
    """``auto``: one worker per visible GPU, else one per core; a number as given."""
    if str(n_jobs) == AUTO:
        return len(visible_gpus()) or cores()
    n = int(n_jobs)
    return cores() if n < 0 else max(1, n)  # joblib's -1: every core


def threads_per_worker(n_workers: int, threads: int | str = AUTO) -> int:
    return max(1, cores() // n_workers) if str(threads) == AUTO else max(1, int(threads))


def gpus_for_slot(gpus: list[str], n_workers: int, slot: int) -> list[str]:
    """Slot i's share of the GPUs (see the module docstring)."""
    if not gpus:
        return []
    share = max(1, len(gpus) // n_workers)
    start = (slot * share) % len(gpus)
    return gpus[start:start + share]


def claim_slot(slot_dir: Path, n_slots: int) -> tuple[int, FileLock]:
    """The first slot no live worker holds (the lock stays held while the returned lock lives)."""
    slot_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(n_slots):
        lock = FileLock(slot_dir / f"slot-{slot}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        return slot, lock
    raise RuntimeError(f"all {n_slots} worker slots in {slot_dir} are taken; more workers run "
                       "than hydra.launcher.n_jobs allows")


def setup_worker(n_workers: int, threads: int, slot_dir: Path) -> list[str]:
    """Size this process's threads and pin its GPUs (once per process); returns its GPUs."""
    global _slot, _gpus
    for var in THREAD_VARS:  # libraries (and subprocesses) that start their pools later
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
    gpus = visible_gpus()
    if gpus and _slot is None:
        slot, _slot = claim_slot(slot_dir, n_workers)
        _gpus = gpus_for_slot(gpus, n_workers, slot)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(_gpus)
    log.info("local_parallel worker pid %d: %d torch threads%s", os.getpid(), threads,
             f", GPU {','.join(_gpus)}" if _gpus else "")
    return _gpus


def _stop_this_worker(signum: int, frame: Any) -> None:
    """In a worker: end the running job as interrupted, once (Ctrl-C reaches a worker both from
    the terminal and from the sweep; a second Interrupted would cut its recording short)."""
    global _stopped_by
    if signals.in_finalizer(frame):  # raised there it would be lost: delivered again shortly
        signals.raise_interrupted(signum, frame)
        return
    _stopped_by = signum
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def running_jobs(sweep_dir: Path) -> list[Path]:
    """Job folders of the sweep whose job has not recorded its end yet."""
    if not sweep_dir.is_dir():
        return []
    return [d for d in sweep_dir.iterdir()
            if (d / ".hydra").is_dir() and not (d / STATUS_FILE).exists()]


def signal_workers(signum: int) -> int:
    """Pass ``signum`` on to this process's loky workers; how many there were."""
    import psutil

    sent = 0
    for child in psutil.Process().children():
        try:
            if WORKER_MARK in " ".join(child.cmdline()):
                child.send_signal(signum)
                sent += 1
        except psutil.Error:  # already gone
            continue
    return sent


def _stop_sweep(sweep_dir: Path) -> Callable[[int, Any], None]:
    """The sweep process's SIGINT / SIGTERM handler while its workers run jobs."""

    def handler(signum: int, frame: Any) -> None:
        for sig, previous in _sweep_handlers.items():  # a second Ctrl-C acts at once
            signal.signal(sig, previous)
        running = running_jobs(sweep_dir)
        sent = signal_workers(signum)
        log.warning("%s: stopping %d workers; waiting up to %.0f s for %d running jobs to record "
                    "their end", signal.Signals(signum).name, sent, GRACE_S, len(running))
        deadline = time.monotonic() + GRACE_S
        while any(not (d / STATUS_FILE).exists() for d in running) and time.monotonic() < deadline:
            time.sleep(0.2)
        raise Interrupted(signum)

    return handler


class WorkerSetup(Callback):
    """Threads and GPUs of each worker; configured by conf/hydra/launcher/local_parallel.yaml."""

    def __init__(self, threads: int | str = AUTO) -> None:
        self.threads = threads

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        gpus = visible_gpus()
        os.environ[GPUS_ENV] = ",".join(gpus)  # counted here once; every worker inherits it
        n = workers(config.hydra.launcher.n_jobs)
        log.info("local_parallel: %d workers x %d torch threads on %d cores%s", n,
                 threads_per_worker(n, self.threads), cores(),
                 f"; GPUs {','.join(gpus)} shared by worker slot" if gpus else "")
        if threading.current_thread() is threading.main_thread():
            handler = _stop_sweep(Path(str(config.hydra.sweep.dir)))
            for sig in STOP_SIGNALS:
                _sweep_handlers[sig] = signal.signal(sig, handler)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for sig, previous in _sweep_handlers.items():
            signal.signal(sig, previous)
        _sweep_handlers.clear()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _stopped_by is not None:  # interrupted: no new job (it stays NOT_STARTED)
            raise Interrupted(_stopped_by)
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                signal.signal(sig, _stop_this_worker)
        n = workers(config.hydra.launcher.n_jobs)
        setup_worker(n, threads_per_worker(n, self.threads),
                     Path(str(config.hydra.sweep.dir)) / SLOT_DIR)


OmegaConf.register_new_resolver(WORKERS_RESOLVER, lambda: workers(AUTO), replace=True)
