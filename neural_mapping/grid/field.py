"""The map as its products read it: a truncated signed-distance field on the blocks of a grid.

Every backend exposes its map through :meth:`MapBackend.field() <neural_mapping.backends.base.MapBackend.field>`
as a :class:`VoxelField`; meshing, occupancy, ray casting and the pictures read only this,
never a backend's own storage.  For the TSDF backend the field *is* its storage (views of
the block pool, zero copy); a neural backend decodes its features into a field on the same
blocks.

Conventions (per voxel, voxel ``(i, j, k)`` of block slot ``s``; voxel centres at
``(block_coord * B + (i, j, k) + 0.5) * voxel_size_m``)

* ``sdf``  ``[capacity, B, B, B]`` float32: signed distance / ``truncation_m``, clamped to
  ``[-1, 1]``; positive in front of surfaces (free side), 1 where nothing is known;
* ``weight`` ``[capacity, B, B, B]`` float32: confidence, ``> 0`` means observed; for the
  TSDF it is the number of fused observations (capped), and a backend without such a count
  must keep the same scale (occupancy thresholds it as "observations");
* ``color`` ``[capacity, B, B, B, 3]`` float32 0..255, or ``None``.

Slots ``>= grid.num_blocks`` hold garbage; readers use ``grid.num_blocks`` /
``grid.active_coords()`` and the block index of ``grid`` (``lookup``, ``voxel_index_xyz``).
A live field is valid until the map's next write (read it under the system's map lock);
``copy()`` makes a private one (``MappingSystem.snapshot()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from neural_mapping.grid.voxel_grid import AttributeSpec, VoxelBlockGrid

# The attribute layout of a field stored in a VoxelBlockGrid of its own (a snapshot, or a
# neural backend's decoded cache).
FIELD_ATTRIBUTES = (
    AttributeSpec("sdf", torch.float32, 1, 1.0),
    AttributeSpec("weight", torch.float32, 1, 0.0),
    AttributeSpec("color", torch.float32, 3, 0.0),
)


@dataclass
class VoxelField:
    grid: VoxelBlockGrid
    sdf: torch.Tensor
    weight: torch.Tensor
    color: Optional[torch.Tensor]
    truncation_m: float

    def __post_init__(self):
        B = self.grid.block_size
        cap = self.grid.capacity
        if tuple(self.sdf.shape) != (cap, B, B, B) or tuple(self.weight.shape) != (cap, B, B, B):
            raise ValueError(f"field tensors must be [{cap}, {B}, {B}, {B}], got sdf "
                             f"{tuple(self.sdf.shape)}, weight {tuple(self.weight.shape)}")
        if self.color is not None and tuple(self.color.shape) != (cap, B, B, B, 3):
            raise ValueError(f"field color must be [{cap}, {B}, {B}, {B}, 3], got {tuple(self.color.shape)}")
        if not self.truncation_m > 0:
            raise ValueError(f"truncation_m must be > 0, got {self.truncation_m}")

    # ---- shorthands for the grid geometry readers need
    @property
    def device(self) -> torch.device:
        return self.grid.device

    @property
    def voxel_size_m(self) -> float:
        return self.grid.voxel_size_m

    @property
    def block_size(self) -> int:
        return self.grid.block_size

    @property
    def num_blocks(self) -> int:
        return self.grid.num_blocks

    @property
    def has_color(self) -> bool:
        return self.color is not None

    @classmethod
    def of_grid(cls, grid: VoxelBlockGrid, truncation_m: float) -> "VoxelField":
        """The field stored in a grid with :data:`FIELD_ATTRIBUTES` (views, no copy)."""
        return cls(grid, grid.attrs["sdf"], grid.attrs["weight"], grid.attrs.get("color"),
                   float(truncation_m))

    def copy(self) -> "VoxelField":
        """A private copy (its own grid with :data:`FIELD_ATTRIBUTES`, the same blocks; slots may differ)."""
        specs = FIELD_ATTRIBUTES if self.color is not None else FIELD_ATTRIBUTES[:2]
        n = self.grid.num_blocks
        state = {
            "voxel_size_m": self.grid.voxel_size_m, "block_size": self.grid.block_size,
            "attributes": [(s.name, str(s.dtype).replace("torch.", ""), s.channels, s.init) for s in specs],
            "block_coords": self.grid.block_coords[:n].clone(),
            "attrs": {"sdf": self.sdf[:n].clone(), "weight": self.weight[:n].clone(),
                      **({"color": self.color[:n].clone()} if self.color is not None else {})},
        }
        grid = VoxelBlockGrid.from_state_dict(state, device=self.grid.device, max_capacity=max(16, n))
        return VoxelField.of_grid(grid, self.truncation_m)
