"""Analytic depth rendering of a room corner with boxes (axis-aligned boxes, slab method)."""

import numpy as np

from neural_mapping.types import CameraIntrinsics

K_VGA = CameraIntrinsics(640, 480, 525.0, 525.0, 319.5, 239.5)
K_QVGA = K_VGA.scaled(0.5)  # 320 x 240: the tracker's working resolution, fast tests

# World frame: y down (like the camera), the camera looks roughly along +z.
ROOM = (np.array([-1.8, -1.2, -1.0]), np.array([1.6, 1.0, 2.6]))  # seen from inside
BOXES = [
    (np.array([0.6, 0.4, 1.6]), np.array([1.1, 1.0, 2.2])),     # box on the floor, right
    (np.array([-1.0, 0.6, 1.8]), np.array([-0.5, 1.0, 2.4])),   # low box on the floor, left
    (np.array([-0.2, -0.5, 2.3]), np.array([0.3, 0.0, 2.6])),   # box against the back wall
    (np.array([1.3, -0.8, 0.9]), np.array([1.6, -0.3, 1.4])),   # shelf on the right wall
]


def _rays(K, T_world_cam):
    u, v = np.meshgrid(np.arange(K.width), np.arange(K.height))
    d_cam = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u, dtype=float)], -1)
    d_world = d_cam @ T_world_cam[:3, :3].T
    return np.broadcast_to(T_world_cam[:3, 3], d_world.shape), d_world


def _slabs(o, d, lo, hi):
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1 = (lo - o) * inv
        t2 = (hi - o) * inv
    tmin = np.nanmax(np.minimum(t1, t2), -1)
    tmax = np.nanmin(np.maximum(t1, t2), -1)
    return tmin, tmax


def render_depth(T_world_cam, K=K_VGA, boxes=BOXES, room=ROOM, walls_only=None):
    """Depth (float32 metres, z along the optical axis) of the scene seen from ``T_world_cam``.

    ``walls_only='plane'`` renders a single flat wall at world z = 2 instead (degenerate)."""
    o, d = _rays(K, T_world_cam)
    if walls_only == "plane":
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (2.0 - o[..., 2]) / d[..., 2]
        t = np.where(t > 0, t, np.inf)
    else:
        _, t = _slabs(o, d, *room)  # exit point of the room box
        for lo, hi in boxes:
            tn, tf = _slabs(o, d, lo, hi)
            hit = (tn <= tf) & (tn > 1e-6)
            t = np.where(hit & (tn < t), tn, t)
    # t is along d, whose camera z component is 1: depth == t
    depth = np.where(np.isfinite(t), t, 0.0).astype(np.float32)
    return depth
