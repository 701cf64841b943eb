"""Planner outputs from a :class:`~neural_mapping.grid.field.VoxelField`: 3D occupancy, 2D
occupancy grid, ESDF slice, costmap, Nav2 map files.  Core (no ROS imports); numpy out.

* :mod:`.map_frame`: the gravity-aligned map frame (``T_world_map``) and the config section;
* :mod:`.classify`: voxels classified occupied / free / unknown, the occupied-voxel cloud;
* :mod:`.grid2d`: :class:`OccupancyGrid2D` of a height band, one-shot or :class:`OccupancyMap2D`;
* :mod:`.costmap`: ESDF slice and inflated costmap of a 2D grid;
* :mod:`.nav2`: ``map_server`` PGM + YAML files, written and loaded.
"""

from neural_mapping.products.occupancy.map_frame import (
    gravity_aligned_map_transform, map_transform_from_config, occupancy_config, resolution_of,
    up_from_camera_pose)
from neural_mapping.products.occupancy.classify import occupied_voxels
from neural_mapping.products.occupancy.grid2d import (
    FREE, OCCUPIED, UNKNOWN, OccupancyGrid2D, OccupancyMap2D, occupancy_grid_2d)
from neural_mapping.products.occupancy.costmap import esdf_2d, esdf_slice, inflated_costmap
from neural_mapping.products.occupancy.nav2 import (
    NAV2_FREE_THRESH, NAV2_OCCUPIED_THRESH, PGM_FREE, PGM_OCCUPIED, PGM_UNKNOWN, load_nav2_map, read_pgm,
    save_nav2_map)

__all__ = [
    "gravity_aligned_map_transform", "map_transform_from_config", "occupancy_config", "resolution_of",
    "up_from_camera_pose", "occupied_voxels", "FREE", "OCCUPIED", "UNKNOWN", "OccupancyGrid2D",
    "OccupancyMap2D", "occupancy_grid_2d", "esdf_2d", "esdf_slice", "inflated_costmap",
    "NAV2_FREE_THRESH", "NAV2_OCCUPIED_THRESH", "PGM_FREE", "PGM_OCCUPIED", "PGM_UNKNOWN",
    "load_nav2_map", "read_pgm", "save_nav2_map",
]
