"""Frame-to-model tracking: projective point-to-plane ICP against a render of the map.

Pipeline of :meth:`Tracker.track`
    1. The frame's depth (within the system's depth range) is resampled to
       ``tracking_width_px`` (block average of the valid pixels of each block that lie near
       the block's nearest surface, so depth edges are not blurred) and a pyramid of three
       levels, each half the previous (:mod:`neural_mapping.tracking.pyramid`).
    2. The *model view* (:class:`~neural_mapping.tracking.model_view.ModelView`) is a render
       of the map (vertex and normal maps) at a reference pose ``T_world_ref`` -- usually
       the previous frame's pose, see :meth:`Tracker.predict`.  All work is done in that
       reference camera's frame (small, well-conditioned numbers).
    3. Coarse to fine, Gauss-Newton on the point-to-plane error: frame vertices moved
       by the current estimate are projected into the model view (projective data
       association), pairs are kept when their distance is below the level's
       ``tracking_max_dist_*_m`` and their normals agree within ``tracking_max_angle_deg``,
       the residuals ``r = n_model . (T p - v_model)`` get robust (Huber) weights, the 6x6
       normal equations are built with one float64 matrix product and solved in float64 (numpy) in
       their well-constrained eigen-directions only (weak ones, below
       ``tracking_degenerate_ratio`` of the largest eigenvalue, keep the initial guess, i.e.
       the motion prior), and the pose is updated on the left, ``T <- exp(xi) T``.  On the finest
       level the cost is joint: the photometric system against the model view's rendered
       color (:mod:`neural_mapping.tracking.photometric`) is added with
       ``tracking_photometric_weight`` through a soft projector on the geometric system's
       weak eigen-directions (``tracking_photometric_soft_ratio``; weight 0: the old
       intensity-only alignment of the weak directions after ICP).  A level stops when the
       update is below ``tracking_eps_trans_m`` / ``tracking_eps_rot_rad``.
    4. Failure detection -> ``TrackResult(ok=False, reason=...)`` and the estimate is
       discarded (the caller keeps its pose and must not integrate the frame):
       ``no_model`` (no view, or too few valid model pixels), ``no_depth`` (too few valid
       frame pixels), ``few_inliers``, ``large_residual``, ``degenerate`` (more than
       ``tracking_max_weak_directions`` weak directions), ``large_motion``
       (jump from ``T_init`` beyond ``tracking_max_motion_*``), ``numerical``.

The tracker is stateless: the initial guess (constant velocity, or the external pose for
``external+refine``) and the failure count are the pose policy's
(:mod:`neural_mapping.system.pose_policy`).  Everything runs in torch on the tracker's
device (CPU or CUDA); torch releases the GIL in its kernels.  On CPU with a fixed thread
count the results are bit-identical from run to run (no atomics; reductions are matmuls).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from neural_mapping import kernels
from neural_mapping.config import TrackingConfig
from neural_mapping.geometry import inv_pose, orthonormalize, pose_distance, se3_exp
from neural_mapping.grid.raycast import depth_range_from_depth
from neural_mapping.tracking.model_view import ModelView
from neural_mapping.tracking.pyramid import CHUNK, Level, build_pyramid, scaled_to, to_tensor
from neural_mapping.types import CameraIntrinsics, RGBDFrame

_NOISE_MODELS = {"z2": 1, "kinect_axial": 2, "kinect": 3}


@dataclass
class TrackResult:
    T_world_cam: np.ndarray
    ok: bool
    reason: str = "ok"
    inliers: int = 0
    residual: float = float("nan")  # robust RMS point-to-plane residual of the inliers (m)
    iterations: int = 0
    valid_points: int = 0
    inlier_ratio: float = 0.0
    condition: float = float("nan")  # smallest / largest eigenvalue (normalised system)
    weak_directions: int = 0  # directions kept at the initial guess (weak eigenvalues)
    photometric_pairs: int = 0  # pairs of the photometric alignment in the weak directions
    time_s: float = 0.0
    # external+refine's Kalman filter (system/refine_filter.py): the finest level's last 6x6
    # normal equations (left perturbation in the model view's reference frame) and robust RSS
    normal_equations: Optional[np.ndarray] = None
    rss: float = float("nan")
    levels: list = field(default_factory=list)

    def info(self) -> Dict[str, Any]:
        return {"reason": self.reason, "inliers": self.inliers, "residual_m": self.residual,
                "iterations": self.iterations, "valid_points": self.valid_points,
                "inlier_ratio": self.inlier_ratio, "condition": self.condition,
                "weak_directions": self.weak_directions,
                "photometric_pairs": self.photometric_pairs,
                "track_ms": self.time_s * 1e3}


class Tracker:
    """Frame-to-model tracker (see the module docstring): :meth:`predict` renders the model
    view after a frame is fused, :meth:`track` aligns the next frame to it from ``T_init``.

    ``config`` is the :class:`~neural_mapping.config.TrackingConfig` section; the depth range
    is the system's (``IntegrationConfig``); :meth:`from_config` takes both from a
    :class:`~neural_mapping.config.MappingConfig`."""

    def __init__(self, config: TrackingConfig, depth_min_m: float, depth_max_m: float, device):
        if not 0 <= depth_min_m < depth_max_m:
            raise ValueError(f"need 0 <= depth_min_m < depth_max_m, got {depth_min_m}, {depth_max_m}")
        c = config
        self.config = c
        self.depth_min_m = float(depth_min_m)
        self.depth_max_m = float(depth_max_m)
        self.device = torch.device(device)
        # (iterations, association distance) per pyramid level, coarse to fine
        self.levels = [(c.tracking_iterations_coarse, c.tracking_max_dist_coarse_m),
                       (c.tracking_iterations_mid, c.tracking_max_dist_mid_m),
                       (c.tracking_iterations_fine, c.tracking_max_dist_fine_m)]
        if self.levels[-1][0] < 1:
            raise ValueError("tracking_iterations_fine must be >= 1")
        self._cos_angle = math.cos(math.radians(c.tracking_max_angle_deg))
        # the photometric term samples every tracking_photometric_point_stride-th pixel: every
        # _photo_stride-th point of the finest level (which keeps every tracking_point_stride-th)
        self._photo_stride = max(1, c.tracking_photometric_point_stride // c.tracking_point_stride)
        self._noise_model = _NOISE_MODELS[c.tracking_noise_model] if c.tracking_depth_noise_weighting else 0

    @classmethod
    def from_config(cls, cfg, device) -> "Tracker":
        """From a :class:`~neural_mapping.config.MappingConfig`: its ``tracking`` section and
        the integration's depth range."""
        return cls(cfg.tracking, cfg.integration.depth_min_m, cfg.integration.depth_max_m, device)

    # ------------------------------------------------------------ model
    def model_intrinsics(self, intrinsics: CameraIntrinsics) -> CameraIntrinsics:
        """The camera of the model view: ``intrinsics`` divided down to about
        ``tracking_model_width_px``."""
        f = max(1, intrinsics.width // self.config.tracking_model_width_px)
        return scaled_to(intrinsics, intrinsics.width // f, intrinsics.height // f)

    def predict(self, backend, intrinsics: CameraIntrinsics, T_world_cam, depth=None) -> ModelView:
        """The model view: ``backend.render`` (a :class:`~neural_mapping.backends.base.MapBackend`)
        at ``T_world_cam`` at the tracker's model resolution (the mapping thread makes it for
        the next :meth:`track`).  ``depth``: the frame just fused at ``T_world_cam``; its rays
        then march only within ``tracking_model_margin_trunc`` truncation distances of its
        depths (:func:`~neural_mapping.grid.raycast.depth_range_from_depth`), a few steps
        instead of the whole range, and rays without a valid depth nearby stay empty (the next
        frames, seen from nearly here, have no depth there either)."""
        K = self.model_intrinsics(intrinsics)
        depth_range = None
        margin = self.config.tracking_model_margin_trunc
        if depth is not None and margin > 0:
            d = to_tensor(depth, self.device)
            f = intrinsics.width // K.width
            if d.shape[0] >= K.height * f and d.shape[1] >= K.width * f:
                d = d[: K.height * f, : K.width * f]
                depth_range = depth_range_from_depth(d, K, margin * backend.truncation_m)
        rc = backend.render(K, T_world_cam, depth_range=depth_range,
                            color=self.config.tracking_photometric, fast=True)
        return ModelView.from_raycast(rc, self.device)

    # ------------------------------------------------------------ track
    def track(self, frame: RGBDFrame, view: Optional[ModelView], T_init) -> TrackResult:
        """Align ``frame`` to ``view`` starting from ``T_init`` (4x4 camera-to-world);
        ``view=None`` (empty map) fails with ``no_model``."""
        return self.track_depth(frame.depth, frame.intrinsics, view, T_init, frame.color)

    def track_depth(self, depth, intrinsics: CameraIntrinsics, view: Optional[ModelView],
                    T_init, color=None) -> TrackResult:
        """:meth:`track` with a depth image (metres), its intrinsics and optionally the
        registered color image (used in weak directions, see :mod:`.photometric`)."""
        t0 = time.perf_counter()
        if view is not None and not isinstance(view, ModelView):
            raise TypeError(f"view must be a ModelView (Tracker.predict), got {type(view).__name__}")
        T_init = np.asarray(T_init, dtype=np.float64)
        if T_init.shape != (4, 4):
            raise ValueError(f"T_init must be 4x4, got shape {T_init.shape}")
        try:
            result = self._track(depth, intrinsics, view, T_init, color)
        except (np.linalg.LinAlgError, torch.linalg.LinAlgError):
            result = TrackResult(T_init.copy(), False, "numerical")
        result.time_s = time.perf_counter() - t0
        return result

    def _pyramid(self, depth, intrinsics: CameraIntrinsics):
        d = to_tensor(depth, self.device)
        d = torch.where((d > self.depth_min_m) & (d < self.depth_max_m), d, torch.zeros_like(d))  # NaN -> 0
        return build_pyramid(d, intrinsics, self.config.tracking_width_px,
                             [it > 0 for it, _ in self.levels], self.config.tracking_point_stride,
                             self.config.tracking_bilateral_rel)

    def _track(self, depth, intrinsics, view: Optional[ModelView], T_init, color=None) -> TrackResult:
        cfg = self.config
        if view is None or view.num_valid < cfg.tracking_min_valid_points:
            return TrackResult(T_init.copy(), False, "no_model")
        pyr, n_valid = self._pyramid(depth, intrinsics)
        L = pyr[-1]
        if L.n < cfg.tracking_min_valid_points:
            return TrackResult(T_init.copy(), False, "no_depth", valid_points=n_valid)
        T = inv_pose(view.T_world_ref) @ T_init  # T_ref_cam (float64)
        total_it = 0
        stats = None
        levels_info: List[tuple] = []
        photo = None  # (points, intensities) of the joint photometric term (finest level)
        w_photo = cfg.tracking_photometric_weight * self._photo_stride  # per pixel as depth's
        if cfg.tracking_photometric and w_photo > 0 and color is not None \
                and view.intensity is not None:
            photo = [lambda: self._frame_intensities(L, color, intrinsics), None]
        photo_pairs = 0
        for lvl, (iters, max_dist) in zip(pyr, self.levels):
            for _ in range(iters):
                stats = self._step(lvl, T, view, max_dist)
                total_it += 1
                if stats is None:
                    break
                if photo is not None and lvl is L:
                    stats, photo_pairs = self._add_photometric(stats, photo, T, view, w_photo, L)
                H, b, n_in, rss = stats
                if not (np.isfinite(H).all() and np.isfinite(b).all()):
                    return TrackResult(T_init.copy(), False, "numerical", iterations=total_it)
                xi, weak = self._solve(H, b, L, cfg.tracking_degenerate_ratio)
                if xi is None:
                    return TrackResult(T_init.copy(), False, "numerical", iterations=total_it)
                T = se3_exp(xi) @ T
                if np.linalg.norm(xi[:3]) < cfg.tracking_eps_trans_m and \
                        np.linalg.norm(xi[3:]) < cfg.tracking_eps_rot_rad:
                    break
            if iters > 0:
                levels_info.append((lvl.n, total_it))
        # Counts, residual and system of the finest level's last linearisation (at the pose
        # before its update, which is below eps when the level converged).
        if stats is None:
            return TrackResult(T_init.copy(), False, "few_inliers", iterations=total_it,
                               valid_points=n_valid)
        H, b, n_in, rss = stats
        lever = L.lever_m
        ev, V, weak = weak_directions(H, lever, cfg.tracking_degenerate_ratio)
        if photo is None and weak.any() and not weak.all() and cfg.tracking_photometric \
                and color is not None and view.intensity is not None:
            T, photo_pairs = self._photometric(L, T, view, color, intrinsics,
                                               _scales(lever)[:, None] * V[:, weak])
        T_world_cam = orthonormalize(view.T_world_ref @ T)
        rms = math.sqrt(rss / max(n_in, 1))
        res = TrackResult(T_world_cam, True, "ok", inliers=n_in, residual=rms, iterations=total_it,
                          valid_points=n_valid, inlier_ratio=n_in / max(L.n, 1),
                          condition=_condition(ev), levels=levels_info,
                          weak_directions=int(weak.sum()), photometric_pairs=photo_pairs)
        res.normal_equations, res.rss = H, rss  # for external+refine's filter
        res.reason = self._failure(res, L.n, T_init)
        if res.reason != "ok":
            res.ok = False
            res.T_world_cam = T_init.copy()
        return res

    def _failure(self, res: TrackResult, n_pts: int, T_init: np.ndarray) -> str:
        """The first failed check of an estimate, or ``ok``."""
        cfg = self.config
        dt, dr = pose_distance(T_init, res.T_world_cam)
        if not np.all(np.isfinite(res.T_world_cam)):
            return "numerical"
        if res.inliers < max(cfg.tracking_min_inliers, cfg.tracking_min_inlier_ratio * n_pts):
            return "few_inliers"
        if res.weak_directions > cfg.tracking_max_weak_directions:
            return "degenerate"
        if res.residual > cfg.tracking_max_rms_m:
            return "large_residual"
        if dt > cfg.tracking_max_motion_m or math.degrees(dr) > cfg.tracking_max_motion_deg:
            return "large_motion"
        return "ok"

    def _step(self, L: Level, T: np.ndarray, view: ModelView, max_dist: float):
        """One association + linearisation (kernels.icp_system, TorchScript).
        Returns (H 6x6, b 6 as float64 numpy, inliers, robust rss) or None below 6 inliers."""
        K = view.intrinsics
        dev = L.P.device
        R = torch.as_tensor(T[:3, :3], dtype=torch.float32, device=dev)
        t = torch.as_tensor(T[:3, 3:4], dtype=torch.float32, device=dev)
        M, n_in = kernels.icp_system(L.P, L.N, L.A, R, t, view.table, float(K.fx), float(K.fy),
                                     float(K.cx), float(K.cy), int(K.width), int(K.height),
                                     float(max_dist), float(self._cos_angle),
                                     float(self.config.tracking_huber_m),
                                     self._noise_model, L.fx_sensor, self.config.tracking_symmetric, CHUNK)
        if n_in < 6:
            return None
        M = M.cpu().numpy()
        return M[:6, :6], M[:6, 6], n_in, float(M[6, 6])

    def _add_photometric(self, stats, photo, T: np.ndarray, view: ModelView, weight: float,
                         L: Level):
        """Joint cost: the point-to-plane system ``stats`` plus ``weight`` times the photometric
        one at ``T`` (:func:`~.photometric.photometric_normal_equations`), seen through the
        soft projector ``S = V diag(1 / (1 + ev_i / (c ev_max))) V^T`` of the geometric
        system's (depth-normalised) eigen-directions, ``c`` = ``tracking_photometric_soft_ratio``
        (0: all six directions): the intensity term acts where depth is weak, smoothly.
        """
        from neural_mapping.tracking.photometric import photometric_normal_equations
        H, b, n_in, rss = stats
        c = self.config.tracking_photometric_soft_ratio
        if c > 0:
            s = _scales(L.lever_m)
            ev, V, _ = weak_directions(H, L.lever_m, 0.0)
            if not np.all(np.isfinite(ev)) or ev[-1] <= 0:
                return stats, 0
            soft = 1.0 / (1.0 + np.maximum(ev, 0.0) / (c * ev[-1]))
            if soft.max() < 0.1:  # depth constrains every direction: the term would count < 10 %
                return stats, 0
        if callable(photo[0]):  # frame intensities sampled on first use
            photo[:] = photo[0]() or (None, None)
        if photo[0] is None:
            return stats, 0
        Hp, bp, pairs = photometric_normal_equations(
            photo[0], photo[1], T, view, self.config.tracking_max_dist_fine_m,
            self.config.tracking_photometric_huber, 0.002)
        if pairs < self.config.tracking_min_inliers:
            return stats, pairs
        Hp, bp = Hp.cpu().numpy().astype(np.float64), bp.cpu().numpy().astype(np.float64)
        if c > 0:
            S = (V * soft) @ V.T  # soft projector, depth-normalised coordinates
            Hp = (S @ (Hp * s[:, None] * s[None, :]) @ S) / s[:, None] / s[None, :]
            bp = (S @ (s * bp)) / s
        return (H + weight * Hp, b + weight * bp, n_in, rss), pairs

    def _frame_intensities(self, L: Level, color, intrinsics):
        """``(points (3, m), gray (m))``: the finest level's points every
        ``tracking_photometric_point_stride``-th pixel and the frame's gray value there,
        averaged over 3x3 taps a pyramid block apart (:func:`~.photometric.sample_gray`: only the sampled pixels are
        read); None when the color image does not match the depth."""
        from neural_mapping.tracking.photometric import sample_gray
        cfg = self.config
        c = torch.as_tensor(np.asarray(color)) if not isinstance(color, torch.Tensor) else color
        if tuple(c.shape[:2]) != (intrinsics.height, intrinsics.width) or c.dim() != 3:
            return None
        P = L.P[:, :L.n:self._photo_stride]
        f = max(1, intrinsics.width // cfg.tracking_width_px)
        return P, sample_gray(c.to(self.device), P, float(intrinsics.fx), float(intrinsics.fy),
                              float(intrinsics.cx), float(intrinsics.cy), f)

    def _photometric(self, L: Level, T: np.ndarray, view: ModelView, color, intrinsics,
                     basis: np.ndarray):
        """Align the weak directions ``basis`` (6, k) by intensity only (:mod:`.photometric`;
        used when the joint term is off): the frame's points and intensities from
        :meth:`_frame_intensities`."""
        from neural_mapping.tracking.photometric import align_weak_directions
        cfg = self.config
        frame = self._frame_intensities(L, color, intrinsics)
        if frame is None:
            return T, 0
        P, If = frame
        return align_weak_directions(P, If, T, view, basis, cfg.tracking_photometric_iterations,
                                     cfg.tracking_max_dist_fine_m, cfg.tracking_photometric_huber,
                                     0.002, cfg.tracking_min_inliers)

    @staticmethod
    def _solve(H: np.ndarray, b: np.ndarray, L: Level, ratio: float):
        """The Gauss-Newton update restricted to the well-constrained directions of ``H``
        (:func:`weak_directions`): along the weak ones the update is zero, so the estimate
        keeps the initial guess (the motion prior) there instead of sliding.
        Returns ``(xi, number of weak directions)``, ``(None, 6)`` when not finite."""
        lever = L.lever_m
        ev, V, weak = weak_directions(H, lever, ratio)
        if weak.all():
            return None, 6
        s = _scales(lever)
        strong = ~weak
        Vs = V[:, strong]
        xi = -s * (Vs @ ((Vs.T @ (s * b)) / ev[strong]))
        return (xi if np.all(np.isfinite(xi)) else None), int(weak.sum())


def _scales(lever_m: float) -> np.ndarray:
    return np.array([1, 1, 1, 1 / lever_m, 1 / lever_m, 1 / lever_m])


def weak_directions(H: np.ndarray, lever_m: float, ratio: float):
    """Eigen-analysis of the 6x6 normal equations ``H`` (``xi = [translation, rotation]``) with
    the rotation block scaled by ``lever_m`` (so metres and radians times a lever arm compare):
    ``(eigenvalues ascending, eigenvectors as columns, weak mask)``; a direction is weak when
    its eigenvalue is below ``ratio`` times the largest.  The eigenvectors are in the scaled
    coordinates (multiply the rotation part by ``1 / lever_m`` for radians)."""
    s = _scales(lever_m)
    Hs = np.asarray(H, np.float64) * s[:, None] * s[None, :]
    if not np.all(np.isfinite(Hs)):
        return np.full(6, np.nan), np.eye(6), np.ones(6, bool)
    ev, V = np.linalg.eigh(Hs)
    if ev[-1] <= 0:
        return ev, V, np.ones(6, bool)
    return ev, V, ev < max(ratio, 1e-12) * ev[-1]


def _condition(ev: np.ndarray) -> float:
    """Smallest / largest eigenvalue of the scaled system."""
    if not np.all(np.isfinite(ev)) or ev[-1] <= 0:
        return 0.0
    return float(max(ev[0], 0.0) / ev[-1])
