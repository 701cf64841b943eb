"""Boundary types: camera intrinsics, RGB-D frames, poses.

Everything that enters the core passes through these constructors, which check
shape, dtype and values and raise ``ValueError``/``TypeError`` with a message
that says what was wrong.  Conventions: depth in metres (float32, invalid = 0 or
NaN), color uint8 RGB (H, W, 3), poses ``T_world_cam`` 4x4 camera-to-world with
the camera in the optical convention of REP-103 (x right, y down, z forward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

RIGID_TOL = 1e-3  # |R R^T - I| and |det R - 1| tolerance (7-Scenes stores ~8 digits)


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of an undistorted (or negligibly distorted) camera."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self):
        for name in ("width", "height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"CameraIntrinsics.{name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        for name in ("fx", "fy", "cx", "cy"):
            v = getattr(self, name)
            try:
                fv = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"CameraIntrinsics.{name} must be a number, got {v!r}") from None
            if not math.isfinite(fv):
                raise ValueError(f"CameraIntrinsics.{name} must be finite, got {v!r}")
            object.__setattr__(self, name, fv)
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"CameraIntrinsics focal lengths must be > 0, got fx={self.fx}, fy={self.fy}")

    @classmethod
    def from_matrix(cls, K, width: int, height: int) -> "CameraIntrinsics":
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"intrinsic matrix must be 3x3, got shape {K.shape}")
        return cls(width, height, K[0, 0], K[1, 1], K[0, 2], K[1, 2])

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled(self, factor: float) -> "CameraIntrinsics":
        """Intrinsics of the image resized by ``factor`` (pixel-center convention)."""
        w = max(1, int(round(self.width * factor)))
        h = max(1, int(round(self.height * factor)))
        sx, sy = w / self.width, h / self.height
        return CameraIntrinsics(w, h, self.fx * sx, self.fy * sy,
                                (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5)


def check_pose(T, name: str = "pose") -> np.ndarray:
    """Return ``T`` as a float64 4x4 rigid transform or raise ``ValueError``."""
    try:
        T = np.asarray(T, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 4x4 numeric matrix") from None
    if T.shape != (4, 4):
        raise ValueError(f"{name} must be 4x4, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise ValueError(f"{name} has non-finite entries")
    if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-9):
        raise ValueError(f"{name} last row must be [0 0 0 1], got {T[3].tolist()}")
    R = T[:3, :3]
    ortho = np.abs(R @ R.T - np.eye(3)).max()
    det = np.linalg.det(R)
    if ortho > RIGID_TOL or abs(det - 1.0) > RIGID_TOL:
        raise ValueError(f"{name} is not rigid: max|R R^T - I| = {ortho:.2e}, det R = {det:.6f}")
    return T


@dataclass
class RGBDFrame:
    """One registered RGB-D observation.

    ``depth``: (H, W) float32 metres, invalid = 0 or NaN (normalised to 0 here).
    ``color``: optional (H, W, 3) uint8 RGB, same size as depth.
    ``pose``: optional ``T_world_cam`` (ground truth or external input).
    """

    depth: np.ndarray
    intrinsics: CameraIntrinsics
    color: Optional[np.ndarray] = None
    timestamp: float = 0.0
    pose: Optional[np.ndarray] = None
    index: int = 0
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.intrinsics, CameraIntrinsics):
            raise TypeError(f"intrinsics must be CameraIntrinsics, got {type(self.intrinsics).__name__}")
        d = self.depth
        if not isinstance(d, np.ndarray):
            raise TypeError(f"depth must be a numpy array, got {type(d).__name__}")
        if d.ndim != 2:
            raise ValueError(f"depth must be (H, W), got shape {d.shape}")
        if d.dtype != np.float32:
            raise TypeError(f"depth must be float32 metres, got {d.dtype} (convert uint16 mm with "
                            "depth_from_uint16(raw, scale))")
        h, w = d.shape
        if (w, h) != (self.intrinsics.width, self.intrinsics.height):
            raise ValueError(f"depth is {w}x{h} but intrinsics are {self.intrinsics.width}x"
                             f"{self.intrinsics.height}")
        bad = ~np.isfinite(d) | (d < 0)
        if bad.any():
            d = np.where(bad, np.float32(0), d)
        self.depth = np.ascontiguousarray(d)
        if self.color is not None:
            c = self.color
            if not isinstance(c, np.ndarray):
                raise TypeError(f"color must be a numpy array, got {type(c).__name__}")
            if c.dtype != np.uint8:
                raise TypeError(f"color must be uint8 RGB, got {c.dtype}")
            if c.ndim != 3 or c.shape[2] != 3:
                raise ValueError(f"color must be (H, W, 3) RGB, got shape {c.shape}")
            if c.shape[:2] != d.shape:
                raise ValueError(f"color is {c.shape[1]}x{c.shape[0]} but depth is {w}x{h}: depth and "
                                 "color must be registered (same size and intrinsics)")
            self.color = np.ascontiguousarray(c)
        if self.pose is not None:
            self.pose = check_pose(self.pose, "frame pose")
        if not math.isfinite(float(self.timestamp)):
            raise ValueError(f"timestamp must be finite, got {self.timestamp!r}")
        self.timestamp = float(self.timestamp)


def depth_from_uint16(raw: np.ndarray, scale: float) -> np.ndarray:
    """uint16 depth (``scale`` units per metre, 0 = invalid) to float32 metres."""
    if raw.dtype != np.uint16:
        raise TypeError(f"expected uint16 depth, got {raw.dtype}")
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"depth scale must be a positive number, got {scale!r}")
    d = raw.astype(np.float32) * np.float32(1.0 / scale)
    d[raw == 65535] = 0.0  # saturated / invalid marker used by some sensors
    return d
