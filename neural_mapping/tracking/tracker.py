"""Frame-to-model tracking: projective point-to-plane ICP against a raycast of the map.

Pipeline of :meth:`Tracker.track`
    1. The frame's depth is resampled to ``base_width`` (block average of the valid
       pixels of each block that lie near the block's nearest surface, so depth edges are
       not blurred) and a pyramid of ``len(iterations)`` levels (each half the previous).
    2. The *model view* is a raycast of the map (vertex and normal maps) at a reference
       pose ``T_world_ref`` -- usually the previous frame's pose, see :meth:`Tracker.predict`.
       All work is done in that reference camera's frame (small, well-conditioned numbers).
    3. Coarse to fine, Gauss-Newton on the point-to-plane error: frame vertices moved
       by the current estimate are projected into the model view (projective data
       association), pairs are kept when their distance is below ``max_dist_m`` and
       their normals agree within ``max_angle_deg``, the residuals
       ``r = n_model . (T p - v_model)`` get robust (Huber) weights, the 6x6 normal
       equations are built with one float64 matrix product and solved in float64,
       and the pose is updated on the left, ``T <- exp(xi) T``.  A level stops when the
       update is below ``eps_trans_m`` / ``eps_rot_rad``.
    4. Failure detection -> ``TrackResult(ok=False, reason=...)`` and the estimate is
       discarded (the caller keeps its previous pose and must not integrate the frame):
       ``no_model``, ``no_depth`` (too few valid pixels), ``few_inliers``,
       ``large_residual``, ``degenerate`` (ill-conditioned system: e.g. a flat wall leaves
       three directions unconstrained), ``large_motion`` (jump from the initial guess
       beyond ``max_motion_*``), ``numerical`` (non-finite values).

The tracker keeps the last two successful poses for a constant-velocity initial guess
(:meth:`Tracker.initial_guess`), counts consecutive failures (``lost`` after
``lost_after_failures``), and is otherwise stateless: ``external+refine`` passes the
external pose as ``T_init`` to the same :meth:`Tracker.track`.

Everything runs in torch on the device of the inputs' configured ``device`` (CPU or
CUDA); torch releases the GIL in its kernels.  On CPU with a fixed thread count the
results are bit-identical from run to run (no atomics; reductions are matmuls).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from neural_mapping import kernels
from neural_mapping.geometry import inv_pose, orthonormalize, pose_distance, se3_exp
from neural_mapping.types import CameraIntrinsics

# -------------------------------------------------------------------- config


@dataclass
class TrackerConfig:
    base_width: int = 320
    """The frame is block-averaged to this width (640 -> 320) before the pyramid."""
    model_width: int = 80
    """Width of the raycast made by :meth:`Tracker.predict` (the model view)."""
    finest_stride: int = 1
    """Use every n-th valid pixel of the finest pyramid level (its steps dominate the cost)."""
    iterations: Tuple[int, ...] = (6, 4, 3)
    """Gauss-Newton iterations per pyramid level, coarse to fine (level count = length)."""
    max_dist_m: Tuple[float, ...] = (0.10, 0.05, 0.03)
    """Data association: largest point distance per level (coarse to fine)."""
    max_angle_deg: float = 30.0
    """Data association: largest angle between frame and model normals."""
    huber_m: float = 0.01
    """Huber threshold on point-to-plane residuals (robust weights)."""
    depth_noise_weighting: bool = True
    """Weight residuals by the depth noise model sigma ~ z^2 (Huber threshold scales too)."""
    depth_min_m: float = 0.1
    depth_max_m: float = 4.0
    eps_trans_m: float = 1e-4
    eps_rot_rad: float = 1e-4
    min_valid_points: int = 300
    """Fewer valid frame pixels at the finest level -> ``no_depth``."""
    min_inliers: int = 200
    min_inlier_ratio: float = 0.15
    """Fewer associated pairs than ``max(min_inliers, ratio * valid)`` -> ``few_inliers``."""
    max_rms_m: float = 0.02
    """Robust RMS residual of the inliers above this -> ``large_residual``."""
    degenerate_ratio: float = 1e-4
    """Smallest / largest eigenvalue of the (scale-normalised) 6x6 system below this ->
    ``degenerate``."""
    max_motion_m: float = 0.30
    max_motion_deg: float = 30.0
    """Estimate further than this from ``T_init`` -> ``large_motion``."""
    lost_after_failures: int = 5
    model_hint_margin: float = 1.5
    """:meth:`predict` with the fused frame's depth marches each ray only within this many
    truncation distances of the depths around its pixel (0 = march the whole range)."""
    device: str = "cpu"


# ------------------------------------------------------------------- results


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
    time_s: float = 0.0
    levels: list = field(default_factory=list)

    def info(self) -> Dict[str, Any]:
        return {"reason": self.reason, "inliers": self.inliers, "residual_m": self.residual,
                "iterations": self.iterations, "valid_points": self.valid_points,
                "inlier_ratio": self.inlier_ratio, "condition": self.condition,
                "track_ms": self.time_s * 1e3}


# ---------------------------------------------------------------- model view


def _to_tensor(x, device, dtype=torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


_FAR = 1.0e4  # coordinate written into invalid model pixels: fails every distance test


class ModelView:
    """Vertex/normal maps of the model seen from ``T_world_ref``, stored in that camera's
    frame as one ``(6, H*W)`` table (x y z nx ny nz rows) for a single gather per
    iteration.  Invalid pixels -- and always pixel 0, the sentinel that out-of-image
    projections are sent to -- hold a far point and a zero normal.  Build with
    :meth:`from_world` / :meth:`from_raycast` (a raycast of the map) or :meth:`from_depth`
    (a depth image: frame-to-frame tracking, tests)."""

    def __init__(self, points_ref: torch.Tensor, normals_ref: torch.Tensor, valid: torch.Tensor,
                 intrinsics: CameraIntrinsics, T_world_ref: np.ndarray):
        h, w = intrinsics.height, intrinsics.width
        if tuple(points_ref.shape[:2]) != (h, w):
            raise ValueError(f"model maps are {tuple(points_ref.shape[:2])} but intrinsics are {w}x{h}")
        valid = valid & torch.isfinite(points_ref).all(-1) & torch.isfinite(normals_ref).all(-1)
        valid = valid & (points_ref[..., 2] > 0)
        # Normals face the camera (raycasters differ in sign conventions).
        flip = (normals_ref * points_ref).sum(-1, keepdim=True) > 0
        normals_ref = torch.where(flip, -normals_ref, normals_ref)
        valid = valid.reshape(-1).clone()
        valid[0] = False
        table = torch.cat([points_ref.reshape(-1, 3), normals_ref.reshape(-1, 3)], 1)
        fill = torch.tensor([_FAR, _FAR, _FAR, 0, 0, 0], dtype=table.dtype, device=table.device)
        table = torch.where(valid[:, None], table, fill)
        self.table = table.T.contiguous()  # (6, H*W)
        self.valid = valid
        self.intrinsics = intrinsics
        self.T_world_ref = np.asarray(T_world_ref, dtype=np.float64)
        self.num_valid = int(valid.sum())

    @property
    def points(self) -> torch.Tensor:
        return self.table[:3].T

    @property
    def normals(self) -> torch.Tensor:
        return self.table[3:].T

    @classmethod
    def from_world(cls, points_world, normals_world, valid, intrinsics: CameraIntrinsics,
                   T_world_ref, device="cpu") -> "ModelView":
        """From world-frame vertex/normal maps ``(H, W, 3)`` (numpy or torch) seen from
        ``T_world_ref``; ``normals_world=None`` computes normals from the vertex map."""
        dev = torch.device(device)
        P = _to_tensor(points_world, dev)
        N = None if normals_world is None else _to_tensor(normals_world, dev)
        V = _to_tensor(valid, dev, torch.bool) if valid is not None else torch.ones(
            P.shape[:2], dtype=torch.bool, device=dev)
        T_ref_world = inv_pose(T_world_ref)
        R = torch.as_tensor(T_ref_world[:3, :3], dtype=torch.float32, device=dev)
        t = torch.as_tensor(T_ref_world[:3, 3], dtype=torch.float32, device=dev)
        V = V & torch.isfinite(P).all(-1)
        P = torch.where(V[..., None], P, torch.zeros_like(P)) @ R.T + t
        if N is None:  # normals from the vertex map
            N, nvalid = normal_map(P, torch.where(V, P[..., 2], torch.zeros_like(P[..., 2])))
            V = V & nvalid
        else:
            N = torch.where(V[..., None], N, torch.zeros_like(N)) @ R.T
        return cls(P, N, V, intrinsics, T_world_ref)

    @classmethod
    def from_raycast(cls, result, intrinsics: CameraIntrinsics, T_world_ref, device="cpu") -> "ModelView":
        """From a ``raycast.RaycastResult`` (``points_world``, ``normals_world``, ``valid``); the
        intrinsics are rescaled if the raycast has another size than ``intrinsics``."""
        P = result.points_world
        h, w = int(P.shape[0]), int(P.shape[1])
        if (w, h) != (intrinsics.width, intrinsics.height):
            intrinsics = _scaled_to(intrinsics, w, h)
        valid = getattr(result, "valid", None)
        return cls.from_world(P, getattr(result, "normals_world", None), valid, intrinsics,
                              T_world_ref, device)

    @classmethod
    def from_depth(cls, depth, intrinsics: CameraIntrinsics, T_world_ref=None, device="cpu",
                   width: Optional[int] = None, depth_min_m: float = 0.1,
                   depth_max_m: float = 10.0) -> "ModelView":
        """Model view from a depth image seen at ``T_world_ref`` (vertices and normals computed
        from the depth; block-averaged to ``width`` if given)."""
        dev = torch.device(device)
        d = _to_tensor(depth, dev)
        d = torch.where((d > depth_min_m) & (d < depth_max_m), d, torch.zeros_like(d))
        if width is not None and width != intrinsics.width:
            f = max(1, intrinsics.width // width)
            d = downsample_depth(d, f)
            intrinsics = _scaled_to(intrinsics, d.shape[1], d.shape[0])
        V = vertex_map(d, intrinsics)
        N, nvalid = normal_map(V, d)
        T = np.eye(4) if T_world_ref is None else T_world_ref
        return cls(V, N, nvalid, intrinsics, T)


def _scaled_to(intr: CameraIntrinsics, w: int, h: int) -> CameraIntrinsics:
    sx, sy = w / intr.width, h / intr.height
    return CameraIntrinsics(w, h, intr.fx * sx, intr.fy * sy,
                            (intr.cx + 0.5) * sx - 0.5, (intr.cy + 0.5) * sy - 0.5)


# ---------------------------------------------------------------- image ops


def downsample_depth(d: torch.Tensor, f: int, rel_tol: float = 0.03) -> torch.Tensor:
    """Block ``f x f`` mean of the valid (> 0) depths; 0 where a block has no valid depth or
    spans a depth edge (valid depths differing by more than ``rel_tol * z + 1 cm``), so
    foreground and background are never mixed.  ``f`` a power of two is done as repeated
    2x2 steps (a handful of elementwise ops on strided views: cheap on one core)."""
    if f == 1:
        return d
    if f & (f - 1) == 0:
        while f > 1:
            d = _down2(d, rel_tol)
            f //= 2
        return d
    H, W = d.shape
    h, w = H // f, W // f
    b = d[: h * f, : w * f].reshape(h, f, w, f)
    inv = (b <= 0).to(d.dtype)
    s = b.sum((1, 3))
    cnt = (f * f) - inv.sum((1, 3))
    mx = b.amax((1, 3))
    mn = (b + inv * _FAR).amin((1, 3))
    ok = (cnt > 0) & (mx - mn <= rel_tol * mn + 0.01)
    return torch.where(ok, s / cnt.clamp(min=1), torch.zeros_like(s))


def _down2(d: torch.Tensor, rel_tol: float) -> torch.Tensor:
    return kernels.down2(d, float(rel_tol), _FAR)


def vertex_map(d: torch.Tensor, K: CameraIntrinsics) -> torch.Tensor:
    """``(H, W, 3)`` camera-frame points of a depth image (0 where the depth is 0)."""
    return torch.stack(_xyz(d, K), -1)


def _xyz(d: torch.Tensor, K: CameraIntrinsics):
    H, W = d.shape
    u = (torch.arange(W, dtype=d.dtype, device=d.device) - K.cx) / K.fx
    v = (torch.arange(H, dtype=d.dtype, device=d.device) - K.cy) / K.fy
    return u[None, :] * d, v[:, None] * d, d


def normal_map(V: torch.Tensor, d: torch.Tensor, max_rel_jump: float = 0.05) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normals ``(H, W, 3)`` of a vertex map from central differences, oriented towards the
    camera, and their validity: false at borders, holes and depth discontinuities
    (neighbours differing by more than ``max_rel_jump * z + 5 mm``)."""
    n, valid = _normals_soa((V[..., 0], V[..., 1], V[..., 2]), d, max_rel_jump)
    return torch.stack(n, -1), valid


def _normals_soa(X, d: torch.Tensor, max_rel_jump: float = 0.05):
    nx, ny, nz, valid = kernels.normals(X[0], X[1], X[2], d, float(max_rel_jump))
    return (nx, ny, nz), valid


class _Level:
    """Frame points of one pyramid level, SoA ``(3, n)`` padded to a multiple of ``_CHUNK``
    (padding points have z = 0 and never associate)."""

    def __init__(self, P: torch.Tensor, N: torch.Tensor, n: int):
        self.P, self.N, self.n = P, N, n
        self.A = torch.empty((7, P.shape[1]), dtype=P.dtype, device=P.device)


_CHUNK = 1024


# ------------------------------------------------------------------- tracker


ModelLike = Union[ModelView, Callable[..., Any], Any]


class Tracker:
    """Frame-to-model tracker.  See the module docstring.

    ``track(frame, model, T_init=None)`` with an :class:`~neural_mapping.types.RGBDFrame`, or
    ``track_depth(depth, color, intrinsics, model, T_init=None)`` with arrays.  ``model`` is
    one of: a :class:`ModelView`; an object with ``raycast`` (a RaycastResult),
    ``T_world_cam`` and ``intrinsics`` (``system.ModelPrediction``); or a callable
    ``fn(T_world_ref, model_intrinsics) -> RaycastResult | ModelView`` that the tracker
    calls at ``T_init``.
    """

    def __init__(self, config: Optional[TrackerConfig] = None, **overrides):
        cfg = config or TrackerConfig()
        if overrides:
            cfg = TrackerConfig(**{**{f.name: getattr(cfg, f.name) for f in fields(cfg)}, **overrides})
        if len(cfg.max_dist_m) != len(cfg.iterations):
            if len(cfg.max_dist_m) == 1:
                cfg.max_dist_m = tuple(cfg.max_dist_m) * len(cfg.iterations)
            else:
                raise ValueError("max_dist_m needs one value per pyramid level (len(iterations))")
        self.config = cfg
        self.device = torch.device(cfg.device)
        self._cos_angle = math.cos(math.radians(cfg.max_angle_deg))
        self.reset()

    @classmethod
    def from_config(cls, cfg, device=None, **overrides) -> "Tracker":
        """From a :class:`~neural_mapping.config.MappingConfig` (depth range, failure count)."""
        kw = dict(depth_min_m=cfg.integration.depth_min_m, depth_max_m=cfg.integration.depth_max_m,
                  lost_after_failures=cfg.system.lost_after_failures)
        if device is not None:
            kw["device"] = str(device)
        t = cfg.tracking  # config.TrackingConfig: the ROS/CLI/YAML-visible tracker settings
        kw.update(base_width=t.tracking_width_px, model_width=t.tracking_model_width_px,
                  finest_stride=t.tracking_point_stride,
                  max_angle_deg=t.tracking_max_angle_deg, huber_m=t.tracking_huber_m,
                  depth_noise_weighting=t.tracking_depth_noise_weighting,
                  min_inliers=t.tracking_min_inliers, max_rms_m=t.tracking_max_rms_m,
                  max_motion_m=t.tracking_max_motion_m, max_motion_deg=t.tracking_max_motion_deg)
        kw.update(overrides)
        return cls(TrackerConfig(**kw))

    # ------------------------------------------------------------- state
    def reset(self, T_world_cam: Optional[np.ndarray] = None) -> None:
        """Forget the motion history (optionally restart at ``T_world_cam``)."""
        self.last_pose = None if T_world_cam is None else np.asarray(T_world_cam, np.float64)
        self.prev_pose = None
        self.consecutive_failures = 0
        self.frames = 0
        self.failures = 0

    @property
    def lost(self) -> bool:
        return self.consecutive_failures >= self.config.lost_after_failures

    def initial_guess(self) -> Optional[np.ndarray]:
        """Constant-velocity prediction from the last two successful poses (or the last pose)."""
        if self.last_pose is None:
            return None
        if self.prev_pose is None:
            return self.last_pose.copy()
        motion = inv_pose(self.prev_pose) @ self.last_pose
        return orthonormalize(self.last_pose @ motion)

    def _record(self, result: TrackResult) -> None:
        self.frames += 1
        if result.ok:
            self.prev_pose, self.last_pose = self.last_pose, result.T_world_cam.copy()
            self.consecutive_failures = 0
        else:
            self.failures += 1
            self.consecutive_failures += 1

    # ------------------------------------------------------------ model
    def model_intrinsics(self, intrinsics: CameraIntrinsics) -> CameraIntrinsics:
        f = max(1, intrinsics.width // self.config.model_width)
        return _scaled_to(intrinsics, intrinsics.width // f, intrinsics.height // f)

    def predict(self, volume, intrinsics: CameraIntrinsics, T_world_cam, depth=None) -> "ModelView":
        """The model view: a raycast of ``volume`` at ``T_world_cam`` at the tracker's model
        resolution (the mapping thread makes it for the next :meth:`track`).  ``depth``: the frame just fused at
        ``T_world_cam``; its rays then march only near its depths (see
        ``raycast.depth_range_from_depth``), a few steps instead of the whole range."""
        from neural_mapping.grid.raycast import depth_range_from_depth, raycast
        K = self.model_intrinsics(intrinsics)
        kw = dict(depth_min_m=self.config.depth_min_m, depth_max_m=self.config.depth_max_m,
                  with_color=False, one_lookup=True)
        trunc = getattr(volume, "truncation_m", None)
        if trunc is not None:
            kw["truncation_m"] = trunc
        if depth is not None and trunc is not None and self.config.model_hint_margin > 0:
            d = _to_tensor(depth, self.device)
            f = intrinsics.width // K.width
            if d.shape[0] >= K.height * f and d.shape[1] >= K.width * f:
                d = d[: K.height * f, : K.width * f]
                kw["depth_range"] = depth_range_from_depth(d, K, self.config.model_hint_margin * trunc)
                # Rays without a valid depth nearby (holes, beyond range) stay empty: the
                # next frames, seen from nearly here, have no depth there either.
                kw["march_unhinted"] = False
        return ModelView.from_raycast(raycast(volume, K, T_world_cam, **kw), K, T_world_cam, self.device)

    def _model_view(self, model: ModelLike, intrinsics: CameraIntrinsics, T_init) -> Optional[ModelView]:
        if model is None:
            return None
        if isinstance(model, ModelView):
            return model
        if hasattr(model, "points_world") and hasattr(model, "T_world_cam"):  # RaycastResult
            K = getattr(model, "intrinsics", None) or intrinsics
            return ModelView.from_raycast(model, K, model.T_world_cam, self.device)
        if hasattr(model, "raycast") and hasattr(model, "T_world_cam"):  # system.ModelPrediction
            rc = model.raycast
            if rc is None:
                return None
            if isinstance(rc, ModelView):
                return rc
            K = getattr(rc, "intrinsics", None) or getattr(model, "intrinsics", None) or intrinsics
            T_ref = getattr(rc, "T_world_cam", None)
            return ModelView.from_raycast(rc, K, model.T_world_cam if T_ref is None else T_ref,
                                          self.device)
        if callable(model):
            K = self.model_intrinsics(intrinsics)
            out = model(np.asarray(T_init, np.float64), K)
            if out is None or isinstance(out, ModelView):
                return out
            return ModelView.from_raycast(out, getattr(out, "intrinsics", None) or K,
                                          getattr(out, "T_world_cam", None) if getattr(
                                              out, "T_world_cam", None) is not None else T_init,
                                          self.device)
        raise TypeError(f"unsupported model type {type(model).__name__}")

    # ------------------------------------------------------------ track
    def track(self, frame, model: ModelLike, T_init=None) -> TrackResult:
        """Track an :class:`~neural_mapping.types.RGBDFrame` (or call with arrays, see
        :meth:`track_depth`)."""
        return self.track_depth(frame.depth, getattr(frame, "color", None), frame.intrinsics,
                                model, T_init)

    def track_depth(self, depth, color, intrinsics: CameraIntrinsics, model: ModelLike,
                    T_init=None) -> TrackResult:
        t0 = time.perf_counter()
        if T_init is None:
            T_init = self.initial_guess()
        if T_init is None:
            T_init = getattr(model, "T_world_ref", None)
            if T_init is None:
                T_init = getattr(model, "T_world_cam", np.eye(4))
        T_init = np.asarray(T_init, dtype=np.float64)
        try:
            view = self._model_view(model, intrinsics, T_init)
            result = self._track(depth, intrinsics, view, T_init)
        except torch.linalg.LinAlgError:
            result = TrackResult(T_init.copy(), False, "numerical")
        result.time_s = time.perf_counter() - t0
        self._record(result)
        return result

    def _pyramid(self, depth, intrinsics: CameraIntrinsics):
        cfg = self.config
        d = _to_tensor(depth, self.device)
        d = torch.where((d > cfg.depth_min_m) & (d < cfg.depth_max_m), d, torch.zeros_like(d))  # NaN -> 0
        f = max(1, intrinsics.width // cfg.base_width)
        levels = []
        K = intrinsics
        for lvl in range(len(cfg.iterations)):
            d = downsample_depth(d, f)
            K = _scaled_to(K, d.shape[1], d.shape[0])
            levels.append((d, K))
            f = 2
        levels.reverse()  # coarse to fine
        out = []
        for lvl, (d, K) in enumerate(levels):
            X = _xyz(d, K)
            N, nvalid = _normals_soa(X, d)
            m = torch.nonzero(nvalid.reshape(-1)).squeeze(1)
            if lvl == len(levels) - 1 and cfg.finest_stride > 1:
                m = m[::cfg.finest_stride]
            n = int(m.numel())
            npad = max(_CHUNK, -(-n // _CHUNK) * _CHUNK)
            P = torch.zeros((3, npad), dtype=d.dtype, device=d.device)
            Nf = torch.zeros((3, npad), dtype=d.dtype, device=d.device)
            for i in range(3):
                P[i, :n] = X[i].reshape(-1)[m]
                Nf[i, :n] = N[i].reshape(-1)[m]
            out.append(_Level(P, Nf, n))
        return out, int((levels[-1][0] > 0).sum())

    def _track(self, depth, intrinsics, view: Optional[ModelView], T_init) -> TrackResult:
        cfg = self.config
        if view is None or view.num_valid < cfg.min_valid_points:
            return TrackResult(T_init.copy(), False, "no_model")
        pyr, n_valid = self._pyramid(depth, intrinsics)
        if pyr[-1].n < cfg.min_valid_points:
            return TrackResult(T_init.copy(), False, "no_depth", valid_points=n_valid)
        T_ref_world = inv_pose(view.T_world_ref)
        T = T_ref_world @ T_init  # T_ref_cam (float64)
        total_it = 0
        stats = None
        levels_info = []
        for lvl, L in enumerate(pyr):
            iters = cfg.iterations[lvl]
            max_dist = cfg.max_dist_m[lvl]
            for it in range(iters):
                stats = self._step(L, T, view, max_dist)
                total_it += 1
                if stats is None:
                    break
                H, b, n_in, rss = stats
                if not torch.isfinite(H).all() or not torch.isfinite(b).all():
                    return TrackResult(T_init.copy(), False, "numerical", iterations=total_it)
                xi = self._solve(H, b)
                if xi is None:
                    return TrackResult(T_init.copy(), False, "numerical", iterations=total_it)
                T = se3_exp(xi) @ T
                if np.linalg.norm(xi[:3]) < cfg.eps_trans_m and np.linalg.norm(xi[3:]) < cfg.eps_rot_rad:
                    break
            levels_info.append((L.n, total_it))
        # Counts, residual and system of the finest level's last linearisation (at the pose
        # before its update, which is below eps when the level converged).
        L = pyr[-1]
        T_world_cam = orthonormalize(view.T_world_ref @ T)
        n_pts = L.n
        if stats is None:
            return TrackResult(T_init.copy(), False, "few_inliers", iterations=total_it,
                               valid_points=n_valid)
        H, b, n_in, rss = stats
        ratio = n_in / max(n_pts, 1)
        cond = self._condition(H, L)
        rms = math.sqrt(rss / max(n_in, 1))
        res = TrackResult(T_world_cam, True, "ok", inliers=n_in, residual=rms, iterations=total_it,
                          valid_points=n_valid, inlier_ratio=ratio, condition=cond,
                          levels=levels_info)
        dt, dr = pose_distance(T_init, T_world_cam)
        if not np.all(np.isfinite(T_world_cam)):
            res.reason = "numerical"
        elif n_in < max(cfg.min_inliers, cfg.min_inlier_ratio * n_pts):
            res.reason = "few_inliers"
        elif cond < cfg.degenerate_ratio:
            res.reason = "degenerate"
        elif rms > cfg.max_rms_m:
            res.reason = "large_residual"
        elif dt > cfg.max_motion_m or math.degrees(dr) > cfg.max_motion_deg:
            res.reason = "large_motion"
        if res.reason != "ok":
            res.ok = False
            res.T_world_cam = T_init.copy()
        return res

    def _step(self, L: _Level, T: np.ndarray, view: ModelView, max_dist: float):
        """One association + linearisation (kernels.icp_system, TorchScript).
        Returns (H 6x6, b 6, inliers, robust rss) or None below 6 inliers."""
        K = view.intrinsics
        dev = L.P.device
        R = torch.as_tensor(T[:3, :3], dtype=torch.float32, device=dev)
        t = torch.as_tensor(T[:3, 3:4], dtype=torch.float32, device=dev)
        M, n_in = kernels.icp_system(L.P, L.N, L.A, R, t, view.table, float(K.fx), float(K.fy),
                                     float(K.cx), float(K.cy), int(K.width), int(K.height),
                                     float(max_dist), float(self._cos_angle), float(self.config.huber_m),
                                     bool(self.config.depth_noise_weighting), _CHUNK)
        if n_in < 6:
            return None
        return M[:6, :6], M[:6, 6], n_in, float(M[6, 6])

    @staticmethod
    def _solve(H: torch.Tensor, b: torch.Tensor) -> Optional[np.ndarray]:
        Hn = H.cpu().numpy()
        bn = b.cpu().numpy()
        # tiny Levenberg damping keeps a (nearly) singular system finite; degeneracy itself is
        # detected on the final system.
        Hn = Hn + np.eye(6) * (1e-9 * np.trace(Hn) + 1e-12)
        try:
            xi = -np.linalg.solve(Hn, bn)
        except np.linalg.LinAlgError:
            return None
        return xi if np.all(np.isfinite(xi)) else None

    @staticmethod
    def _condition(H: torch.Tensor, L: _Level) -> float:
        """Smallest / largest eigenvalue of ``S H S`` with the rotation block scaled by the mean
        depth (so translations in m and rotations times a lever arm are comparable)."""
        Hn = H.cpu().numpy()
        zm = float(L.P[2, :L.n].mean()) if L.n else 1.0
        s = np.array([1, 1, 1, 1 / zm, 1 / zm, 1 / zm])
        ev = np.linalg.eigvalsh(Hn * s[:, None] * s[None, :])
        if not np.all(np.isfinite(ev)) or ev[-1] <= 0:
            return 0.0
        return float(max(ev[0], 0.0) / ev[-1])
