"""Meshing: the zero level set of a :class:`~neural_mapping.grid.field.VoxelField` as triangles.

* :mod:`.case_tables`: the marching-cubes case table (built at import, consistent on shared faces);
* :mod:`.marching_cubes`: vectorised extraction over the field's blocks, vertices keyed by grid edge;
* :mod:`.mesh`: :class:`Mesh` (numpy) and :class:`BlockMeshes` (torch, per block), PLY output;
* :mod:`.cache`: :class:`MeshCache`, the incremental per-block mesh fed by the changed blocks.
"""

from neural_mapping.products.meshing.case_tables import CORNER_OFFSETS, EDGE_CORNERS, build_case_tables
from neural_mapping.products.meshing.mesh import BlockMeshes, Mesh, mesh_to_open3d, vertex_normals, write_ply
from neural_mapping.products.meshing.marching_cubes import (
    decode_edge_keys, dependent_slots, edge_keys, extract_block_meshes, extract_mesh)
from neural_mapping.products.meshing.cache import (
    BlockMesh, MeshCache, MeshUpdate, pack_block_keys, soups_to_mesh, unpack_block_keys)

__all__ = [
    "Mesh", "BlockMeshes", "extract_mesh", "extract_block_meshes", "dependent_slots",
    "write_ply", "mesh_to_open3d", "vertex_normals", "build_case_tables", "edge_keys",
    "decode_edge_keys", "CORNER_OFFSETS", "EDGE_CORNERS",
    "MeshCache", "MeshUpdate", "BlockMesh", "pack_block_keys", "unpack_block_keys", "soups_to_mesh",
]
