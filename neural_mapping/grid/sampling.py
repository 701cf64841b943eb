"""Reading a :class:`~neural_mapping.grid.field.VoxelField` at arbitrary points.

:func:`trilinear` is the one sampler of the field (ray casting refines its hits with it,
backends and products may use it too); it runs the TorchScript kernel
:func:`neural_mapping.kernels.trilinear` on the field's tensors and the block index of
``field.grid``.  :func:`index_args` is the grid's dense block index in the form the kernels
take (the only place outside ``voxel_grid.py`` that reads the index's private fields).
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from neural_mapping import kernels
from neural_mapping.grid.field import VoxelField
from neural_mapping.grid.voxel_grid import VoxelBlockGrid
from neural_mapping.grid.workspace import workspace

def index_args(grid: VoxelBlockGrid) -> Tuple[torch.Tensor, List[int], List[int], int, bool]:
    """``(index, origin, shape, block_size, long_index)``: the grid's dense block index
    (flattened), its box and whether linear voxel indices need int64 -- the first arguments
    of the lookup kernels (``kernels.voxel_index``, ``trilinear``, ``march``)."""
    return (grid._index.view(-1), list(grid._index_origin_list), list(grid._index_shape),
            grid.block_size, grid.voxel_index_dtype != torch.int32)


_CORNERS = ((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1))


def _corner_offsets(grid: VoxelBlockGrid):
    B, dt, device = grid.block_size, grid.voxel_index_dtype, grid.device
    return workspace().cached(("corner_offs", B, dt, device), lambda: (
        torch.tensor(_CORNERS, dtype=torch.int32, device=device).T.reshape(3, 8, 1),
        torch.tensor([(x * B + y) * B + z for x, y, z in _CORNERS], device=device, dtype=dt)[:, None]))


def trilinear(field: VoxelField, pts: torch.Tensor, *, with_grad: bool = False,
              with_color: bool = False) -> Dict[str, torch.Tensor]:
    """Trilinear interpolation of ``field`` at world points ``pts`` ``[3, K]`` (planar, on
    the field's device).

    Returns ``sdf`` [K] (renormalised over observed corners, 1.0 where none is),
    ``weight`` [K] (trilinear weight, unobserved corners count 0), and optionally
    ``grad`` [3, K] (d sdf / d x, per metre; unobserved corners read their stored
    value) and ``color`` [K, 3] (float 0..255; only if the field has color).
    """
    grid = field.grid
    offs, lin = _corner_offsets(grid)
    color = field.color if with_color else None
    s, w, g, c = kernels.trilinear(pts, *index_args(grid), field.sdf.view(-1), field.weight.view(-1),
                                   color, offs, lin, 1.0 / grid.voxel_size_m, with_grad)
    out = {"sdf": s, "weight": w}
    if g is not None:
        out["grad"] = g
    if c is not None:
        out["color"] = c
    return out
