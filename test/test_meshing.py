"""Marching cubes over a VoxelField, on analytic SDFs written straight into the field."""

import numpy as np
import pytest
import torch

from neural_mapping.grid.field import FIELD_ATTRIBUTES, VoxelField
from neural_mapping.grid.voxel_grid import VoxelBlockGrid
from neural_mapping.products.meshing import (
    CORNER_OFFSETS, EDGE_CORNERS, BlockMeshes, Mesh, build_case_tables, decode_edge_keys,
    dependent_slots, edge_keys, extract_block_meshes, extract_mesh, mesh_to_open3d, write_ply)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
VOX = 0.02
TRUNC = 3 * VOX
CENTER = torch.tensor([0.013, -0.021, 0.037], dtype=torch.float64)  # off the voxel grid


def sphere_sdf(p, r=0.3):
    return (p - CENTER).norm(dim=-1) - r


def box_sdf(p, half=(0.25, 0.17, 0.21)):
    q = (p - CENTER).abs() - torch.tensor(half, dtype=p.dtype)
    return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)


def sdf_color(p):
    """Linear in position, so interpolated vertex colors are exact."""
    return 127.5 + 250.0 * (p - CENTER)


def field_of(blocks, B=8, device="cpu", trunc=TRUNC, color=True) -> VoxelField:
    """A field on a grid of its own with the given block coordinates allocated."""
    specs = FIELD_ATTRIBUTES if color else FIELD_ATTRIBUTES[:2]
    g = VoxelBlockGrid(VOX, B, attributes=specs, device=device, initial_capacity=64)
    g.allocate(torch.as_tensor(blocks, dtype=torch.int32, device=device))
    return VoxelField.of_grid(g, trunc)  # after allocating: the pool does not move any more


def make_grid(sdf, extent=0.45, B=8, device="cpu", dense=False, trunc=TRUNC):
    """Field with the blocks around the band |sdf| < trunc (or every block of the box if
    ``dense``), sdf / trunc clamped, weight 1 inside the band, color linear in position."""
    bs = VOX * B
    lo = int(np.floor((float(CENTER.min()) - extent) / bs))
    hi = int(np.floor((float(CENTER.max()) + extent) / bs))
    r = torch.arange(lo, hi + 1)
    bc = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    l = torch.arange(B)
    vox = bc[:, None, None, None, :] * B + torch.stack(torch.meshgrid(l, l, l, indexing="ij"), -1)
    p = (vox.double() + 0.5) * VOX
    d = sdf(p)
    keep = torch.ones(len(bc), dtype=torch.bool) if dense else (d.abs() < trunc).flatten(1).any(1)
    f = field_of(bc[keep], B, device, trunc)
    order = f.grid.lookup(bc[keep].to(device)).cpu()
    f.sdf[order] = (d[keep] / trunc).clamp(-1, 1).float().to(device)
    f.weight[order] = (d[keep].abs() < trunc).float().to(device)
    f.color[order] = sdf_color(p[keep]).clamp(0, 255).float().to(device)
    return f


def edge_use_counts(tris):
    e = np.sort(np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    return counts


def directed_edges_unique(tris):
    e = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    return len(np.unique(e, axis=0)) == len(e)


def face_normals(mesh):
    v = mesh.vertices.astype(np.float64)
    t = mesh.triangles
    return np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])


def sdf_gradient(sdf, p, h=1e-4):
    p = torch.as_tensor(p, dtype=torch.float64)
    g = [(sdf(p + h * e) - sdf(p - h * e)) / (2 * h) for e in torch.eye(3, dtype=torch.float64)]
    return torch.stack(g, -1).numpy()


def key_set(bm: BlockMeshes):
    keys = bm.vertex_keys.cpu().numpy()
    tri = np.sort(bm.triangle_keys.cpu().numpy(), axis=1)
    return keys, {tuple(t) for t in tri}


# ------------------------------------------------------------------------------ tables
def test_case_tables_are_closed_and_match_the_sign_changes():
    mask, table, count = build_case_tables()
    assert count[0] == count[255] == 0 and count.max() <= 5
    for case in range(256):
        neg = [(case >> i) & 1 for i in range(8)]
        crossing = {j for j, (a, b) in enumerate(EDGE_CORNERS) if neg[a] != neg[b]}
        tris = table[case, :count[case]]
        assert set(tris.reshape(-1).tolist()) == crossing, case
        assert {j for j in range(12) if mask[case] >> j & 1} == crossing
        assert (table[case, count[case]:] == -1).all()
        # Inside the cube, every triangle edge is shared by two triangles, except the
        # segments on the cube faces (one per face crossing, each used once).
        if len(tris):
            e = np.sort(np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]]), axis=1)
            _, c = np.unique(e, axis=0, return_counts=True)
            assert c.max() <= 2


def test_single_corner_triangle_faces_away_from_the_negative_corner():
    _, table, count = build_case_tables()
    off = np.asarray(CORNER_OFFSETS, dtype=float)
    mid = np.asarray([(off[a] + off[b]) / 2 for a, b in EDGE_CORNERS])
    for corner in range(8):
        for case, sign in ((1 << corner, 1.0), (255 ^ (1 << corner), -1.0)):
            assert count[case] == 1
            a, b, c = mid[table[case, 0]]
            n = np.cross(b - a, c - a)
            assert sign * n @ ((a + b + c) / 3 - off[corner]) > 0, (case, corner)


def test_edge_keys_round_trip():
    v = torch.tensor([[0, 0, 0], [-5, 7, -1000], [300000, -300000, 12]])
    axis = torch.tensor([0, 1, 2])
    back, ax = decode_edge_keys(edge_keys(v, axis))
    assert torch.equal(back, v) and torch.equal(ax, axis)


# ------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize("device", DEVICES)
def test_sphere_mesh_is_accurate_watertight_and_outward(device):
    g = make_grid(sphere_sdf, device=device)
    mesh = extract_mesh(g, compute_normals=True)
    assert mesh.vertices.dtype == np.float32 and mesh.colors.dtype == np.uint8
    assert mesh.num_triangles > 1000
    v = torch.as_tensor(mesh.vertices, dtype=torch.float64)
    assert sphere_sdf(v).abs().max() < 0.1 * VOX  # linear interpolation of an exact SDF
    # Watertight and consistently oriented: every edge used twice, each direction once.
    assert (edge_use_counts(mesh.triangles) == 2).all()
    assert directed_edges_unique(mesh.triangles)
    # Closed genus-0 surface: V - E + F = 2.
    assert mesh.num_vertices - 3 * mesh.num_triangles // 2 + mesh.num_triangles == 2
    fn = face_normals(mesh)
    centroid = mesh.vertices[mesh.triangles].mean(axis=1)
    outward = (fn * sdf_gradient(sphere_sdf, centroid)).sum(1) > 0
    assert outward.mean() > 0.999
    assert ((mesh.normals * sdf_gradient(sphere_sdf, mesh.vertices)).sum(1) > 0.9).mean() > 0.99
    area = 0.5 * np.linalg.norm(fn, axis=1).sum()
    assert area == pytest.approx(4 * np.pi * 0.3 ** 2, rel=0.02)
    # Colors interpolate linearly between voxel centres: exact for a linear color field.
    expect = sdf_color(v).clamp(0, 255).numpy()
    assert np.abs(mesh.colors.astype(float) - expect).max() <= 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_box_mesh_is_accurate_watertight_and_outward(device):
    g = make_grid(box_sdf, device=device)
    mesh = extract_mesh(g)
    v = torch.as_tensor(mesh.vertices, dtype=torch.float64)
    assert box_sdf(v).abs().max() < 0.5 * VOX
    assert (edge_use_counts(mesh.triangles) == 2).all()
    assert directed_edges_unique(mesh.triangles)
    fn = face_normals(mesh)
    nz = np.linalg.norm(fn, axis=1) > 1e-12
    centroid = mesh.vertices[mesh.triangles].mean(axis=1)
    outward = (fn * sdf_gradient(box_sdf, centroid)).sum(1) > 0
    assert outward[nz].mean() > 0.99
    area = 0.5 * np.linalg.norm(fn, axis=1).sum()
    sx, sy, sz = 0.5, 0.34, 0.42
    # Marching cubes chamfers the 12 sharp edges: at most a one-voxel strip along each.
    exact = 2 * (sx * sy + sy * sz + sx * sz)
    assert exact - 4 * (sx + sy + sz) * VOX < area <= exact * 1.001


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_field_gives_a_closed_oriented_manifold(seed):
    """Noise exercises every case, ambiguous faces included; a positive border closes the surface.
    With random unobserved voxels the surface has holes but stays an oriented manifold."""
    r = torch.arange(3)
    bc = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3).int()
    g = field_of(bc, B=4)
    slots = g.grid.lookup(bc)
    gen = torch.Generator().manual_seed(seed)
    field = torch.rand((12, 12, 12), generator=gen) * 2 - 1
    field[[0, -1]] = 1
    field[:, [0, -1]] = 1
    field[:, :, [0, -1]] = 1
    coords = g.grid.block_coords[slots].long()
    for s, c in zip(slots.tolist(), coords.tolist()):
        x, y, z = (4 * k for k in c)
        g.sdf[s] = field[x:x + 4, y:y + 4, z:z + 4]
    g.weight[slots] = 1.0
    mesh = extract_mesh(g)
    assert mesh.num_triangles > 500
    assert (edge_use_counts(mesh.triangles) == 2).all()
    assert directed_edges_unique(mesh.triangles)
    g.weight[slots] = (torch.rand((len(slots), 4, 4, 4), generator=gen) > 0.1).float()
    holed = extract_mesh(g)
    counts = edge_use_counts(holed.triangles)
    assert 0 < holed.num_triangles < mesh.num_triangles and counts.max() == 2 and counts.min() == 1
    assert directed_edges_unique(holed.triangles)


# ------------------------------------------------------------------------------ blocks
@pytest.mark.parametrize("device", DEVICES)
def test_per_block_union_equals_full_extraction(device):
    g = make_grid(sphere_sdf, device=device)
    full = extract_block_meshes(g)
    pieces = [extract_block_meshes(g, [s]) for s in range(g.num_blocks)]
    union = BlockMeshes.concat(pieces)
    assert union.num_triangles == full.num_triangles
    assert torch.equal(union.vertex_keys, full.vertex_keys)
    assert torch.allclose(union.vertices, full.vertices, atol=1e-6, rtol=0)
    assert key_set(union)[1] == key_set(full)[1]
    # Every triangle is tagged with the block that owns its cube.
    assert all((p.triangle_slots == s).all() for s, p in enumerate(pieces))
    # split() and select() give the same pieces back.
    split = full.split()
    assert sum(p.num_triangles for p in split.values()) == full.num_triangles
    s0 = next(iter(split))
    assert key_set(split[s0])[1] == key_set(pieces[s0])[1]
    assert key_set(full.select([s0]))[1] == key_set(pieces[s0])[1]
    # Chunking changes nothing.
    small = extract_block_meshes(g, chunk_blocks=7)
    assert torch.equal(small.vertex_keys, full.vertex_keys)
    assert torch.equal(small.vertices, full.vertices)
    assert key_set(small)[1] == key_set(full)[1]
    # A subset of slots extracts only their cubes.
    half = torch.arange(0, g.num_blocks, 2, device=device)
    sub = extract_block_meshes(g, half)
    assert torch.isin(sub.triangle_slots, half).all()
    assert sub.num_triangles == full.select(half).num_triangles


def test_mesh_does_not_depend_on_the_block_size():
    """Seams are invisible: B = 4, 8, 16 hold the same voxels and give the same mesh."""
    results = [extract_block_meshes(make_grid(sphere_sdf, B=B)) for B in (4, 8, 16)]
    k0, t0 = key_set(results[0])
    for r in results[1:]:
        k, t = key_set(r)
        assert np.array_equal(k, k0) and t == t0
        assert torch.allclose(r.vertices, results[0].vertices, atol=1e-6, rtol=0)


def test_unobserved_and_missing_voxels_are_skipped():
    g = make_grid(sphere_sdf)
    full = extract_mesh(g)
    assert extract_mesh(g, weight_threshold=1.0).is_empty()  # every weight is 1
    # Unobserve one block that carries surface: its cubes and the neighbours' cubes
    # touching it disappear, leaving a hole with a boundary.
    bm = extract_block_meshes(g)
    s = int(bm.triangle_slots.mode().values)
    g.weight[s] = 0
    holed = extract_mesh(g)
    assert 0 < holed.num_triangles < full.num_triangles
    assert (edge_use_counts(holed.triangles) == 1).any()
    lo = g.grid.block_coords[s].double() * g.grid.block_size_m + 0.5 * VOX
    hi = lo + (g.block_size - 1) * VOX
    inside = ((holed.vertices > lo.numpy() + 1e-6) & (holed.vertices < hi.numpy() - 1e-6)).all(1)
    assert not inside.any()


@pytest.mark.parametrize("voxel", [(8, 8, 8), (3, 7, 0), (-1, 8, 15)])
def test_single_negative_voxel_gives_an_octahedron_and_needs_all_corners(voxel):
    """One negative voxel: its 8 cubes (spread over up to 8 blocks) close an octahedron.
    Unobserving it, or a voxel of the 3^3 around it, removes exactly the cubes it is in."""
    v = torch.tensor(voxel)
    near = v + torch.stack(torch.meshgrid(*[torch.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    g = field_of(torch.unique(torch.div(near, 8, rounding_mode="floor"), dim=0))
    g.weight[: g.num_blocks] = 1.0
    slot = g.grid.lookup(torch.div(v, 8, rounding_mode="floor")[None])[0]
    loc = tuple((v % 8).tolist())
    g.sdf[(slot,) + loc] = -1.0
    mesh = extract_mesh(g)
    assert mesh.num_vertices == 6 and mesh.num_triangles == 8
    assert (edge_use_counts(mesh.triangles) == 2).all() and directed_edges_unique(mesh.triangles)
    centre = (v.double() + 0.5) * VOX
    assert np.allclose(np.linalg.norm(mesh.vertices - centre.numpy(), axis=1), VOX / 2, atol=1e-6)
    outward = mesh.vertices[mesh.triangles].mean(axis=1) - centre.numpy()
    assert ((face_normals(mesh) * outward).sum(1) > 0).all()  # away from the negative voxel
    for offset in [(0, 0, 0), (1, 1, 1), (-1, -1, -1), (1, -1, 0), (0, 0, 1), (-1, 0, 0)]:
        u = v + torch.tensor(offset)
        s = g.grid.lookup(torch.div(u, 8, rounding_mode="floor")[None])[0]
        lu = (s,) + tuple((u % 8).tolist())
        g.weight[lu] = 0.0
        n = extract_mesh(g).num_triangles
        g.weight[lu] = 1.0
        shared = int(np.prod([2 - abs(o) for o in offset]))  # of the 8 cubes, those containing u
        assert n == 8 - shared, offset


def test_dependent_slots_are_the_minus_neighbours():
    coords = torch.tensor([[0, 0, 0], [-1, 0, 0], [-1, -1, -1], [1, 0, 0], [0, -1, 0], [5, 5, 5]])
    g = field_of(coords)
    dep = dependent_slots(g, g.grid.lookup(torch.tensor([[0, 0, 0]])))
    expect = g.grid.lookup(torch.tensor([[0, 0, 0], [-1, 0, 0], [-1, -1, -1], [0, -1, 0]]))
    assert sorted(dep.tolist()) == sorted(expect.tolist())


def test_empty_grid_and_empty_selection():
    mesh = extract_mesh(field_of(torch.zeros((0, 3))))
    assert mesh.is_empty() and mesh.vertices.shape == (0, 3) and mesh.triangles.shape == (0, 3)
    g = field_of([[0, 0, 0]])  # allocated, never observed
    assert extract_mesh(g).is_empty()
    assert extract_block_meshes(g, []).num_triangles == 0
    with pytest.raises(ValueError):
        extract_mesh(g, slots=[3])


def test_write_ply_round_trip(tmp_path):
    import open3d as o3d

    mesh = extract_mesh(make_grid(sphere_sdf), compute_normals=True)
    path = tmp_path / "sphere.ply"
    write_ply(mesh, path)
    back = o3d.io.read_triangle_mesh(str(path))
    assert len(back.vertices) == mesh.num_vertices and len(back.triangles) == mesh.num_triangles
    assert np.allclose(np.asarray(back.vertex_colors), mesh.colors / 255.0, atol=1e-6)
    assert np.allclose(np.asarray(back.vertices), mesh.vertices, atol=1e-6)
    o3m = mesh_to_open3d(mesh)
    assert o3m.is_edge_manifold() and o3m.is_watertight()
    write_ply(Mesh.empty(), tmp_path / "empty.ply")  # Open3D alone refuses empty meshes
    assert (tmp_path / "empty.ply").read_bytes().startswith(b"ply\n")


def test_only_a_field_is_meshed_and_color_is_optional():
    """Products read a VoxelField, never a bare grid; a field without color meshes in grey."""
    f = make_grid(sphere_sdf)
    with pytest.raises(TypeError, match="VoxelField"):
        extract_mesh(f.grid)
    with pytest.raises(TypeError, match="VoxelField"):
        dependent_slots(f.grid, [0])
    grey = VoxelField(f.grid, f.sdf, f.weight, None, f.truncation_m)
    a, b = extract_mesh(f), extract_mesh(grey)
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.triangles, b.triangles)
    assert (b.colors == 200).all() and not (a.colors == 200).all()
