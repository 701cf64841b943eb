"""External poses for the tracking thread: interpolated at a frame's stamp, waited for, never
extrapolated.

Poses come from :meth:`ExternalPoses.add` (a pose topic, odometry, a dataset loop calling
``MappingSystem.submit_pose``) into a bounded :class:`~neural_mapping.system.pose_buffer.PoseBuffer`.
A frame newer than the newest pose waits (on a condition, no polling) up to
``pose_wait_timeout_s`` for a newer one, then expires.  As long as no pose was ever added, a
frame that carries its own ``pose`` uses it (library loops over datasets).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional, Tuple

import numpy as np

from neural_mapping.system.pose_buffer import PoseBuffer
from neural_mapping.types import RGBDFrame


class ExternalPoses:
    def __init__(self, buffer_s: float, count: Callable[[str], None]):
        self.buffer = PoseBuffer(max_age_s=buffer_s)
        self._count = count
        self._cond = threading.Condition()
        self._added = False
        self._closed = False

    def add(self, stamp: float, T_world_cam) -> bool:
        """Add a pose (camera-to-world) at ``stamp`` s; a bad one is dropped (counted by reason)."""
        self._added = True
        ok = self.buffer.add(stamp, T_world_cam)
        if not ok:
            self._count("dropped_bad_pose")
        with self._cond:
            self._cond.notify_all()
        return ok

    def close(self) -> None:
        """Release every waiting frame (it expires)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def pose_for(self, frame: RGBDFrame, timeout_s: float) -> Optional[np.ndarray]:
        """The external pose at ``frame``'s stamp, or None (counted: ``dropped_pose_<reason>``)."""
        if frame.pose is not None and not self._added:
            return np.asarray(frame.pose, dtype=np.float64)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                status, T = self.buffer.query(frame.timestamp)
                if status == "ok":
                    return T
                if status != "wait":
                    self._count(f"dropped_pose_{status}")
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    self._count("dropped_pose_expired")
                    return None
                self._cond.wait(remaining)

    def query(self, stamp: float) -> Tuple[str, Optional[np.ndarray]]:
        return self.buffer.query(stamp)
