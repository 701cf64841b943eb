"""Map products: what the map is turned into for its users, read from a
:class:`~neural_mapping.grid.field.VoxelField` only (never a backend's own storage).

* :mod:`~neural_mapping.products.meshing`: marching cubes, mesh containers and PLY output,
  and the incremental per-block mesh cache fed by the blocks integration changes;
* :mod:`~neural_mapping.products.occupancy`: planner outputs (map frame, voxel
  classification, 2D occupancy grid, ESDF slice and costmap, Nav2 map files).
"""

from neural_mapping.grid.field import VoxelField


def require_field(field) -> VoxelField:
    """``field`` if it is a :class:`VoxelField` (products read nothing else), else TypeError."""
    if not isinstance(field, VoxelField):
        raise TypeError(f"expected a VoxelField (backend.field()), got {type(field).__name__}")
    return field
