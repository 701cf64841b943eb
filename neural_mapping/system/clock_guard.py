"""Stamps into the map in order: stale frames dropped, backward clock jumps detected.

The system integrates frames in the order they were submitted (FIFO queues; drop-oldest and
newest-first skipping keep the order), so a guard at the intake that only passes frames
newer than the last one passed makes sure nothing is integrated out of order: a frame whose
stamp is not newer than the last passed one is *stale* (dropped by the caller, counted), one
more than ``threshold_s`` older is a backward clock *jump* (a bag replayed with ``--loop``, a
simulator's time reset): the caller starts a new epoch (clears what waits, keeps or resets
the map) and the jump's frame is the new reference.  Pose stamps get their own guard: a jump
there clears the pose history (its poses belong to the other clock), see
:meth:`ClockGuard.check`.
"""

from __future__ import annotations

import math
from typing import Optional

OK, STALE, JUMP = "ok", "stale", "jump"


class ClockGuard:
    """Verdicts on a stream of stamps (seconds); see the module docstring."""

    def __init__(self, threshold_s: float, strict_order: bool = True):
        self.threshold_s = float(threshold_s)
        self.strict_order = strict_order  # False: equal/slightly older stamps pass (poses)
        self.last: Optional[float] = None
        self.jumps = 0

    def check(self, stamp: float) -> str:
        """``ok`` (and ``stamp`` becomes the last), ``stale`` or ``jump`` (``stamp`` becomes the
        last: a new epoch).  Non-finite stamps are ``stale``."""
        if not math.isfinite(stamp):
            return STALE
        last = self.last
        if last is not None and stamp < last - self.threshold_s:
            self.jumps += 1
            self.last = stamp
            return JUMP
        if last is not None and self.strict_order and stamp <= last:
            return STALE
        self.last = stamp if last is None else max(last, stamp)
        return OK

    def reset(self) -> None:
        self.last = None
