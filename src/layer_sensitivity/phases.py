"""Named phases of a task: each one's wall time, and the phase a task was in when it stopped."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class Phases:
    """Wall time of each named phase, and the phase a job was in when it stopped."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.current = ""

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.current, t = name, time.perf_counter()
        log.info("phase %s", name)
        yield
        self.seconds[name] = time.perf_counter() - t
