"""Marching cubes over the sparse voxel-block grid (torch; CPU and CUDA, one code path).

Conventions
    TSDF attributes of :class:`~neural_mapping.grid.voxel_grid.VoxelBlockGrid`: ``tsdf``
    ``[cap, B, B, B]`` (normalised to [-1, 1], negative = behind the surface),
    ``weight`` (0 = unobserved) and ``color`` ``[cap, B, B, B, 3]`` (0..255).
    Voxel ``v`` (global integer coordinate ``block * B + local``) has its centre
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
    block size: it is the dense marching-cubes mesh of the observed voxels.

Case table
    Generated at import (:func:`build_case_tables`) with the standard corner/edge
    numbering of Lorensen & Cline / Bourke.  Instead of copying the classic
    256-entry triangle table (which resolves ambiguous faces differently in a
    case and its complement, so neighbouring cubes can disagree and leave holes
    (Duerst 1988)), each case's surface is built face by face: on every cube face the
    sign-change points are joined by segments; on an ambiguous face (negative
    corners on a diagonal) the negative corners are always separated, the choice
    the classic table makes for its low cases.  The rule depends on the face's
    four signs only, so the two cubes sharing a face agree, and the segments
    chain into closed loops.  Segments are oriented so that every triangle's
    counter-clockwise normal points towards +tsdf (free space), consistently
    across cubes.  Each loop is triangulated without diagonals lying in a cube
    face (which the neighbouring cube could repeat), by minimum diagonal length.
    Result: a closed, consistently oriented, edge-manifold surface wherever all
    cubes around it are observed.  On real data the mesh has the same vertices and
    the same number of triangles as Open3D's VoxelBlockGrid mesh of the same
    voxels (``bench/bench_meshing.py``).

Incremental meshing
    :func:`extract_block_meshes` returns :class:`BlockMeshes`: vertices keyed by
    global edge key and triangles tagged with the slot of the block that owns
    them.  The union (:meth:`BlockMeshes.concat`) of per-block results equals
    the full extraction.  When a block's voxels change, the cubes of the blocks
    that read it as a border change too: :func:`dependent_slots` gives that set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from neural_mapping.grid.voxel_grid import VoxelBlockGrid

__all__ = [
    "Mesh", "BlockMeshes", "extract_mesh", "extract_block_meshes", "dependent_slots",
    "write_ply", "mesh_to_open3d", "vertex_normals", "build_case_tables", "edge_keys",
    "decode_edge_keys",
    "CORNER_OFFSETS", "EDGE_CORNERS",
]

# ------------------------------------------------------------------------------ case tables
# Corner i of a cube at offset CORNER_OFFSETS[i] from its min corner (Bourke's numbering).
CORNER_OFFSETS: Tuple[Tuple[int, int, int], ...] = (
    (0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1))
# Edge j joins corners EDGE_CORNERS[j].
EDGE_CORNERS: Tuple[Tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))
# Faces as (outward normal, corners in cyclic order).
_FACES: Tuple[Tuple[Tuple[int, int, int], Tuple[int, int, int, int]], ...] = (
    ((0, 0, -1), (0, 1, 2, 3)), ((0, 0, 1), (4, 5, 6, 7)),
    ((0, -1, 0), (0, 1, 5, 4)), ((0, 1, 0), (3, 2, 6, 7)),
    ((-1, 0, 0), (0, 3, 7, 4)), ((1, 0, 0), (1, 2, 6, 5)))


def _edge_of(a: int, b: int) -> int:
    for j, (p, q) in enumerate(EDGE_CORNERS):
        if (p, q) == (a, b) or (p, q) == (b, a):
            return j
    raise KeyError((a, b))


def _case_loops(case: int) -> List[List[int]]:
    """Closed, oriented loops of edge ids for one case (bit i set = corner i negative)."""
    neg = [(case >> i) & 1 == 1 for i in range(8)]
    corner = np.asarray(CORNER_OFFSETS, dtype=np.float64)
    mid = np.asarray([(corner[a] + corner[b]) / 2 for a, b in EDGE_CORNERS])
    nxt: Dict[int, int] = {}

    def add_segment(ea: int, eb: int, normal, neg_corner: int) -> None:
        # Orient a -> b so that (b - a) x n_out points to the negative side.
        d = np.cross(mid[eb] - mid[ea], np.asarray(normal, dtype=np.float64))
        side = corner[neg_corner] - (mid[ea] + mid[eb]) / 2
        if float(d @ side) < 0:
            ea, eb = eb, ea
        assert ea not in nxt, (case, ea)
        nxt[ea] = eb

    for normal, cyc in _FACES:
        edges = [_edge_of(cyc[k], cyc[(k + 1) % 4]) for k in range(4)]  # edge k: cyc[k]-cyc[k+1]
        crossing = [k for k in range(4) if neg[cyc[k]] != neg[cyc[(k + 1) % 4]]]
        if len(crossing) == 2:
            k0, k1 = crossing
            negc = next(c for c in cyc if neg[c])
            add_segment(edges[k0], edges[k1], normal, negc)
        elif len(crossing) == 4:
            # Ambiguous face: separate the two (diagonal) negative corners.
            for k in range(4):
                if neg[cyc[k]]:
                    add_segment(edges[(k - 1) % 4], edges[k], normal, cyc[k])
    loops: List[List[int]] = []
    seen = set()
    for start in sorted(nxt):
        if start in seen:
            continue
        loop = [start]
        seen.add(start)
        e = nxt[start]
        while e != start:
            loop.append(e)
            seen.add(e)
            e = nxt[e]
        loops.append(loop)
    return loops


def _edge_faces() -> List[set]:
    faces = [set(cyc) for _, cyc in _FACES]
    return [{f for f, fc in enumerate(faces) if a in fc and b in fc} for a, b in EDGE_CORNERS]


_EDGE_FACES = _edge_faces()


def _triangulate(loop: List[int]) -> List[Tuple[int, int, int]]:
    """Minimum-length triangulation of a loop without diagonals along a cube face.

    A diagonal joining two vertices of one face would lie in that face, where the
    neighbouring cube may draw the same diagonal: the edge would then carry four
    triangles.  Diagonals between vertices on no common face run through the
    cube's interior, so the mesh stays edge-manifold.
    """
    n = len(loop)
    corner = np.asarray(CORNER_OFFSETS, dtype=np.float64)
    mid = [(corner[a] + corner[b]) / 2 for a, b in (EDGE_CORNERS[e] for e in loop)]

    def cost(i: int, j: int) -> float:
        if (j - i) % n in (1, n - 1):
            return 0.0  # a side of the loop
        if _EDGE_FACES[loop[i]] & _EDGE_FACES[loop[j]]:
            return float("inf")
        return float(np.linalg.norm(mid[i] - mid[j]))

    best: Dict[Tuple[int, int], Tuple[float, int]] = {}
    for span in range(2, n):
        for i in range(0, n - span):
            j = i + span
            best[i, j] = min((best.get((i, k), (0.0, -1))[0] + best.get((k, j), (0.0, -1))[0]
                              + cost(i, k) + cost(k, j), k) for k in range(i + 1, j))
    tris: List[Tuple[int, int, int]] = []

    def emit(i: int, j: int) -> None:
        if j - i < 2:
            return
        k = best[i, j][1]
        tris.append((loop[i], loop[k], loop[j]))
        emit(i, k)
        emit(k, j)

    if not np.isfinite(best[0, n - 1][0]):
        raise AssertionError(f"no face-free triangulation of loop {loop}")
    emit(0, n - 1)
    return tris


def build_case_tables() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(edge_mask [256] int32, tri_table [256, max_tri, 3] int64 (-1 pad), tri_count [256])``.

    ``edge_mask[c]`` has bit ``j`` set when edge ``j`` carries a vertex in case ``c``;
    ``tri_table[c, k]`` are the 3 edge ids of triangle ``k`` (counter-clockwise seen
    from the +tsdf side).
    """
    tris: List[List[Tuple[int, int, int]]] = []
    masks = np.zeros(256, dtype=np.int32)
    for case in range(256):
        ct: List[Tuple[int, int, int]] = []
        for loop in _case_loops(case):
            for e in loop:
                masks[case] |= 1 << e
            ct.extend(_triangulate(loop))
        tris.append(ct)
    max_tri = max(len(t) for t in tris)
    table = np.full((256, max_tri, 3), -1, dtype=np.int64)
    count = np.zeros(256, dtype=np.int64)
    for case, ct in enumerate(tris):
        count[case] = len(ct)
        if ct:
            table[case, :len(ct)] = ct
    return masks, table, count


_, _TRI_TABLE, _TRI_COUNT = build_case_tables()

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
        self.tri_table = torch.as_tensor(_TRI_TABLE[perm], device=device)
        self.tri_count = torch.as_tensor(_TRI_COUNT[perm], device=device)
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


# ------------------------------------------------------------------------------ results
@dataclass
class Mesh:
    """A triangle mesh in numpy: world metres, counter-clockwise triangles facing free space."""

    vertices: np.ndarray               # [V, 3] float32
    triangles: np.ndarray              # [T, 3] int32
    colors: np.ndarray                 # [V, 3] uint8
    normals: Optional[np.ndarray] = None  # [V, 3] float32 unit, towards free space

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_triangles(self) -> int:
        return int(self.triangles.shape[0])

    def is_empty(self) -> bool:
        return self.num_triangles == 0

    @classmethod
    def empty(cls) -> "Mesh":
        return cls(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), np.zeros((0, 3), np.uint8))


@dataclass
class BlockMeshes:
    """Marching-cubes output of a set of blocks, in torch on the grid's device.

    ``vertex_keys [V]`` sorted unique global edge keys (:func:`edge_keys`) with
    ``vertices [V, 3]`` (world metres, float32) and ``colors [V, 3]`` (float32,
    0..255); ``triangles [T, 3]`` int64 indices into them; ``triangle_slots [T]``
    the slot of the block owning each triangle's cube.  Since a vertex's key
    fixes its position, pieces of different calls can be merged with
    :meth:`concat` (vertices deduplicated by key).
    """

    vertex_keys: torch.Tensor
    vertices: torch.Tensor
    colors: torch.Tensor
    triangles: torch.Tensor
    triangle_slots: torch.Tensor

    @property
    def num_vertices(self) -> int:
        return int(self.vertex_keys.shape[0])

    @property
    def num_triangles(self) -> int:
        return int(self.triangles.shape[0])

    @property
    def triangle_keys(self) -> torch.Tensor:
        """``[T, 3]`` global edge keys of the triangle corners (index-free form)."""
        return self.vertex_keys[self.triangles]

    @classmethod
    def empty(cls, device: torch.device | str = "cpu") -> "BlockMeshes":
        i64 = dict(dtype=torch.int64, device=device)
        f32 = dict(dtype=torch.float32, device=device)
        return cls(torch.zeros(0, **i64), torch.zeros((0, 3), **f32), torch.zeros((0, 3), **f32),
                   torch.zeros((0, 3), **i64), torch.zeros(0, **i64))

    @classmethod
    def concat(cls, parts: Sequence["BlockMeshes"]) -> "BlockMeshes":
        """Union of pieces; vertices with equal keys become one (their values agree when the
        pieces come from the same voxels; otherwise which one is kept is unspecified).
        Pieces must not share triangles (a triangle belongs to one block)."""
        device = parts[0].vertex_keys.device if len(parts) else "cpu"
        parts = [p for p in parts if p.num_vertices or p.num_triangles]
        if not parts:
            return cls.empty(device)
        if len(parts) == 1:
            return parts[0]
        keys = torch.cat([p.vertex_keys for p in parts])
        uniq, inv = torch.unique(keys, return_inverse=True)
        first = _any_occurrence(inv, uniq.shape[0])
        offsets = np.cumsum([0] + [p.num_vertices for p in parts[:-1]])
        tris = torch.cat([inv[p.triangles + int(o)] for p, o in zip(parts, offsets)])
        return cls(uniq, torch.cat([p.vertices for p in parts])[first],
                   torch.cat([p.colors for p in parts])[first], tris,
                   torch.cat([p.triangle_slots for p in parts]))

    def select(self, slots: torch.Tensor | Sequence[int]) -> "BlockMeshes":
        """The triangles owned by ``slots``, with only the vertices they use."""
        slots = torch.as_tensor(slots, dtype=torch.int64, device=self.triangle_slots.device).reshape(-1)
        keep = torch.isin(self.triangle_slots, slots)
        return self._subset(keep)

    def split(self) -> Dict[int, "BlockMeshes"]:
        """``{slot: piece}`` for every slot owning triangles (e.g. to fill a per-block cache)."""
        out: Dict[int, BlockMeshes] = {}
        if self.num_triangles == 0:
            return out
        order = torch.argsort(self.triangle_slots, stable=True)
        us, counts = torch.unique_consecutive(self.triangle_slots[order], return_counts=True)
        start = 0
        for s, c in zip(us.tolist(), counts.tolist()):
            keep = torch.zeros(self.num_triangles, dtype=torch.bool, device=order.device)
            keep[order[start:start + c]] = True
            out[s] = self._subset(keep)
            start += c
        return out

    def _subset(self, keep: torch.Tensor) -> "BlockMeshes":
        tris = self.triangles[keep]
        used, inv = torch.unique(tris.reshape(-1), return_inverse=True)
        return BlockMeshes(self.vertex_keys[used], self.vertices[used], self.colors[used],
                           inv.reshape(-1, 3), self.triangle_slots[keep])

    def to_mesh(self, compute_normals: bool = False) -> Mesh:
        """Numpy :class:`Mesh` (vertices not used by any triangle are dropped)."""
        if self.num_triangles == 0:
            return Mesh.empty()
        verts, cols, tris = self.vertices, self.colors, self.triangles
        used = torch.zeros(self.num_vertices, dtype=torch.bool, device=tris.device)
        used[tris.reshape(-1)] = True
        if not bool(used.all()):
            new_index = torch.cumsum(used, 0) - 1
            verts, cols, tris = verts[used], cols[used], new_index[tris]
        normals = None
        if compute_normals:
            normals = vertex_normals(verts, tris).cpu().numpy()
        idx_dtype = torch.int32 if verts.shape[0] < 2 ** 31 else torch.int64
        return Mesh(verts.cpu().numpy().astype(np.float32, copy=False),
                    tris.to(idx_dtype).cpu().numpy(),
                    cols.round().clamp(0, 255).to(torch.uint8).cpu().numpy(), normals)


def _any_occurrence(inverse: torch.Tensor, n: int) -> torch.Tensor:
    """For ``unique(..., return_inverse=True)``: one input position per unique value."""
    pos = torch.arange(inverse.shape[0], device=inverse.device)
    return torch.zeros(n, dtype=torch.int64, device=inverse.device).scatter_(0, inverse, pos)


def vertex_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals ``[V, 3]`` (towards the triangles' CCW side)."""
    p = vertices[triangles]
    fn = torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    n = torch.zeros_like(vertices)
    for k in range(3):
        n.index_add_(0, triangles[:, k], fn)
    return torch.nn.functional.normalize(n, dim=1)


# ------------------------------------------------------------------------------ extraction
def _neighbour_slots(grid: VoxelBlockGrid, slots: torch.Tensor, tables: _Tables) -> torch.Tensor:
    """``[n, 8]`` slots of blocks ``b + {0,1}^3`` in octant order (-1 = not allocated)."""
    coords = grid.block_coords[slots]
    nb = (coords[:, None, :] + tables.octant_offsets[None]).reshape(-1, 3)
    return grid.lookup(nb).reshape(-1, 8)


def _padded_codes(grid: VoxelBlockGrid, nbr: torch.Tensor, thr: float) -> torch.Tensor:
    """``[n, B+1, B+1, B+1]`` int16 per voxel of each block and the first layer of its +x/+y/+z
    neighbours: bit 0 = negative tsdf, bit 8 = unobserved (or in a missing block)."""
    B = grid.block_size
    tsdf, weight = grid.attrs["tsdf"], grid.attrs["weight"]
    n = nbr.shape[0]
    src = nbr.clamp(min=0)
    out = torch.empty((n, B + 1, B + 1, B + 1), dtype=torch.int16, device=grid.device)
    for octant in range(8):
        d = ((octant >> 2) & 1, (octant >> 1) & 1, octant & 1)  # neighbour offset b + d
        # Voxels read from that neighbour: its first layer along each axis where d = 1.
        read = (slice(None),) + tuple(0 if di else slice(None) for di in d)
        write = (slice(None),) + tuple(B if di else slice(0, B) for di in d)
        t = tsdf[read].index_select(0, src[:, octant])
        w = weight[read].index_select(0, src[:, octant])
        code = (t < 0).to(torch.int16) | ((w <= thr).to(torch.int16) << 8)
        if octant:
            missing = (nbr[:, octant] < 0).view((n,) + (1,) * (code.dim() - 1))
            code = code | (missing.to(torch.int16) << 8)
        out[write] = code
    return out


def _extract_chunk(grid: VoxelBlockGrid, slots: torch.Tensor, nbr: torch.Tensor, thr: float,
                   tables: _Tables) -> Optional[BlockMeshes]:
    B = grid.block_size
    B3 = B * B * B
    dev = grid.device
    v = _padded_codes(grid, nbr, thr)
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
    rep = _any_occurrence(inv, vkeys.shape[0])
    rcube = tri_cube[rep // 3]
    redge = tri_edges.reshape(-1)[rep]
    raxis = vkeys & 3
    # Flat position of both endpoints in the padded (B+1)^3 volume of the cube's block.
    pp0 = (lxyz[rcube] * tables.pad_strides).sum(1) + tables.edge_pad_lo[redge]
    pp1 = pp0 + tables.pad_strides[raxis]
    nb = nbr[blk[rcube]]
    i0 = nb.gather(1, tables.pad_octant[pp0, None]).squeeze(1) * B3 + tables.pad_local[pp0]
    i1 = nb.gather(1, tables.pad_octant[pp1, None]).squeeze(1) * B3 + tables.pad_local[pp1]
    flat_tsdf = grid.attrs["tsdf"].view(-1)
    f0, f1 = flat_tsdf.index_select(0, i0), flat_tsdf.index_select(0, i1)
    t = (f0 / (f0 - f1)).unsqueeze(1)
    v_lo, _ = decode_edge_keys(vkeys)
    verts = (v_lo.to(torch.float32) + 0.5 + t * tables.axis_unit_f[raxis]) * grid.voxel_size_m
    if "color" in grid.attrs:
        flat_col = grid.attrs["color"].view(-1, 3)
        c0, c1 = flat_col.index_select(0, i0), flat_col.index_select(0, i1)
        cols = c0 + t * (c1 - c0)
    else:
        cols = torch.full_like(verts, 200.0)
    return BlockMeshes(vkeys, verts, cols, inv.view(-1, 3), slots[blk[tri_cube]])


def extract_block_meshes(grid: VoxelBlockGrid, slots: Optional[torch.Tensor | Sequence[int]] = None, *,
                         weight_threshold: float = 0.0, chunk_blocks: int = 4096) -> BlockMeshes:
    """Marching cubes over the cubes owned by ``slots`` (default: all active blocks).

    Triangles are tagged with their owning slot; vertices are keyed globally, so
    ``BlockMeshes.concat`` of the results for a partition of the blocks equals the
    result for all of them.  Work is done ``chunk_blocks`` blocks at a time: the
    peak memory is a few int16 ``(B+1)^3`` volumes per block of a chunk.
    """
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
        part = _extract_chunk(grid, slots[s:s + chunk], nbr[s:s + chunk], thr, tables)
        if part is not None:
            parts.append(part)
    if not parts:
        return BlockMeshes.empty(dev)
    return BlockMeshes.concat(parts)


def extract_mesh(grid: VoxelBlockGrid, *, weight_threshold: float = 0.0,
                 slots: Optional[torch.Tensor | Sequence[int]] = None, compute_normals: bool = False,
                 chunk_blocks: int = 4096) -> Mesh:
    """Triangle mesh (numpy) of the zero level set over the observed voxels.

    ``slots``: extract only the cubes owned by these blocks (default: all).
    Voxels with ``weight <= weight_threshold`` count as unobserved.
    """
    return extract_block_meshes(grid, slots, weight_threshold=weight_threshold,
                                chunk_blocks=chunk_blocks).to_mesh(compute_normals)


def dependent_slots(grid: VoxelBlockGrid, slots: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Slots whose cubes read voxels of ``slots``: the blocks themselves and their allocated
    -x/-y/-z neighbours (7 per block). Re-extract these after ``slots`` changed."""
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


# ------------------------------------------------------------------------------ output
def mesh_to_open3d(mesh: Mesh):
    """``open3d.geometry.TriangleMesh`` with vertex colors in [0, 1] (and normals if present)."""
    import open3d as o3d

    m = o3d.geometry.TriangleMesh()
    m.vertices = o3d.utility.Vector3dVector(mesh.vertices.astype(np.float64))
    m.triangles = o3d.utility.Vector3iVector(mesh.triangles.astype(np.int32))
    m.vertex_colors = o3d.utility.Vector3dVector(mesh.colors.astype(np.float64) / 255.0)
    if mesh.normals is not None:
        m.vertex_normals = o3d.utility.Vector3dVector(mesh.normals.astype(np.float64))
    return m


def write_ply(mesh: Mesh, path) -> None:
    """Write ``mesh`` as binary PLY (vertex colors, normals if present) via Open3D."""
    import open3d as o3d

    if mesh.num_vertices == 0:  # Open3D refuses to write an empty mesh; a valid empty PLY
        with open(path, "w") as fh:
            fh.write("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
                     "property float z\nproperty uchar red\nproperty uchar green\n"
                     "property uchar blue\nelement face 0\nproperty list uchar int vertex_indices\n"
                     "end_header\n")
        return
    if not o3d.io.write_triangle_mesh(str(path), mesh_to_open3d(mesh), write_ascii=False,
                                      compressed=False, print_progress=False):
        raise OSError(f"could not write mesh to {path}")
