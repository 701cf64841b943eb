"""Mesh containers: :class:`Mesh` (numpy, indexed), :class:`BlockMeshes` (torch, per-block
marching-cubes output keyed by grid edge), vertex normals and PLY / Open3D output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import torch

__all__ = ["Mesh", "BlockMeshes", "vertex_normals", "any_occurrence", "mesh_to_open3d", "write_ply"]


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

    ``vertex_keys [V]`` sorted unique global edge keys
    (:func:`~neural_mapping.products.meshing.marching_cubes.edge_keys`) with
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
        first = any_occurrence(inv, uniq.shape[0])
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


def any_occurrence(inverse: torch.Tensor, n: int) -> torch.Tensor:
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
