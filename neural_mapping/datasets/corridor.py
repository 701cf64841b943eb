"""A long synthetic trajectory for memory tests: a camera walking a rectangular corridor loop.

The loop is a rectangle of ``length_m`` x ``width_m`` (x / z, world y down like the camera)
walked at ``speed_m_s`` with frames at ``rate_hz``, the camera looking along the path.  Depth is
rendered analytically from the inside of the current side's corridor box (2 m wide, 2.4 m high,
its end walls at the loop's corners) with a few boxes along the walls, so a frame always sees
walls, floor and ceiling.  Deterministic; no files.
"""

from __future__ import annotations

from typing import Iterator, Tuple

import numpy as np

from neural_mapping.types import CameraIntrinsics, RGBDFrame

HALF_W, HALF_H = 1.0, 1.2   # corridor half width / half height


def _slab_exit(o, d, lo, hi):
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1, t2 = (lo - o) * inv, (hi - o) * inv
    return np.nanmin(np.maximum(t1, t2), -1), np.nanmax(np.minimum(t1, t2), -1)


class CorridorLoop:
    """``frames(n)`` yields :class:`RGBDFrame` with ground-truth poses; see the module docstring."""

    def __init__(self, length_m: float = 30.0, width_m: float = 20.0, speed_m_s: float = 1.0,
                 rate_hz: float = 30.0, intrinsics: CameraIntrinsics = CameraIntrinsics(
                     160, 120, 131.25, 131.25, 79.5, 59.5)):
        self.length_m, self.width_m = float(length_m), float(width_m)
        self.step_m = float(speed_m_s) / float(rate_hz)
        self.rate_hz = float(rate_hz)
        self.K = intrinsics
        L, W = self.length_m, self.width_m
        self.corners = np.array([[0, 0], [L, 0], [L, W], [0, W]], dtype=np.float64)  # (x, z)
        K = intrinsics
        u, v = np.meshgrid(np.arange(K.width), np.arange(K.height))
        self._d_cam = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones(u.shape)], -1)

    @property
    def perimeter_m(self) -> float:
        return 2 * (self.length_m + self.width_m)

    def pose_at(self, s: float) -> Tuple[np.ndarray, int]:
        """``(T_world_cam, side)`` at arc length ``s`` metres."""
        s = s % self.perimeter_m
        sides = [self.length_m, self.width_m, self.length_m, self.width_m]
        side = 0
        while s >= sides[side]:
            s -= sides[side]
            side += 1
        a, b = self.corners[side], self.corners[(side + 1) % 4]
        fwd = (b - a) / np.linalg.norm(b - a)
        p = a + fwd * s
        d = np.array([fwd[0], 0.0, fwd[1]])
        R = np.stack([np.array([d[2], 0.0, -d[0]]), np.array([0.0, 1.0, 0.0]), d], axis=1)
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, [p[0], 0.0, p[1]]
        return T, side

    def _box(self, side: int):
        a, b = self.corners[side], self.corners[(side + 1) % 4]
        lo2, hi2 = np.minimum(a, b) - HALF_W, np.maximum(a, b) + HALF_W
        return (np.array([lo2[0], -HALF_H, lo2[1]]), np.array([hi2[0], HALF_H, hi2[1]]))

    def depth(self, T: np.ndarray, side: int) -> np.ndarray:
        d = self._d_cam @ T[:3, :3].T
        o = np.broadcast_to(T[:3, 3], d.shape)
        t, _ = _slab_exit(o, d, *self._box(side))
        # a box against the wall every 3 m along the side (something besides planes)
        a, b = self.corners[side], self.corners[(side + 1) % 4]
        fwd = (b - a) / np.linalg.norm(b - a)
        n = np.array([fwd[1], -fwd[0]])
        for k in np.arange(1.5, np.linalg.norm(b - a), 3.0):
            c = a + fwd * k + n * (HALF_W - 0.25) * (1 if int(k) % 2 else -1)
            lo = np.array([c[0] - 0.25, 0.4, c[1] - 0.25])
            hi = np.array([c[0] + 0.25, HALF_H, c[1] + 0.25])
            tf, tn = _slab_exit(o, d, lo, hi)
            hit = (tn <= tf) & (tn > 1e-6)
            t = np.where(hit & (tn < t), tn, t)
        return np.where(np.isfinite(t), t, 0.0).astype(np.float32)

    def frames(self, n: int, start: int = 0) -> Iterator[RGBDFrame]:
        for i in range(start, start + n):
            T, side = self.pose_at(i * self.step_m)
            depth = self.depth(T, side)
            yield RGBDFrame(depth, self.K, None, timestamp=i / self.rate_hz, pose=T, index=i)
