"""Per-stage time samples (seconds) and their percentiles for ``stats()`` / diagnostics, and
the worker threads' priority.

A :class:`StageTimes` keeps the last ``window`` samples of each named stage in a bounded
deque (appending is thread-safe); :meth:`StageTimes.percentiles` reports
``{prefix}{name}_p50_ms`` / ``_p95_ms`` for every stage that has samples.  Used for the
frame's way through the system (``latency_*``: from submit; ``stage_*``: each stage's own
time) and by the ROS node for what happens before submit.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import sys
import threading
import time
from typing import Deque, Dict, Iterable, Mapping

import numpy as np

log = logging.getLogger(__name__)


def percentiles_ms(prefix: str, samples: Mapping[str, Iterable[float]], window: int = 1000,
                   qs=(50, 95)) -> Dict[str, float]:
    """``{prefix}{name}_p{q}_ms`` of the newest ``window`` samples (seconds) of each series."""
    out: Dict[str, float] = {}
    for name, values in samples.items():
        if not values:
            continue
        arr = np.fromiter(itertools.islice(reversed(values), window), float)  # type: ignore[arg-type]
        for q, v in zip(qs, np.percentile(arr, qs)):
            out[f"{prefix}{name}_p{q}_ms"] = float(v * 1e3)
    return out


class StageTimes:
    """Bounded time series by stage name."""

    def __init__(self, names: Iterable[str], window: int = 1000):
        self.window = window
        self.series: Dict[str, Deque[float]] = {n: collections.deque(maxlen=window) for n in names}

    def __getitem__(self, name: str) -> Deque[float]:
        return self.series[name]

    def add(self, name: str, seconds: float) -> None:
        self.series[name].append(seconds)

    def items(self):
        return self.series.items()

    @contextlib.contextmanager
    def cpu(self, name: str):
        """``with times.cpu(name):`` adds the calling thread's CPU time spent in the block."""
        t0 = time.thread_time()
        try:
            yield
        finally:
            self.add(name, time.thread_time() - t0)

    def percentiles(self, prefix: str) -> Dict[str, float]:
        return percentiles_ms(prefix, self.series, self.window)


def lower_thread_priority(nice: int) -> bool:
    """Add ``nice`` to the calling thread's niceness (Linux: per thread, no privileges needed;
    elsewhere the call would change the whole process, so nothing is done).  True if applied."""
    if not sys.platform.startswith("linux") or nice <= 0:
        return False
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as e:
        log.warning("could not lower the priority of thread %s: %s", threading.current_thread().name, e)
        return False
    return True
