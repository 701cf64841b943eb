"""Pictures of an offline run: the trajectory, the 2D occupancy grid and views of the map.

Every view of the map is rendered by the map backend (:meth:`MapBackend.render
<neural_mapping.backends.base.MapBackend.render>`), so any backend gets the same pictures.

=============================  =========================================================
``trajectory.png``             top view of the poses vs ground truth (with ATE in the title)
``occupancy.png``              the 2D occupancy grid: free white, occupied black, unknown
                               grey; north (map +y) up
``view_color.png``,            the map from a bird's-eye pose looking at the scene centre
``view_shaded.png``            (:func:`birds_eye_view`; fused colour / Lambert-shaded normals)
``view_last_color.png``,       the same from the last camera pose
``view_last_shaded.png``
=============================  =========================================================
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict

import numpy as np

from neural_mapping.io.images import save_png
from neural_mapping.types import CameraIntrinsics

# near end of the rendered depth range of the pictures (the map's own minimum is the sensor's)
VIEW_DEPTH_MIN_M = 0.05


def write_pictures(result, dataset_name: str, intrinsics: CameraIntrinsics, cfg,
                   render_views: bool = True) -> Dict[str, Path]:
    """The pictures of a :class:`~neural_mapping.app.pipeline.RunResult` in ``result.out_dir``
    (none without an integrated frame); ``render_views=False``: no ``view_*.png``."""
    from neural_mapping.io.evaluation import evaluation_title, plot_trajectories

    out = result.out_dir
    files: Dict[str, Path] = {}
    if not len(result.poses):
        return files
    files["trajectory_plot"] = out / "trajectory.png"
    plot_trajectories(files["trajectory_plot"], result.gt_poses, result.poses,
                      title=evaluation_title(dataset_name, result.metrics),
                      labels=("ground truth", f"poses ({cfg.run.pose_source})"))
    if result.occupancy is not None:
        files["occupancy_png"] = out / "occupancy.png"
        save_png(files["occupancy_png"], occupancy_image(result.occupancy))
    if render_views:
        files.update(map_views(result.backend, result.mesh.vertices, result.poses, intrinsics,
                               cfg.run.render_width_px, cfg.integration.depth_max_m, out))
    return files


# ------------------------------------------------------------------------------ occupancy
def occupancy_image(grid2d, min_size_px: int = 400) -> np.ndarray:
    """``[H, W, 3]`` uint8 of an :class:`~neural_mapping.products.occupancy.OccupancyGrid2D`:
    free white, occupied black, unknown grey, map +y up, cells scaled up to at least
    ``min_size_px`` on the longer side."""
    from neural_mapping.products.occupancy import FREE, OCCUPIED

    data = np.asarray(grid2d.data)[::-1]  # image top row = largest y
    img = np.full(data.shape + (3,), 160, np.uint8)
    img[data == FREE] = 255
    img[data == OCCUPIED] = 0
    scale = max(1, int(np.ceil(min_size_px / max(1, max(data.shape)))))
    return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


# -------------------------------------------------------------------------- map views
def estimate_up(poses: np.ndarray) -> np.ndarray:
    """World "up" guessed from the cameras: the mean of their -y axes (cameras are held
    roughly upright; optical convention y down)."""
    up = -poses[:, :3, 1].mean(axis=0)
    n = np.linalg.norm(up)
    return up / n if n > 0.3 else np.array([0.0, 0.0, 1.0])


def look_at(eye, target, up) -> np.ndarray:
    """``T_world_cam`` (optical convention) at ``eye`` looking at ``target`` with ``up`` on top."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    fwd = target - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    if np.linalg.norm(right) < 1e-6:  # looking along up: pick any perpendicular
        right = np.cross(fwd, [1.0, 0.0, 0.0] if abs(fwd[0]) < 0.9 else [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = right, down, fwd, eye
    return T


def birds_eye_view(points: np.ndarray, cam_poses: np.ndarray, width: int, height: int,
                   elevation_deg: float = 60.0):
    """``(intrinsics, T_world_cam, depth_max_m)`` of a view from above-and-behind the cameras
    looking at the centre of ``points`` (robust bounding box), fitting them in the image."""
    up = estimate_up(cam_poses)
    pts = points if len(points) else cam_poses[:, :3, 3]
    side = cam_poses[:, :3, 3].mean(axis=0) - np.median(pts, axis=0)
    side -= up * (side @ up)
    if np.linalg.norm(side) < 1e-3:
        side = -cam_poses[0, :3, 2] - up * (-cam_poses[0, :3, 2] @ up)
    if np.linalg.norm(side) < 1e-3:
        side = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    side /= np.linalg.norm(side)
    # robust bounding box in a gravity-aligned frame (side, up x side, up)
    A = np.stack([side, np.cross(up, side), up], axis=1)
    local = pts @ A
    lo, hi = np.percentile(local, 1, axis=0), np.percentile(local, 99, axis=0)
    centre = A @ (0.5 * (lo + hi))
    radius = max(0.5 * float(np.linalg.norm(hi - lo)), 0.25)
    corners = np.array([A @ [x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    f = 0.9 * width
    K = CameraIntrinsics(width, height, f, f, (width - 1) / 2, (height - 1) / 2)
    el = math.radians(elevation_deg)
    direction = math.cos(el) * side + math.sin(el) * up

    def fits(dist: float) -> bool:
        T = look_at(centre + dist * direction, centre, up)
        p = (corners - T[:3, 3]) @ T[:3, :3]
        if np.any(p[:, 2] <= 1e-3):
            return False
        u = f * p[:, 0] / p[:, 2] + K.cx
        v = f * p[:, 1] / p[:, 2] + K.cy
        mu, mv = 0.04 * width, 0.04 * height
        return bool(np.all((u >= mu) & (u <= width - 1 - mu) & (v >= mv) & (v <= height - 1 - mv)))

    # the bounding sphere always fits; shrink towards the box's own footprint in the image
    dist = radius / math.sin(math.atan(min(width, height) / 2 / f)) * 1.05
    while dist > 0.3 * radius and fits(dist * 0.95):
        dist *= 0.95
    return K, look_at(centre + dist * direction, centre, up), dist + 2 * radius


def _uint8(x) -> np.ndarray:
    """A raycast colour (float 0..255 tensor) or a uint8 array -> uint8 numpy."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype != np.uint8:
        x = np.rint(np.clip(np.nan_to_num(x.astype(np.float32)), 0, 255)).astype(np.uint8)
    return x


def map_views(backend, mesh_vertices: np.ndarray, poses: np.ndarray, intrinsics: CameraIntrinsics,
              width_px: int, depth_max_m: float, out_dir: Path) -> Dict[str, Path]:
    """``view_{color,shaded}.png`` (bird's eye over ``mesh_vertices``) and
    ``view_last_{color,shaded}.png`` (from ``poses[-1]`` with ``intrinsics`` scaled to
    ``width_px``), rendered by ``backend``; ``depth_max_m``: the sensor range of the run."""
    from neural_mapping.grid.raycast import render_shaded

    H = max(1, int(round(width_px * 3 / 4)))
    K, T, dmax = birds_eye_view(np.asarray(mesh_vertices).reshape(-1, 3), poses, width_px, H)
    views = {"view": (K, T, max(dmax, depth_max_m)),
             "view_last": (intrinsics.scaled(width_px / intrinsics.width), poses[-1], depth_max_m * 1.5)}
    files: Dict[str, Path] = {}
    for name, (K, T, dmax) in views.items():
        rc = backend.render(K, T, color=True, depth_limits_m=(VIEW_DEPTH_MIN_M, float(dmax)))
        valid = rc.valid.detach().cpu().numpy().astype(bool)[..., None]
        files[f"{name}_color"] = out_dir / f"{name}_color.png"
        files[f"{name}_shaded"] = out_dir / f"{name}_shaded.png"
        save_png(files[f"{name}_color"], np.where(valid, _uint8(rc.color), 0).astype(np.uint8))
        save_png(files[f"{name}_shaded"], _uint8(render_shaded(rc, use_color=False)))
    return files
