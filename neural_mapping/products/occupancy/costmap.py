"""ESDF slice and inflated costmap of a 2D occupancy grid (:mod:`.grid2d`).

ESDF slice: Euclidean distance (m) from each cell centre to the nearest occupied
cell centre of the 2D grid (exact, ``scipy.ndimage.distance_transform_edt``: a
2D slice is small), clipped to ``esdf_max_distance_m``; unknown cells are not
obstacles and are left out of the point cloud.  Costmap: Nav2 inflation layer
semantics on the OccupancyGrid scale: occupied 100, within the inscribed radius
99, within the inflation radius ``1 + round(97 * exp(-k (d - r_inscribed)))``
(98..1, ``k = costmap_cost_scaling_factor``), else 0; unknown stays -1.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from neural_mapping.products.occupancy.grid2d import OCCUPIED, UNKNOWN, OccupancyGrid2D
from neural_mapping.products.occupancy.map_frame import occupancy_config

__all__ = ["esdf_2d", "esdf_slice", "inflated_costmap"]


def esdf_2d(grid2d: OccupancyGrid2D, max_distance_m: float = float("inf")) -> np.ndarray:
    """Distance (m, float32 [H, W]) from each cell centre to the nearest occupied cell centre,
    clipped to ``max_distance_m`` (also where the grid has no occupied cell)."""
    from scipy.ndimage import distance_transform_edt

    occ = grid2d.data == OCCUPIED
    if not occ.any():
        return np.full(grid2d.data.shape, max_distance_m, dtype=np.float32)
    d = distance_transform_edt(~occ, sampling=grid2d.resolution_m)
    return np.minimum(d, max_distance_m).astype(np.float32)


def esdf_slice(grid2d: OccupancyGrid2D, cfg=None, z_m: Optional[float] = None
               ) -> Tuple[np.ndarray, np.ndarray]:
    """``(xyz [N, 3] float32, distance [N] float32)`` of the known (free or occupied) cells:
    cell centres in the map frame at height ``z_m`` (default: the middle of the band) and
    their ESDF distance (for a PointCloud2 with x, y, z, distance)."""
    o = occupancy_config(cfg)
    z = 0.5 * (o.occupancy_min_z_m + o.occupancy_max_z_m) if z_m is None else float(z_m)
    dist = esdf_2d(grid2d, o.esdf_max_distance_m)
    rows, cols = np.nonzero(grid2d.data != UNKNOWN)
    r = grid2d.resolution_m
    xyz = np.empty((rows.size, 3), dtype=np.float32)
    xyz[:, 0] = grid2d.origin_xy[0] + (cols + 0.5) * r
    xyz[:, 1] = grid2d.origin_xy[1] + (rows + 0.5) * r
    xyz[:, 2] = z
    return xyz, dist[rows, cols]


def inflated_costmap(grid2d: OccupancyGrid2D, cfg=None) -> OccupancyGrid2D:
    """Costmap OccupancyGrid (module docstring): 100 occupied, 99 inscribed, 98..1 decaying
    to the inflation radius, 0 free, -1 unknown."""
    o = occupancy_config(cfg)
    r_in, r_inf, k = o.costmap_inscribed_radius_m, o.costmap_inflation_radius_m, o.costmap_cost_scaling_factor
    d = esdf_2d(grid2d, max(r_inf, r_in) + grid2d.resolution_m)
    cost = np.zeros(d.shape, dtype=np.int16)
    decay = np.rint(1 + 97 * np.exp(-k * np.maximum(d - r_in, 0.0))).astype(np.int16)
    cost = np.where(d <= r_inf, np.clip(decay, 1, 98), cost)
    cost = np.where(d <= r_in, 99, cost)
    cost = np.where(grid2d.data == OCCUPIED, 100, cost)
    cost = np.where(grid2d.data == UNKNOWN, -1, cost)
    return OccupancyGrid2D(cost.astype(np.int8), grid2d.resolution_m, grid2d.origin_xy, grid2d.frame_id)

