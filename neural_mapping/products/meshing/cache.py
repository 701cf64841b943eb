"""Incremental meshing: a per-block mesh cache fed by the blocks integration changes.

::

    backend.integrate(...) ─► stats["slots"] ─► MeshCache.mark_dirty(grid, slots)  (mapping thread)
    MeshCache.update(field, max_blocks) ─► MeshUpdate(changed, emptied, ...)      (reader, map lock)
    MeshCache.full_mesh() == extract_mesh(field)   once nothing is dirty

``mark_dirty`` / ``mark_all_dirty`` / ``invalidate`` read only block coordinates: they take
the :class:`~neural_mapping.grid.field.VoxelField` or just its
:class:`~neural_mapping.grid.voxel_grid.VoxelBlockGrid`; ``update`` meshes the field.

Keys
    Blocks are keyed by their integer block coordinate packed in one Python int
    (:func:`pack_block_keys` / :func:`unpack_block_keys`), not by slot: slots are
    stable while the grid lives, but a grid swapped by ``load()`` or cleared by
    ``reset()`` reuses them for other coordinates.

Dirty set
    ``mark_dirty`` records each block with the version (or call counter) at which it
    *became* dirty; a block already dirty keeps its age.  The dict's insertion
    order is therefore the age order, and ``update(max_blocks=n)`` takes the ``n``
    oldest; the rest stay dirty for the next call.

Update
    A block's cubes read its own voxels and the first layer of its +x/+y/+z
    neighbours (see :mod:`~neural_mapping.products.meshing.marching_cubes`), so when a block
    changes, it and its allocated -x/-y/-z neighbours (:func:`dependent_slots`) are
    re-extracted, all in **one** vectorised :func:`extract_block_meshes` call.  Only the
    processed dirty blocks leave the dirty set (a dependent that is dirty itself stays
    dirty, so its own dependents are redone when its turn comes).
    When the dirty set is empty, every cached piece was extracted after the last
    change of every voxel it reads, so the union of the pieces is the full extraction
    (vertices are keyed by grid edge, so a vertex shared by two blocks has the same
    position and color in both).  The work is proportional to the number of dirty
    blocks (lookups in the dense block index, marching cubes over those blocks, a
    dict update per block), never to the size of the map.

Pieces
    :class:`BlockMesh` is a block's triangles as a numpy *triangle soup* (3 rows per
    triangle, counter-clockwise towards free space) with uint8 RGB per row, plus
    the global edge key of every corner (to rebuild an indexed mesh by
    deduplicating keys).  Soups are what ``visualization_msgs/Marker`` TRIANGLE_LIST
    wants, so a publisher concatenates them without reindexing.

Thread safety: every public method takes an internal lock; the field must not be
written during :meth:`MeshCache.update` (the system calls it under its map lock).
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch

from neural_mapping.grid.field import VoxelField
from neural_mapping.grid.voxel_grid import VoxelBlockGrid
from neural_mapping.products import require_field
from neural_mapping.products.meshing.marching_cubes import dependent_slots, extract_block_meshes
from neural_mapping.products.meshing.mesh import Mesh

__all__ = ["BlockMesh", "MeshUpdate", "MeshCache", "pack_block_keys", "unpack_block_keys",
           "soups_to_mesh"]

# What the dirty-set methods accept: a field, or only its grid (block coordinates are all they read).
FieldOrGrid = Union[VoxelField, VoxelBlockGrid]

_KB = 21                    # bits per block coordinate
_KOFF = 1 << (_KB - 1)      # block coordinates in [-2^20, 2^20)
_KMASK = (1 << _KB) - 1


def pack_block_keys(coords: torch.Tensor) -> torch.Tensor:
    """int64 keys ``[N]`` of block coordinates ``[N, 3]`` (same device)."""
    c = coords.to(torch.int64) + _KOFF
    return (c[:, 0] << (2 * _KB)) | (c[:, 1] << _KB) | c[:, 2]


def unpack_block_keys(keys) -> torch.Tensor:
    """Block coordinates ``[N, 3]`` int64 of keys (tensor, array or list of ints)."""
    k = torch.as_tensor(keys, dtype=torch.int64).reshape(-1)
    return torch.stack([(k >> (2 * _KB)) & _KMASK, (k >> _KB) & _KMASK, k & _KMASK], dim=1) - _KOFF


class BlockMesh:
    """The triangles owned by one block (numpy, CPU, immutable by convention).

    ``vertices [3T, 3]`` float32 world metres, triangle ``t`` = rows ``3t .. 3t+2``
    (counter-clockwise seen from free space); ``colors [3T, 3]`` uint8 RGB per row;
    ``keys [T, 3]`` int64 global edge key of each corner
    (:func:`~neural_mapping.products.meshing.marching_cubes.edge_keys`).
    """

    __slots__ = ("keys", "vertices", "colors")

    def __init__(self, keys: np.ndarray, vertices: np.ndarray, colors: np.ndarray):
        self.keys = keys
        self.vertices = vertices
        self.colors = colors

    @property
    def num_triangles(self) -> int:
        return int(self.keys.shape[0])

    def same_as(self, other: Optional["BlockMesh"]) -> bool:
        return (other is not None and other.keys.shape == self.keys.shape
                and np.array_equal(other.vertices, self.vertices)
                and np.array_equal(other.colors, self.colors)
                and np.array_equal(other.keys, self.keys))

    def __repr__(self) -> str:
        return f"BlockMesh({self.num_triangles} triangles)"


@dataclass
class MeshUpdate:
    """What one :meth:`MeshCache.update` changed.

    ``changed``: ``{block_key: BlockMesh}`` new or different pieces (insertion order:
    the order they were extracted in); ``emptied``: keys of blocks that had triangles
    and have none now (after ``invalidate()``: every block cached before it that has
    not been re-created); ``remaining_dirty``: dirty blocks left for the next call.
    """

    changed: Dict[int, BlockMesh] = field(default_factory=dict)
    emptied: List[int] = field(default_factory=list)
    remaining_dirty: int = 0
    dirty_processed: int = 0       # dirty blocks taken by this call
    blocks_extracted: int = 0      # with their dependents
    invalidated: bool = False      # the cache was invalidated (reset/load) since the last call
    seconds: float = 0.0

    @property
    def num_triangles(self) -> int:
        return sum(p.num_triangles for p in self.changed.values())

    def is_empty(self) -> bool:
        return not self.changed and not self.emptied


class MeshCache:
    """Per-block mesh cache with a dirty set. See the module docstring."""

    def __init__(self, weight_threshold: float = 0.0, chunk_blocks: int = 4096):
        self.weight_threshold = float(weight_threshold)
        self.chunk_blocks = int(chunk_blocks)
        self._lock = threading.RLock()
        self._pieces: Dict[int, BlockMesh] = {}
        self._dirty: Dict[int, int] = {}   # key -> version when it became dirty (age order)
        self._stale: set = set()           # keys cached before invalidate(), to report emptied
        self._invalidated = False
        self._seq = 0

    # ------------------------------------------------------------------ dirty set
    def mark_dirty(self, field: FieldOrGrid, slots, version: Optional[int] = None) -> int:
        """Mark the blocks in ``slots`` (of ``field``, or of a grid) dirty; returns how many
        became dirty.  ``version``: the map version of the change (default: a call counter)."""
        if slots is None:
            return 0
        grid = _blocks_of(field)
        slots = torch.as_tensor(slots, dtype=torch.int64, device=grid.device).reshape(-1)
        if slots.numel() == 0:
            return 0
        keys = pack_block_keys(grid.block_coords[slots]).tolist()
        return self.mark_dirty_keys(keys, version)

    def mark_dirty_keys(self, keys: Iterable[int], version: Optional[int] = None) -> int:
        with self._lock:
            self._seq += 1
            stamp = self._seq if version is None else int(version)
            d = self._dirty
            n0 = len(d)
            d.update((k, stamp) for k in keys if k not in d)
            return len(d) - n0

    def mark_all_dirty(self, field: FieldOrGrid, version: Optional[int] = None) -> int:
        """Mark every block of ``field`` (or of a grid) dirty."""
        grid = _blocks_of(field)
        return self.mark_dirty(grid, torch.arange(grid.num_blocks, device=grid.device), version)

    @property
    def num_dirty(self) -> int:
        return len(self._dirty)

    def dirty_since(self, key: int) -> Optional[int]:
        """Version at which block ``key`` became dirty, None if it is clean."""
        return self._dirty.get(key)

    def invalidate(self, field: Optional[FieldOrGrid] = None, version: Optional[int] = None) -> None:
        """Forget everything (the map was replaced or cleared): the next update reports every
        cached block as emptied unless it has triangles again, and, given ``field`` (or a
        grid), re-meshes all of its blocks."""
        grid = None if field is None else _blocks_of(field)
        with self._lock:
            self._stale.update(self._pieces)
            self._pieces.clear()
            self._dirty.clear()
            self._invalidated = True
            if grid is not None:
                self.mark_all_dirty(grid, version)

    # ------------------------------------------------------------------ update
    def update(self, field: VoxelField, max_blocks: Optional[int] = None) -> MeshUpdate:
        """Re-extract the dirty blocks of ``field`` (the ``max_blocks`` oldest if given) and
        their dependents in one vectorised call; returns what changed."""
        require_field(field)
        t0 = time.perf_counter()
        with self._lock:
            dirty = self._dirty
            if max_blocks is None or max_blocks >= len(dirty):
                sel = list(dirty)
            else:
                sel = list(itertools.islice(dirty, max(0, int(max_blocks))))
            out = MeshUpdate(invalidated=self._invalidated, dirty_processed=len(sel))
            emptied: set = set()
            if sel:
                self._extract(field, sel, out, emptied)
                for k in sel:
                    del dirty[k]
            if self._stale:
                emptied.update(self._stale)
                self._stale.clear()
            emptied.difference_update(out.changed)
            out.emptied = sorted(emptied)
            self._invalidated = False
            out.remaining_dirty = len(dirty)
        out.seconds = time.perf_counter() - t0
        return out

    def _extract(self, field: VoxelField, sel: List[int], out: MeshUpdate, emptied: set) -> None:
        grid = field.grid
        dev = grid.device
        coords = unpack_block_keys(sel).to(dev)
        slots = grid.lookup(coords)
        alive = slots >= 0
        if not bool(alive.all()):  # dirty blocks that no longer exist: their mesh is gone
            gone = torch.as_tensor(sel)[~alive.cpu()].tolist()
            emptied.update(k for k in gone if self._pieces.pop(k, None) is not None)
            slots = slots[alive]
        dep = dependent_slots(field, slots)
        out.blocks_extracted = int(dep.numel())
        if dep.numel() == 0:
            return
        bm = extract_block_meshes(field, dep, weight_threshold=self.weight_threshold,
                                  chunk_blocks=self.chunk_blocks)
        dep_keys = pack_block_keys(grid.block_coords[dep]).tolist()
        new_keys: List[int] = []
        if bm.num_triangles:
            ts = bm.triangle_slots
            tris = bm.triangles
            if not bool((ts[1:] >= ts[:-1]).all()):  # extraction emits them grouped by block
                order = torch.argsort(ts, stable=True)
                ts, tris = ts[order], tris[order]
            tslots, counts = torch.unique_consecutive(ts, return_counts=True)
            keys_np = bm.vertex_keys[tris].cpu().numpy()                               # [T, 3]
            soup = tris.reshape(-1)
            verts_np = bm.vertices[soup].cpu().numpy()                                 # [3T, 3]
            cols_np = bm.colors.round().clamp_(0, 255).to(torch.uint8)[soup].cpu().numpy()
            new_keys = pack_block_keys(grid.block_coords[tslots]).tolist()
            ends = np.cumsum(counts.cpu().numpy()).tolist()
            pieces = self._pieces
            changed = out.changed
            s = 0
            for k, e in zip(new_keys, ends):
                p = BlockMesh(keys_np[s:e].copy(), verts_np[3 * s:3 * e].copy(),
                              cols_np[3 * s:3 * e].copy())
                if not p.same_as(pieces.get(k)):
                    pieces[k] = p
                    changed[k] = p
                s = e
        now_empty = set(dep_keys).difference(new_keys)
        for k in now_empty:
            if self._pieces.pop(k, None) is not None:
                emptied.add(k)

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._pieces)

    def pieces(self) -> Dict[int, BlockMesh]:
        """Snapshot ``{block_key: BlockMesh}`` of every cached block with triangles."""
        with self._lock:
            return dict(self._pieces)

    @property
    def num_triangles(self) -> int:
        with self._lock:
            return sum(p.num_triangles for p in self._pieces.values())

    def full_mesh(self) -> Mesh:
        """Indexed mesh of the union of the cached pieces (vertices deduplicated by edge key).
        Equals ``extract_mesh(field)`` (up to vertex/triangle order) when nothing is dirty."""
        with self._lock:
            parts = list(self._pieces.values())
        return soups_to_mesh(parts)


def soups_to_mesh(parts: Sequence[BlockMesh]) -> Mesh:
    """Indexed :class:`~neural_mapping.products.meshing.mesh.Mesh` of block pieces (shared keys merged)."""
    parts = [p for p in parts if p.num_triangles]
    if not parts:
        return Mesh.empty()
    keys = np.concatenate([p.keys.reshape(-1) for p in parts])
    verts = np.concatenate([p.vertices for p in parts])
    cols = np.concatenate([p.colors for p in parts])
    uniq, first, inv = np.unique(keys, return_index=True, return_inverse=True)
    return Mesh(verts[first], inv.reshape(-1, 3).astype(np.int32), cols[first])


def _blocks_of(field: FieldOrGrid) -> VoxelBlockGrid:
    if isinstance(field, VoxelField):
        return field.grid
    if isinstance(field, VoxelBlockGrid):
        return field
    raise TypeError(f"expected a VoxelField or VoxelBlockGrid, got {type(field).__name__}")
