"""Per-stage time samples (seconds) and their percentiles for ``stats()`` / diagnostics, and
the process and worker-thread settings (thread priority, glibc malloc trimming).

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


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt (malloc.h)
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit


def keep_freed_memory(mib: int) -> bool:
    """glibc (Linux): keep up to ``mib`` MiB of freed heap memory mapped (``M_TRIM_THRESHOLD``,
    ``M_TOP_PAD``; process-wide) instead of returning it to the OS after every free, and serve
    allocations up to that size (at most 32 MiB) from the heap instead of a fresh ``mmap``
    (``M_MMAP_THRESHOLD``), so the tensors a frame allocates and frees reuse pages instead of
    page-faulting them in again: the tracker took ~1300 page faults per frame (~15 % of its
    time) without this, ~5 with it.  Elsewhere (no glibc) nothing is done.  True if applied."""
    if mib <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        nbytes = int(mib) << 20
        return all(libc.mallopt(p, v) == 1 for p, v in (
            (_M_TRIM_THRESHOLD, nbytes), (_M_TOP_PAD, nbytes),
            (_M_MMAP_THRESHOLD, min(nbytes, _MMAP_THRESHOLD_MAX))))
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
