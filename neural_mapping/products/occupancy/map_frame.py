"""The map frame of the planner outputs (gravity alignment) and the occupancy config section.

The 2D products live in a *map* frame whose z axis is up (REP-105), related to
the world frame of the poses by ``T_world_map`` (4x4, map -> world).  Dataset
world frames are not all z-up: the synthetic room and TUM's mocap frame are
z-up (``map_up_source=world_z``, the default), 7-Scenes' world frame is the
first KinectFusion camera's (y points roughly down; its ``gravity-direction.txt``
gives gravity in world coordinates, so use ``map_up_source=vector`` with
``map_up = -gravity``), and a live robot without a z-up odometry frame can
use ``first_camera`` (up = minus the first camera's optical y axis, i.e. the
first view held level).  :func:`gravity_aligned_map_transform` builds
``T_world_map``: z = up, x = world x projected onto the horizontal plane
(world y when world x is vertical), origin at the world origin or at a given
point (``map_origin=first_camera``: below the first camera by
``first_camera_height_m``, so map z = 0 is the floor).

``T_world_map`` is checked by :func:`check_map_transform` (a finite rigid 4x4; None is the
identity).
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

from neural_mapping.config import MappingConfig, OccupancyConfig

__all__ = ["occupancy_config", "resolution_of", "up_from_camera_pose", "gravity_aligned_map_transform",
           "map_transform_from_config", "check_map_transform"]


def occupancy_config(cfg: Union[MappingConfig, OccupancyConfig, None]) -> OccupancyConfig:
    """The occupancy section of ``cfg`` (the defaults for None)."""
    if cfg is None:
        return OccupancyConfig()
    if isinstance(cfg, MappingConfig):
        return cfg.occupancy
    if isinstance(cfg, OccupancyConfig):
        return cfg
    raise TypeError(f"expected a MappingConfig or OccupancyConfig, got {type(cfg).__name__}")


def resolution_of(ocfg: OccupancyConfig, voxel_size_m: float) -> float:
    """Cell size of the 2D grid: ``occupancy_resolution_m``, or the voxel size if that is 0."""
    return float(ocfg.occupancy_resolution_m) if ocfg.occupancy_resolution_m > 0 else float(voxel_size_m)


def up_from_camera_pose(T_world_cam: np.ndarray) -> np.ndarray:
    """Up vector (world) of an optical camera (x right, y down, z forward) held level:
    minus its y axis."""
    T = np.asarray(T_world_cam, dtype=np.float64)
    return -T[:3, 1] / np.linalg.norm(T[:3, 1])


def gravity_aligned_map_transform(up_world=(0.0, 0.0, 1.0), origin_world=None) -> np.ndarray:
    """``T_world_map`` (4x4, map -> world) of a map frame whose z axis is ``up_world``
    (world coordinates, any length; e.g. minus a gravity vector), whose x axis is the
    world x axis projected onto the horizontal plane (world y if x is vertical) and
    whose origin is ``origin_world`` (default: the world origin)."""
    up = np.asarray(up_world, dtype=np.float64).reshape(3)
    n = np.linalg.norm(up)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"up vector must be finite and non-zero, got {up_world!r}")
    z = up / n
    x = None
    for ref in (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])):
        p = ref - z * float(ref @ z)
        if np.linalg.norm(p) > 0.1:
            x = p / np.linalg.norm(p)
            break
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2] = x, y, z
    if origin_world is not None:
        T[:3, 3] = np.asarray(origin_world, dtype=np.float64).reshape(3)
    return T


def map_transform_from_config(cfg, first_pose: Optional[np.ndarray] = None) -> np.ndarray:
    """``T_world_map`` from ``map_up_source`` / ``map_up_x,y,z`` / ``map_origin`` /
    ``first_camera_height_m``; ``first_pose`` (``T_world_cam`` of the first frame) is needed
    for the ``first_camera`` choices."""
    o = occupancy_config(cfg)
    needs_pose = o.map_up_source == "first_camera" or o.map_origin == "first_camera"
    if needs_pose and first_pose is None:
        raise ValueError("map_up_source/map_origin 'first_camera' needs the first camera pose")
    if o.map_up_source == "world_z":
        up = np.array([0.0, 0.0, 1.0])
    elif o.map_up_source == "vector":
        up = np.array([o.map_up_x, o.map_up_y, o.map_up_z], dtype=np.float64)
    else:
        up = up_from_camera_pose(first_pose)
    origin = None
    if o.map_origin == "first_camera":
        upn = up / np.linalg.norm(up)
        origin = np.asarray(first_pose, dtype=np.float64)[:3, 3] - o.first_camera_height_m * upn
    return gravity_aligned_map_transform(up, origin)


def check_map_transform(T: Optional[np.ndarray]) -> np.ndarray:
    """``T_world_map`` as a float64 4x4 (identity for None); ValueError unless finite and rigid."""
    if T is None:
        return np.eye(4)
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f"T_world_map must be a finite 4x4 matrix, got shape {T.shape}")
    R = T[:3, :3]
    if np.abs(R @ R.T - np.eye(3)).max() > 1e-4:
        raise ValueError("T_world_map's rotation is not orthonormal")
    return T
