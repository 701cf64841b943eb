"""Marching cubes over the blocks of a :class:`~neural_mapping.grid.field.VoxelField`
(torch; CPU and CUDA, one code path).

Conventions
    The field's ``sdf`` ``[cap, B, B, B]`` (normalised to [-1, 1], negative = behind the
    surface), ``weight`` (0 = unobserved) and ``color`` ``[cap, B, B, B, 3]`` (0..255, or
    None).  Voxel ``v`` (global integer coordinate ``block * B + local``) has its centre
    at ``(v + 0.5) * voxel_size_m``.

Cubes and ownership
    A cube is named by its min-corner voxel ``v`` and spans ``v .. v + 1``.  Block
    ``b`` owns the ``B^3`` cubes whose min corner lies in it; the cubes on its +x,
    +y, +z faces take their far corners from the 7 neighbours ``b + {0,1}^3 \\ 0``.
    A cube is skipped when any corner is unobserved (``weight <= weight_threshold``)
    or lies in a block that is not allocated.

Vertices
    Vertices sit on voxel-grid edges.  Each has a *global key*: the edge's
    min-endpoint voxel and its axis packed in one int64 (:func:`edge_keys`), so the
    same edge met by cubes of different blocks (or different chunks, or different
    calls) is one vertex, and its position/color (linear interpolation between
    the two endpoint voxels) is computed from the same two voxels the same way.
    The mesh is therefore watertight across block seams and independent of the
    block size: it is the dense marching-cubes mesh of the observed voxels.  The
    case table is :mod:`~neural_mapping.products.meshing.case_tables`.

Incremental meshing
    :func:`extract_block_meshes` returns :class:`~neural_mapping.products.meshing.mesh.BlockMeshes`:
    vertices keyed by global edge key and triangles tagged with the slot of the block that
    owns them.  The union (``BlockMeshes.concat``) of per-block results equals the full
    extraction.  When a block's voxels change, the cubes of the blocks that read it as a
    border change too: :func:`dependent_slots` gives that set
    (:mod:`~neural_mapping.products.meshing.cache` builds on it).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from neural_mapping.grid.field import VoxelField
from neural_mapping.grid.voxel_grid import VoxelBlockGrid
from neural_mapping.products import require_field
from neural_mapping.products.meshing.case_tables import CORNER_OFFSETS, EDGE_CORNERS, TRI_COUNT, TRI_TABLE
from neural_mapping.products.meshing.mesh import BlockMeshes, Mesh, any_occurrence

__all__ = ["extract_mesh", "extract_block_meshes", "dependent_slots", "edge_keys", "decode_edge_keys"]

# ------------------------------------------------------------------------------ edge keys
_KEY_BITS = 20                       # per coordinate; axis in the low 2 bits
_KEY_OFFSET = 1 << (_KEY_BITS - 1)   # coordinates in [-2^19, 2^19) voxels
_KEY_MASK = (1 << _KEY_BITS) - 1
_SHIFT_X, _SHIFT_Y, _SHIFT_Z = 2 + 2 * _KEY_BITS, 2 + _KEY_BITS, 2


def edge_keys(voxels: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """Global int64 key of the grid edge from voxel ``voxels [..., 3]`` along ``axis [...]`` (0/1/2)."""
    v = voxels.to(torch.int64) + _KEY_OFFSET
    return (v[..., 0] << _SHIFT_X) | (v[..., 1] << _SHIFT_Y) | (v[..., 2] << _SHIFT_Z) | axis.to(torch.int64)


def decode_edge_keys(keys: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`edge_keys`: ``(min-endpoint voxels [N, 3] int64, axis [N] int64)``."""
    v = torch.stack([(keys >> _SHIFT_X) & _KEY_MASK, (keys >> _SHIFT_Y) & _KEY_MASK,
                     (keys >> _SHIFT_Z) & _KEY_MASK], dim=-1) - _KEY_OFFSET
    return v, keys & 3


class _Tables:
    """Per-(device, block size) constant tensors."""

    _cache: Dict[Tuple[str, int], "_Tables"] = {}

    def __init__(self, device: torch.device, B: int):
        # The kernel's cube code has bit 4*dx + 2*dy + dz for corner (dx, dy, dz); reorder the
        # case tables (bit i for corner CORNER_OFFSETS[i]) to be indexed by that code.
        perm = np.zeros(256, dtype=np.int64)
        for code in range(256):
            for i, (dx, dy, dz) in enumerate(CORNER_OFFSETS):
                if code >> (4 * dx + 2 * dy + dz) & 1:
                    perm[code] |= 1 << i
        self.tri_table = torch.as_tensor(TRI_TABLE[perm], device=device)
        self.tri_count = torch.as_tensor(TRI_COUNT[perm], device=device)
        corners = np.asarray(CORNER_OFFSETS, dtype=np.int64)
        lo = np.asarray([np.minimum(corners[a], corners[b]) for a, b in EDGE_CORNERS])
        axis = np.asarray([int(np.argmax(np.abs(corners[a] - corners[b]))) for a, b in EDGE_CORNERS])
        # Edge key relative to the cube's key (keys are linear in the coordinates).
        rel = (lo[:, 0] << _SHIFT_X) + (lo[:, 1] << _SHIFT_Y) + (lo[:, 2] << _SHIFT_Z) + axis
        self.edge_key_delta = torch.as_tensor(rel, device=device)
        self.axis_unit_f = torch.eye(3, dtype=torch.float32, device=device)
        # Padded (B+1)^3 volume of a block: flat strides, the flat offset of each edge's min
        # endpoint from its cube, and for each position the block it lies in (octant of
        # b + {0,1}^3) and its flat index inside that block.
        P = B + 1
        self.pad_strides = torch.tensor([P * P, P, 1], dtype=torch.int64, device=device)
        self.edge_pad_lo = torch.as_tensor(lo @ np.array([P * P, P, 1]), device=device)
        r = np.arange(P)
        px, py, pz = np.meshgrid(r, r, r, indexing="ij")
        octant = (px // B) * 4 + (py // B) * 2 + (pz // B)
        local = ((px % B) * B + (py % B)) * B + (pz % B)
        self.pad_octant = torch.as_tensor(octant.reshape(-1), device=device)
        self.pad_local = torch.as_tensor(local.reshape(-1), device=device)
        # Neighbour offsets in octant order (octant 0 = the block itself).
        offs = np.asarray([[(o >> 2) & 1, (o >> 1) & 1, o & 1] for o in range(8)], dtype=np.int32)
        self.octant_offsets = torch.as_tensor(offs, device=device)

    @classmethod
    def get(cls, device: torch.device, B: int) -> "_Tables":
        key = (str(device), B)
        if key not in cls._cache:
            cls._cache[key] = cls(device, B)
        return cls._cache[key]


# ------------------------------------------------------------------------------ extraction
def _neighbour_slots(grid: VoxelBlockGrid, slots: torch.Tensor, tables: _Tables) -> torch.Tensor:
    """``[n, 8]`` slots of blocks ``b + {0,1}^3`` in octant order (-1 = not allocated)."""
    coords = grid.block_coords[slots]
    nb = (coords[:, None, :] + tables.octant_offsets[None]).reshape(-1, 3)
    return grid.lookup(nb).reshape(-1, 8)


def _padded_codes(field: VoxelField, nbr: torch.Tensor, thr: float) -> torch.Tensor:
    """``[n, B+1, B+1, B+1]`` int16 per voxel of each block and the first layer of its +x/+y/+z
    neighbours: bit 0 = negative sdf, bit 8 = unobserved (or in a missing block)."""
    B = field.block_size
    sdf, weight = field.sdf, field.weight
    n = nbr.shape[0]
    src = nbr.clamp(min=0)
    out = torch.empty((n, B + 1, B + 1, B + 1), dtype=torch.int16, device=field.device)
    for octant in range(8):
        d = ((octant >> 2) & 1, (octant >> 1) & 1, octant & 1)  # neighbour offset b + d
        # Voxels read from that neighbour: its first layer along each axis where d = 1.
        read = (slice(None),) + tuple(0 if di else slice(None) for di in d)
        write = (slice(None),) + tuple(B if di else slice(0, B) for di in d)
        t = sdf[read].index_select(0, src[:, octant])
        w = weight[read].index_select(0, src[:, octant])
        code = (t < 0).to(torch.int16) | ((w <= thr).to(torch.int16) << 8)
        if octant:
            missing = (nbr[:, octant] < 0).view((n,) + (1,) * (code.dim() - 1))
            code = code | (missing.to(torch.int16) << 8)
        out[write] = code
    return out


def _extract_chunk(field: VoxelField, slots: torch.Tensor, nbr: torch.Tensor, thr: float,
                   tables: _Tables) -> Optional[BlockMeshes]:
    grid = field.grid
    B = grid.block_size
    B3 = B * B * B
    dev = grid.device
    v = _padded_codes(field, nbr, thr)
    # Cube code, separably: bit 4*dx + 2*dy + dz for corner (dx, dy, dz) negative, bits
    # 8..15 for unobserved corners (bit 15 makes the int16 negative: still "not in 1..254").
    code = v[..., :-1] | (v[..., 1:] << 1)
    code = code[:, :, :-1] | (code[:, :, 1:] << 2)
    code = code[:, :-1] | (code[:, 1:] << 4)                          # [n, B, B, B]
    sel = (code >= 1) & (code <= 254)                                 # observed, crossing
    cube = sel.view(-1).nonzero().squeeze(1)                          # flat (block, x, y, z)
    if cube.numel() == 0:
        return None
    c = code.view(-1).index_select(0, cube).to(torch.int64)
    blk = cube // B3
    loc = cube % B3
    lxyz = torch.stack([loc // (B * B), (loc // B) % B, loc % B], dim=1)
    gvox = grid.block_coords[slots[blk]].to(torch.int64) * B + lxyz
    cube_key = edge_keys(gvox, torch.zeros_like(loc))

    # Expand cubes into triangles via the case table.
    ntri = tables.tri_count[c]
    tri_cube = torch.repeat_interleave(torch.arange(c.shape[0], device=dev), ntri)
    first = torch.cumsum(ntri, 0) - ntri
    k = torch.arange(tri_cube.shape[0], device=dev) - first.index_select(0, tri_cube)
    row = c.index_select(0, tri_cube) * tables.tri_table.shape[1] + k
    tri_edges = tables.tri_table.view(-1, 3).index_select(0, row)    # [T, 3] edge ids
    keys = cube_key.index_select(0, tri_cube)[:, None] + torch.take(tables.edge_key_delta, tri_edges)
    vkeys, inv = torch.unique(keys.reshape(-1), return_inverse=True)

    # Vertices: interpolate between the edge's two voxels, found through a triangle corner
    # that uses it (all corners with one key name the same two voxels).
    rep = any_occurrence(inv, vkeys.shape[0])
    rcube = tri_cube[rep // 3]
    redge = tri_edges.reshape(-1)[rep]
    raxis = vkeys & 3
    # Flat position of both endpoints in the padded (B+1)^3 volume of the cube's block.
    pp0 = (lxyz[rcube] * tables.pad_strides).sum(1) + tables.edge_pad_lo[redge]
    pp1 = pp0 + tables.pad_strides[raxis]
    nb = nbr[blk[rcube]]
    i0 = nb.gather(1, tables.pad_octant[pp0, None]).squeeze(1) * B3 + tables.pad_local[pp0]
    i1 = nb.gather(1, tables.pad_octant[pp1, None]).squeeze(1) * B3 + tables.pad_local[pp1]
    flat_sdf = field.sdf.view(-1)
    f0, f1 = flat_sdf.index_select(0, i0), flat_sdf.index_select(0, i1)
    t = (f0 / (f0 - f1)).unsqueeze(1)
    v_lo, _ = decode_edge_keys(vkeys)
    verts = (v_lo.to(torch.float32) + 0.5 + t * tables.axis_unit_f[raxis]) * grid.voxel_size_m
    if field.color is not None:
        flat_col = field.color.view(-1, 3)
        c0, c1 = flat_col.index_select(0, i0), flat_col.index_select(0, i1)
        cols = c0 + t * (c1 - c0)
    else:
        cols = torch.full_like(verts, 200.0)
    return BlockMeshes(vkeys, verts, cols, inv.view(-1, 3), slots[blk[tri_cube]])


def extract_block_meshes(field: VoxelField, slots: Optional[torch.Tensor | Sequence[int]] = None, *,
                         weight_threshold: float = 0.0, chunk_blocks: int = 4096) -> BlockMeshes:
    """Marching cubes of ``field`` over the cubes owned by ``slots`` (default: all active blocks).

    Triangles are tagged with their owning slot; vertices are keyed globally, so
    ``BlockMeshes.concat`` of the results for a partition of the blocks equals the
    result for all of them.  Work is done ``chunk_blocks`` blocks at a time: the
    peak memory is a few int16 ``(B+1)^3`` volumes per block of a chunk.
    """
    require_field(field)
    grid = field.grid
    dev = grid.device
    if slots is None:
        slots = torch.arange(grid.num_blocks, device=dev)
    else:
        slots = torch.as_tensor(slots, dtype=torch.int64, device=dev).reshape(-1)
        if slots.numel() and (int(slots.min()) < 0 or int(slots.max()) >= grid.num_blocks):
            raise ValueError(f"slots must lie in [0, {grid.num_blocks}), got range "
                             f"[{int(slots.min())}, {int(slots.max())}]")
        slots = torch.unique(slots)
    if slots.numel() == 0:
        return BlockMeshes.empty(dev)
    _check_key_range(grid)
    tables = _Tables.get(dev, grid.block_size)
    thr = float(weight_threshold)
    nbr = _neighbour_slots(grid, slots, tables)
    chunk = max(1, int(chunk_blocks))
    parts = []
    for s in range(0, slots.shape[0], chunk):
        part = _extract_chunk(field, slots[s:s + chunk], nbr[s:s + chunk], thr, tables)
        if part is not None:
            parts.append(part)
    if not parts:
        return BlockMeshes.empty(dev)
    return BlockMeshes.concat(parts)


def extract_mesh(field: VoxelField, *, weight_threshold: float = 0.0,
                 slots: Optional[torch.Tensor | Sequence[int]] = None, compute_normals: bool = False,
                 chunk_blocks: int = 4096) -> Mesh:
    """Triangle mesh (numpy) of the zero level set of ``field`` over the observed voxels.

    ``slots``: extract only the cubes owned by these blocks (default: all).
    Voxels with ``weight <= weight_threshold`` count as unobserved.
    """
    return extract_block_meshes(field, slots, weight_threshold=weight_threshold,
                                chunk_blocks=chunk_blocks).to_mesh(compute_normals)


def dependent_slots(field: VoxelField, slots: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Slots of ``field`` whose cubes read voxels of ``slots``: the blocks themselves and their
    allocated -x/-y/-z neighbours (7 per block). Re-extract these after ``slots`` changed."""
    require_field(field)
    grid = field.grid
    slots = torch.as_tensor(slots, dtype=torch.int64, device=grid.device).reshape(-1)
    if slots.numel() == 0:
        return slots
    tables = _Tables.get(grid.device, grid.block_size)
    coords = grid.block_coords[slots]
    nb = (coords[:, None, :] - tables.octant_offsets[None]).reshape(-1, 3)
    s = grid.lookup(nb)
    return torch.unique(s[s >= 0])


def _check_key_range(grid: VoxelBlockGrid) -> None:
    if grid.num_blocks == 0:
        return
    c = grid.active_coords()
    lo = int(c.min()) * grid.block_size
    hi = (int(c.max()) + 2) * grid.block_size
    if lo < -_KEY_OFFSET or hi >= _KEY_OFFSET:
        raise ValueError(f"voxel coordinates [{lo}, {hi}] exceed the edge-key range "
                         f"[-{_KEY_OFFSET}, {_KEY_OFFSET}) of marching cubes")


