"""SIGINT / SIGTERM as an ``Interrupted`` exception, raised only where it cannot be lost.

Python runs a signal handler between bytecodes of the main thread, wherever that is. Two places
lose an exception raised there:

- a finalizer (``__del__``, e.g. one run by the garbage collector while transformers loads a
  model): Python prints "Exception ignored in ... __del__" and goes on, so Ctrl-C during a model
  load was swallowed and the job ran to FINISHED. The handler sees the ``__del__`` frame, raises
  nothing there and sends the signal again a moment later, when the finalizer is done.
- any other place Python calls code whose exceptions it cannot propagate: a weakref callback
  (seen: ``ThreadPoolExecutor``'s, while ``import torch`` ran), a GC callback. Python hands such
  an exception to ``sys.unraisablehook`` and goes on; ``redeliver_swallowed`` installs a hook that
  sends the signal again a moment later instead, so it is raised where it propagates.
- the end of a run (stopping system metrics, writing error.txt, setting the status): an exception
  there skips ending the run, which stays RUNNING. ``deferred()`` records signals while a run
  ends; the caller ends it KILLED and raises afterwards.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from .tracking.base import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RETRY_S = 0.05  # how soon a signal that arrived inside a finalizer is delivered again


def in_finalizer(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def raise_interrupted(signum: int, frame: FrameType | None) -> None:
    """The handler: ``Interrupted(signum)`` now, or shortly when ``frame`` is in a finalizer."""
    if in_finalizer(frame):
        timer = threading.Timer(RETRY_S, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()
        return
    raise Interrupted(signum)


def redeliver_swallowed() -> None:
    """An ``Interrupted`` Python had to drop (see the module doc) is delivered again shortly;
    everything else goes to the hook that was there before."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        if isinstance(error, Interrupted):
            timer = threading.Timer(RETRY_S, os.kill, (os.getpid(), error.signum))
            timer.daemon = True
            timer.start()
            return
        previous(unraisable)

    if getattr(previous, "__qualname__", "") != hook.__qualname__:  # once per process
        sys.unraisablehook = hook


def is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def deferred() -> Iterator[list[int]]:
    """Within the block SIGINT / SIGTERM are only recorded (in the yielded list); the previous
    handlers come back when it ends. Off the main thread (no signals there) it does nothing."""
    pending: list[int] = []
    if not is_main_thread():
        yield pending
        return

    def record(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    previous = {sig: signal.signal(sig, record) for sig in STOP_SIGNALS}
    try:
        yield pending
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
