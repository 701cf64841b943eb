"""Where each frame's pose comes from: external, track or external+refine.

:class:`PosePolicy` owns everything that decides a pose and remembers between frames:
the constant-velocity motion model, the count of consecutive tracking failures ("lost"),
and the map->odom correction of ``external+refine`` with its low-pass.  The tracker it
calls is stateless (:class:`~neural_mapping.tracking.tracker.Tracker`).

=================  ===========================================================================
``external``       the external pose at the frame's stamp, as is (status ``external``)
``track``          ICP against the model view, initial guess from constant velocity
                   (``tracked``; the first frame of an empty map is ``initial`` at the last
                   pose or the identity)
``external+refine`` ICP with the corrected external pose as initial guess; the correction
                   ``T_tracked @ inv(T_external)`` (map->odom) follows the tracker through a
                   first-order low-pass with ``refine_time_constant_s`` (``refined``)
=================  ===========================================================================

A failed track (``failed``, or ``lost`` after ``lost_after_failures`` in a row) returns
``ok=False``: the frame must not be integrated; its pose is the best guess (external pose,
else the last good one).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from neural_mapping.config import MappingConfig
from neural_mapping.geometry import interpolate_pose, inv_pose
from neural_mapping.types import RGBDFrame

log = logging.getLogger(__name__)


@dataclass
class PoseResult:
    index: int
    stamp: float
    T_world_cam: np.ndarray
    status: str  # external | tracked | refined | initial | failed | lost
    ok: bool
    T_correction: Optional[np.ndarray] = None  # refined @ inv(external) (map->odom for refine)
    latency_s: float = 0.0
    info: dict = field(default_factory=dict)


class PosePolicy:
    def __init__(self, config: MappingConfig, tracker=None):
        self.source = config.run.pose_source
        self.tracking_config = config.tracking
        self.system_config = config.system
        if self.source != "external" and tracker is None:
            raise ValueError(f"pose_source {self.source!r} needs a tracker")
        self.tracker = tracker
        self.reset()

    def reset(self) -> None:
        self.last_T: Optional[np.ndarray] = None
        self.prev_T: Optional[np.ndarray] = None
        self.correction = np.eye(4)
        self.refine_stamp: Optional[float] = None
        self.consecutive_failures = 0
        self.track_time_s = 0.0  # ICP time of the last estimate (0 when none ran)

    @property
    def lost(self) -> bool:
        return self.consecutive_failures >= self.system_config.lost_after_failures

    def estimate(self, frame: RGBDFrame, T_external: Optional[np.ndarray], model) -> PoseResult:
        """The pose of ``frame``.  ``T_external``: its external pose (external modes);
        ``model``: the model view to track against (None: empty map).  Updates the motion
        model, failure count and correction."""
        self.track_time_s = 0.0
        if self.source == "external":
            return self._accept(PoseResult(frame.index, frame.timestamp, T_external, "external", True))
        if model is None:  # empty map: the first frame defines (or takes) the pose
            T0 = T_external if T_external is not None else (
                self.last_T if self.last_T is not None else np.eye(4))
            return self._accept(PoseResult(frame.index, frame.timestamp, T0, "initial", True,
                                           T_correction=np.eye(4) if T_external is not None else None))
        T_init = self._initial_guess(T_external, model)
        t0 = time.perf_counter()
        tr = self.tracker.track(frame, model, T_init)
        self.track_time_s = time.perf_counter() - t0
        if tr.ok:
            self.consecutive_failures = 0
            if T_external is None:
                return self._accept(PoseResult(frame.index, frame.timestamp, tr.T_world_cam, "tracked",
                                               True, info=tr.info()))
            corr = self._filter_correction(tr.T_world_cam @ inv_pose(T_external), frame.timestamp)
            return self._accept(PoseResult(frame.index, frame.timestamp, corr @ T_external, "refined",
                                           True, T_correction=corr, info=tr.info()))
        self.consecutive_failures += 1
        lost_after = self.system_config.lost_after_failures
        if self.consecutive_failures == lost_after:
            log.warning("tracking lost after %d consecutive failures (last: %s)",
                        self.consecutive_failures, tr.reason)
        fallback = T_external if T_external is not None else (
            self.last_T if self.last_T is not None else T_init)
        return PoseResult(frame.index, frame.timestamp, fallback, "lost" if self.lost else "failed",
                          False, info=tr.info())

    def _initial_guess(self, T_external: Optional[np.ndarray], model) -> np.ndarray:
        if T_external is not None:
            return self.correction @ T_external
        if self.last_T is not None and self.prev_T is not None:
            return self.last_T @ (inv_pose(self.prev_T) @ self.last_T)  # constant velocity
        if self.last_T is not None:
            return self.last_T
        return np.asarray(model.T_world_ref, dtype=np.float64)

    def _filter_correction(self, corr_tracked: np.ndarray, stamp: float) -> np.ndarray:
        """Move the map->odom correction towards the tracked one by
        ``dt / refine_time_constant_s`` (first-order low-pass on SE(3))."""
        tau = self.tracking_config.refine_time_constant_s
        last, self.refine_stamp = self.refine_stamp, stamp
        if tau <= 0 or last is None:
            return corr_tracked
        alpha = min(1.0, max(0.0, (stamp - last) / tau))
        return interpolate_pose(self.correction, corr_tracked, alpha)

    def _accept(self, result: PoseResult) -> PoseResult:
        if result.status == "refined" and result.T_correction is not None:
            self.correction = result.T_correction
        self.prev_T, self.last_T = self.last_T, result.T_world_cam
        return result
