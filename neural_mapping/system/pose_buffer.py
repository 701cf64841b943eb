"""Time-bounded, sorted buffer of external poses with SE(3) interpolation.

Used by the ``external`` and ``external+refine`` pose sources: poses arrive
(ROS pose topic, dataset poses) at their own rate and out of step with the depth
frames; a frame's pose is interpolated between the two buffered poses that
bracket its stamp.  The buffer **never extrapolates**.

Query statuses (:meth:`PoseBuffer.query` returns ``PoseLookup(status, T)``,
which unpacks as ``status, T = buf.query(stamp)``; ``T`` is None unless ok):

``ok``       ``T`` interpolated (translation lerp, rotation slerp) between the
             neighbours, or the stored pose itself at an exact stamp
             (:func:`~neural_mapping.geometry.pose_at_stamp`).
``wait``     the stamp is newer than the newest pose (or nothing is buffered
             yet): a newer pose may still arrive, ask again later.
``too_old``  the stamp is older than the oldest kept pose: it can never be
             answered (the history was pruned or never covered it).
``gap``      only with ``max_gap_s``: the bracketing poses are further apart than
             that, interpolating across the hole is refused.
``expired``  only when ``now`` is passed: the answer would be ``wait`` but the
             frame has waited longer than ``wait_timeout_s``
             (``now - stamp > wait_timeout_s``), so give up on it.

Expiry policy.  A frame whose stamp is newer than the newest pose waits; it is
given up (expired) once ``now - stamp > wait_timeout_s``, where ``now`` is a time
on the *same clock as the stamps*: the ROS clock (``node.get_clock().now()``),
the newest sensor stamp seen, or for a wall-clock timeout measured from the
frame's arrival ``stamp + (monotonic() - arrival)``.  :meth:`is_expired` is the
predicate; :meth:`query` with ``now=`` folds it into the status.  The buffer
counts the frames it gives up on (``frame_drops['expired' | 'too_old' | 'gap']``)
each time a query returns that status, so callers should drop a frame the first
time they see one of those (not ask again).

Bad input.  :meth:`add` rejects (returns False, counted in ``drops`` by reason,
logged with a rate limit): non-finite stamps/values, malformed shapes,
quaternions whose norm is further than ``quat_norm_tol`` from 1 (small
deviations are normalised and accepted), 4x4 matrices that are not rigid
(``|R R^T - I|`` or ``|det R - 1|`` above ``rigid_tol``; accepted ones are
orthonormalised), and poses older than the kept window.  A pose with a stamp
already buffered replaces it (counted in ``replaced``).

Thread-safe: one lock around every method.
"""

from __future__ import annotations

import bisect
import collections
import logging
import math
import threading
from typing import Dict, List, NamedTuple, Optional

import numpy as np

from neural_mapping.geometry import (STAMP_AFTER, STAMP_BEFORE, STAMP_GAP, orthonormalize, pose_at_stamp,
                                     pose_from_tq)

log = logging.getLogger(__name__)

OK, WAIT, TOO_OLD, GAP, EXPIRED = "ok", "wait", "too_old", "gap", "expired"


class PoseLookup(NamedTuple):
    status: str
    T: Optional[np.ndarray]

    @property
    def ok(self) -> bool:
        return self.status == OK


class PoseBuffer:
    """Sorted ``(stamp, T_world_cam)`` history of at most ``max_age_s`` seconds (measured back
    from the newest stamp) and ``max_size`` entries.  See the module docstring."""

    def __init__(self, max_age_s: float = 10.0, max_size: int = 10000,
                 wait_timeout_s: float = 0.5, max_gap_s: Optional[float] = None,
                 quat_norm_tol: float = 0.1, rigid_tol: float = 1e-3):
        if not (max_age_s > 0):
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        if max_size < 2:
            raise ValueError(f"max_size must be >= 2, got {max_size}")
        if not (wait_timeout_s >= 0):
            raise ValueError(f"wait_timeout_s must be >= 0, got {wait_timeout_s}")
        self.max_age_s = float(max_age_s)
        self.max_size = int(max_size)
        self.wait_timeout_s = float(wait_timeout_s)
        self.max_gap_s = None if max_gap_s is None else float(max_gap_s)
        self.quat_norm_tol = float(quat_norm_tol)
        self.rigid_tol = float(rigid_tol)
        self._lock = threading.Lock()
        self._stamps: List[float] = []
        self._poses: List[np.ndarray] = []
        self.drops: Dict[str, int] = collections.Counter()  # rejected inputs by reason
        self.frame_drops: Dict[str, int] = collections.Counter()  # frames given up by reason
        self.accepted = 0
        self.replaced = 0
        self.normalized = 0  # quaternions accepted after normalising a small deviation
        self.pruned = 0

    # ------------------------------------------------------------------ input
    def add(self, stamp: float, pose) -> bool:
        """Add a pose: a 4x4 ``T_world_cam``, a pair ``(t, q)`` with ``q = (x, y, z, w)``, or a
        7-vector ``(tx, ty, tz, qx, qy, qz, qw)``.  False (counted, logged) if rejected."""
        try:
            stamp = float(stamp)
        except (TypeError, ValueError):
            return self._reject("bad_stamp", f"stamp {stamp!r} is not a number")
        if not math.isfinite(stamp):
            return self._reject("non_finite", f"stamp {stamp!r} is not finite")
        T, reason, msg = self._to_matrix(pose)
        if T is None:
            return self._reject(reason, msg)
        with self._lock:
            if self._stamps and stamp < self._stamps[-1] - self.max_age_s and stamp < self._stamps[0]:
                self.drops["too_old"] += 1
                self._log("too_old", f"pose at {stamp:.6f} is older than the kept window")
                return False
            i = bisect.bisect_left(self._stamps, stamp)
            if i < len(self._stamps) and self._stamps[i] == stamp:
                self._poses[i] = T
                self.replaced += 1
            else:
                self._stamps.insert(i, stamp)
                self._poses.insert(i, T)
            self.accepted += 1
            self._prune()
        return True

    def _to_matrix(self, pose):
        try:
            if isinstance(pose, (tuple, list)) and len(pose) == 2:
                t = np.asarray(pose[0], dtype=np.float64).reshape(-1)
                q = np.asarray(pose[1], dtype=np.float64).reshape(-1)
                if t.size != 3 or q.size != 4:
                    return None, "bad_shape", f"(t, q) must be 3 + 4 values, got {t.size} + {q.size}"
                return self._from_tq(t, q)
            a = np.asarray(pose, dtype=np.float64)
        except (TypeError, ValueError):
            return None, "bad_shape", f"pose {type(pose).__name__} is not numeric"
        if a.shape == (7,):
            return self._from_tq(a[:3], a[3:])
        if a.shape != (4, 4):
            return None, "bad_shape", f"pose must be 4x4, (t, q) or 7 values, got shape {a.shape}"
        if not np.all(np.isfinite(a)):
            return None, "non_finite", "pose has non-finite entries"
        if not np.allclose(a[3], [0, 0, 0, 1], atol=1e-9):
            return None, "not_rigid", f"pose last row is {a[3].tolist()}"
        R = a[:3, :3]
        err = max(np.abs(R @ R.T - np.eye(3)).max(), abs(np.linalg.det(R) - 1.0))
        if err > self.rigid_tol:
            return None, "not_rigid", f"rotation is not orthonormal (error {err:.2e})"
        return orthonormalize(a), None, None

    def _from_tq(self, t, q):
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(q))):
            return None, "non_finite", "pose has non-finite entries"
        n = float(np.linalg.norm(q))
        if abs(n - 1.0) > self.quat_norm_tol:
            return None, "bad_quaternion", f"quaternion norm {n:.4f} is far from 1"
        if abs(n - 1.0) > 1e-9:
            self.normalized += 1
        return pose_from_tq(t, q / n), None, None

    def _reject(self, reason: str, msg: str) -> bool:
        with self._lock:
            self.drops[reason] += 1
            self._log(reason, msg)
        return False

    def _log(self, reason: str, msg: str) -> None:
        n = self.drops[reason]
        if n == 1 or n % 100 == 0:
            log.warning("pose dropped (%s, %d so far): %s", reason, n, msg)

    def _prune(self) -> None:
        newest = self._stamps[-1]
        # Keep the newest pose at or before the window start, so that stamps right at the
        # window's edge can still be interpolated.
        cut = bisect.bisect_right(self._stamps, newest - self.max_age_s) - 1
        cut = max(cut, len(self._stamps) - self.max_size, 0)
        if cut > 0:
            del self._stamps[:cut]
            del self._poses[:cut]
            self.pruned += cut

    # ------------------------------------------------------------------ query
    def query(self, stamp: float, now: Optional[float] = None) -> PoseLookup:
        """Pose at ``stamp`` (never extrapolated); see the module docstring for the statuses.
        With ``now`` (same clock as the stamps) a ``wait`` past the timeout becomes ``expired``."""
        stamp = float(stamp)
        with self._lock:
            status, T = pose_at_stamp(self._stamps, self._poses, stamp, self.max_gap_s)
            if status == STAMP_AFTER:
                if now is not None and self._expired(stamp, now):
                    self.frame_drops[EXPIRED] += 1
                    return PoseLookup(EXPIRED, None)
                return PoseLookup(WAIT, None)
            if status == STAMP_BEFORE:
                self.frame_drops[TOO_OLD] += 1
                return PoseLookup(TOO_OLD, None)
            if status == STAMP_GAP:
                self.frame_drops[GAP] += 1
                return PoseLookup(GAP, None)
        return PoseLookup(OK, T)

    def _expired(self, stamp: float, now: float) -> bool:
        return float(now) - stamp > self.wait_timeout_s

    def is_expired(self, stamp: float, now: float) -> bool:
        """True when a frame at ``stamp`` should be given up at time ``now`` (same clock as the
        stamps): it can never be answered (older than the buffer), or it is still waiting for
        a newer pose and ``now - stamp > wait_timeout_s``.  Counts nothing."""
        stamp = float(stamp)
        with self._lock:
            if self._stamps and stamp < self._stamps[0]:
                return True
            if self._stamps and stamp <= self._stamps[-1]:
                return False
        return self._expired(stamp, now)

    # ------------------------------------------------------------------ state
    def __len__(self) -> int:
        with self._lock:
            return len(self._stamps)

    @property
    def oldest_stamp(self) -> Optional[float]:
        with self._lock:
            return self._stamps[0] if self._stamps else None

    @property
    def newest_stamp(self) -> Optional[float]:
        with self._lock:
            return self._stamps[-1] if self._stamps else None

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._poses.clear()

    def drop_newer_than(self, stamp: float) -> int:
        """Forget the poses stamped after ``stamp`` (a backward clock jump: they belong to the
        clock before it); returns how many."""
        with self._lock:
            i = bisect.bisect_right(self._stamps, float(stamp))
            n = len(self._stamps) - i
            del self._stamps[i:]
            del self._poses[i:]
            return n

    def drops_prefixed(self, prefix: str = "pose_") -> Dict[str, int]:
        """Counters for a stats dict: ``{pose_dropped_<reason>: n, pose_frames_<status>: n}``."""
        with self._lock:
            out = {f"{prefix}dropped_{k}": v for k, v in self.drops.items()}
            out.update({f"{prefix}frames_{k}": v for k, v in self.frame_drops.items()})
            out[f"{prefix}accepted"] = self.accepted
            out[f"{prefix}normalized"] = self.normalized
        return out
