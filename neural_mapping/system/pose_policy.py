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
                   (map->odom) is a Kalman filter fusing the odometry's drift model with
                   each ICP result and its covariance, ``refine_time_constant_s`` the
                   ICP error's correlation time
                   (:mod:`neural_mapping.system.refine_filter`; ``refined``)
=================  ===========================================================================

A failed track (``failed``, or ``lost`` after ``lost_after_failures`` in a row) returns
``ok=False``: the frame must not be integrated; its pose is the best guess (external pose,
else the last good one).

Relocalisation (``track``): after a failed track the frame is aligned to keyframes -- the
model views of every ``relocalisation_keyframe_every``-th distinct view the policy saw
(already rendered, so the map is not read from this thread), at most
``relocalisation_keyframes``: the newer half as they came (short jumps land near them), the
older half spread over the map (when the set is full, the older keyframe whose removal leaves
the smallest gap is dropped, so a camera carried back to where it was long ago still finds one) -- each
from its own reference pose, at most ``relocalisation_candidates`` per frame
(the newest keyframe first, then the others in turn over the following frames).  A candidate
is accepted only when it passes every tracking check and the strict ones
(``relocalisation_min_inlier_ratio``, ``relocalisation_max_rms_m``, no weak direction); the frame is then
``relocalised`` (``ok``, integrated) and the motion model restarts from it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from neural_mapping.config import MappingConfig
from neural_mapping.geometry import inv_pose
from neural_mapping.system.refine_filter import RefineFilter
from neural_mapping.types import RGBDFrame

log = logging.getLogger(__name__)


@dataclass
class PoseResult:
    index: int
    stamp: float
    T_world_cam: np.ndarray
    status: str  # external | tracked | refined | initial | relocalised | failed | lost
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
        self.refine = RefineFilter(config.tracking)
        self.reset()

    def reset(self) -> None:
        self.last_T: Optional[np.ndarray] = None
        self.prev_T: Optional[np.ndarray] = None
        self.correction = np.eye(4)  # the applied map->odom correction (external+refine)
        self.refine.reset()
        self.consecutive_failures = 0
        self.track_time_s = 0.0  # ICP time of the last estimate (0 when none ran)
        self.keyframes: list = []  # model views to relocalise against (newest last)
        self._views_seen = 0
        self._last_view = None
        self._reloc_cursor = 0
        self.relocalisations = 0
        self.recent_inlier_ratio: Optional[float] = None  # running mean of tracked frames

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
            if T_external is not None:
                self.refine.start(frame.timestamp)
            return self._accept(PoseResult(frame.index, frame.timestamp, T0, "initial", True,
                                           T_correction=np.eye(4) if T_external is not None else None))
        self._remember(model)
        T_init = self._initial_guess(T_external, frame.timestamp, model)
        t0 = time.perf_counter()
        tr = self.tracker.track(frame, model, T_init)
        floor = self._inlier_floor()
        if tr.ok and tr.inlier_ratio < floor:  # a sudden drop: a jump that ICP cannot explain
            tr.ok, tr.reason, tr.T_world_cam = False, "inlier_drop", T_init.copy()
        if tr.ok:
            r = self.recent_inlier_ratio
            self.recent_inlier_ratio = tr.inlier_ratio if r is None else 0.8 * r + 0.2 * tr.inlier_ratio
        if not tr.ok and T_external is None:
            reloc = self._relocalise(frame)
            if reloc is not None:
                self.track_time_s = time.perf_counter() - t0
                self.consecutive_failures = 0
                self.relocalisations += 1
                log.info("relocalised frame %d against a keyframe", frame.index)
                self.prev_T = None  # the motion model restarts here
                return self._accept(PoseResult(frame.index, frame.timestamp, reloc.T_world_cam,
                                               "relocalised", True, info=reloc.info()))
        self.track_time_s = time.perf_counter() - t0
        if tr.ok:
            self.consecutive_failures = 0
            if T_external is None:
                return self._accept(PoseResult(frame.index, frame.timestamp, tr.T_world_cam, "tracked",
                                               True, info=tr.info()))
            info = self.refine.measurement_information(tr.normal_equations, tr.inliers, tr.rss,
                                                       model.T_world_ref)
            corr = self.refine.update(T_init, tr.T_world_cam, info)
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

    def _remember(self, view) -> None:
        """Keep every ``relocalisation_keyframe_every``-th new model view as a keyframe."""
        if view is self._last_view:
            return
        self._last_view = view
        self._views_seen += 1
        cfg = self.tracking_config
        if cfg.relocalisation_keyframes <= 0 or \
                (self._views_seen - 1) % cfg.relocalisation_keyframe_every != 0:
            return
        self.keyframes.append(view)
        if len(self.keyframes) > cfg.relocalisation_keyframes:
            del self.keyframes[_most_redundant(self.keyframes, len(self.keyframes) // 2)]

    def _inlier_floor(self) -> float:
        r = self.recent_inlier_ratio
        return 0.0 if r is None else self.tracking_config.tracking_min_inlier_ratio_vs_recent * r

    def _relocalise(self, frame: RGBDFrame):
        """The first keyframe candidate that passes the strict test, or None."""
        cfg = self.tracking_config
        n = len(self.keyframes)
        if n == 0 or cfg.relocalisation_candidates <= 0:
            return None
        order = [n - 1] + [(n - 2 - (self._reloc_cursor + k) % max(n - 1, 1)) for k in range(n - 1)]
        order = list(dict.fromkeys(order))[: cfg.relocalisation_candidates]
        self._reloc_cursor += max(len(order) - 1, 0)
        best = None
        for i in order:
            view = self.keyframes[i]
            tr = self.tracker.track(frame, view, view.T_world_ref)
            # every direction constrained: in a weak one the estimate would keep the
            # keyframe's pose, which says nothing about where this frame is
            if tr.ok and tr.weak_directions == 0 and \
                    tr.inlier_ratio >= max(cfg.relocalisation_min_inlier_ratio, self._inlier_floor()) and \
                    tr.residual <= cfg.relocalisation_max_rms_m and \
                    (best is None or tr.residual < best.residual):
                best = tr
        return best

    def _initial_guess(self, T_external: Optional[np.ndarray], stamp: float, model) -> np.ndarray:
        if T_external is not None:  # the filter's (unsmoothed) correction, predicted to stamp
            return self.refine.predict(T_external, stamp)
        if self.last_T is not None and self.prev_T is not None:
            return self.last_T @ (inv_pose(self.prev_T) @ self.last_T)  # constant velocity
        if self.last_T is not None:
            return self.last_T
        return np.asarray(model.T_world_ref, dtype=np.float64)

    def _accept(self, result: PoseResult) -> PoseResult:
        if result.status == "refined" and result.T_correction is not None:
            self.correction = result.T_correction
        self.prev_T, self.last_T = self.last_T, result.T_world_cam
        return result


def _most_redundant(views, older: int) -> int:
    """Index, among the ``older`` first views, of the one whose reference pose is nearest to
    its two nearest other views' (sum of the distances: translation in metres plus rotation
    in radians times 1 m; the oldest of equals): dropping it leaves the smallest gap, so the
    keyframes thin out where they are dense and the ends of a path stay."""
    if older <= 0:
        return 0
    T = np.stack([np.asarray(v.T_world_ref, np.float64) for v in views])
    dt = np.linalg.norm(T[:, None, :3, 3] - T[None, :, :3, 3], axis=-1)
    cos = (np.einsum("iab,jab->ij", T[:, :3, :3], T[:, :3, :3]) - 1.0) / 2.0  # trace(Ri^T Rj)
    d = dt + np.arccos(np.clip(cos, -1.0, 1.0))
    np.fill_diagonal(d, np.inf)
    if len(views) < 3:
        return 0
    two = np.sort(d[:older], axis=1)[:, :2].sum(axis=1)  # the gap its removal would leave
    return int(np.argmin(two))
