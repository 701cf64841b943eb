"""Bounded map memory: block removal in the grid, eviction by radius and budget through every
backend, the mesh cache deleting evicted blocks, and a CI-sized long run (corridor loop)."""

import numpy as np
import pytest
import torch

from neural_mapping.backends import get_backend
from neural_mapping.config import MappingConfig
from neural_mapping.datasets.corridor import CorridorLoop
from neural_mapping.grid.voxel_grid import AttributeSpec, CapacityError, VoxelBlockGrid
from neural_mapping.products.meshing import extract_mesh
from neural_mapping.system.step import Mapper


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _coord_attr(grid):
    """Each block's ``val`` attribute encodes its coordinate (to check data moved with it)."""
    c = grid.active_coords().to(torch.float32)
    grid.attrs["val"][: grid.num_blocks] = (c[:, 0] * 1e4 + c[:, 1] * 1e2 + c[:, 2])[:, None, None, None]


def test_remove_keeps_slots_dense_and_data_with_its_block():
    g = torch.Generator().manual_seed(0)
    grid = VoxelBlockGrid(0.1, 4, [AttributeSpec("val", torch.float32, 1, -7.0)], 16, 4096, "cpu")
    coords = torch.randint(-20, 20, (600, 3), generator=g)
    grid.allocate(coords)
    _coord_attr(grid)
    n0 = grid.num_blocks
    gone = grid.active_coords()[torch.randperm(n0, generator=g)[: n0 // 3]].clone()
    src, dst = grid.remove(torch.cat([gone, torch.tensor([[999, 999, 999]])]))  # + an unallocated one
    assert grid.num_blocks == n0 - gone.shape[0] and src.numel() == dst.numel()
    assert bool((grid.lookup(gone) == -1).all())
    kept = grid.active_coords()
    slots = grid.lookup(kept)
    assert torch.equal(slots, torch.arange(grid.num_blocks))  # dense, index agrees
    c = kept.to(torch.float32)
    assert torch.equal(grid.attrs["val"][: grid.num_blocks, 0, 0, 0], c[:, 0] * 1e4 + c[:, 1] * 1e2 + c[:, 2])
    assert bool((grid.attrs["val"][grid.num_blocks:n0] == -7.0).all())  # the freed tail is reset
    grid.allocate(gone[:5])  # freed slots are reused
    assert grid.num_blocks == n0 - gone.shape[0] + 5


def test_index_shrinks_when_the_blocks_moved_on():
    grid = VoxelBlockGrid(0.1, 4, [AttributeSpec("val")], 16, 100_000, "cpu")
    grid.allocate(torch.tensor([[0, 0, 0], [1, 1, 1]]))
    grid.allocate(torch.tensor([[400, 0, 0], [401, 2, 2]]))
    big = grid._index.numel()
    grid.remove(torch.tensor([[0, 0, 0], [1, 1, 1]]))
    assert grid._index.numel() * 8 <= big
    assert grid.lookup(torch.tensor([[400, 0, 0], [401, 2, 2], [0, 0, 0]])).tolist() == [0, 1, -1]


def _run(values, n_frames, loop=(6.0, 4.0)):
    cfg = MappingConfig.from_flat({"voxel_size_m": 0.05, "depth_max_m": 3.0, "device": "cpu",
                                   "initial_capacity_blocks": 256, **values})
    m = Mapper(cfg)
    c = CorridorLoop(*loop, speed_m_s=1.0, rate_hz=10)
    counts = []
    for f in c.frames(n_frames):
        m.register_frame(f, T_external=f.pose)
        counts.append(m.backend.grid.num_blocks)
    return m, counts


def test_radius_and_budget_bound_the_map_on_a_long_loop_deterministically():
    values = {"map_radius_m": 3.0, "map_max_blocks": 600}
    m, counts = _run(values, 100, loop=(10.0, 6.0))
    assert max(counts) <= 600
    st = m.bounds.stats()
    assert st["blocks_evicted_radius"] > 0
    # every block is within the radius of the last camera (plus half a block diagonal)
    T, _ = CorridorLoop(10.0, 6.0, 1.0, 10).pose_at(99 * 0.1)
    g = m.backend.grid
    centre = (g.active_coords().double() + 0.5) * g.block_size_m
    assert float((centre - torch.from_numpy(T[:3, 3])).norm(dim=1).max()) <= 3.0 + 1e-9
    m2, counts2 = _run(values, 100, loop=(10.0, 6.0))
    assert counts2 == counts and torch.equal(m2.backend.grid.active_coords(), g.active_coords())
    # without bounds the same run keeps growing: the bound is what keeps it flat
    _, free = _run({}, 100, loop=(10.0, 6.0))
    assert free[-1] > 1.5 * max(counts[50:])


def test_budget_evicts_instead_of_capacity_error():
    m, counts = _run({"max_capacity_blocks": 400}, 40)
    assert max(counts) <= 400 and m.bounds.stats()["evictions_capacity"] > 0
    # a bare backend still raises
    cfg = MappingConfig.from_flat({"voxel_size_m": 0.05, "device": "cpu", "max_capacity_blocks": 16,
                                   "initial_capacity_blocks": 16})
    f = next(CorridorLoop(6.0, 4.0).frames(1))
    with pytest.raises(CapacityError):
        get_backend(cfg).integrate(f, f.pose)


def test_mesh_cache_reports_evicted_blocks_as_emptied():
    m, _ = _run({"map_radius_m": 2.5}, 5)
    cache = m.mesh_cache
    cache.update(m.backend.field())
    before = set(cache.pieces())
    for f in CorridorLoop(6.0, 4.0, 1.0, 10).frames(40, start=5):
        m.register_frame(f, T_external=f.pose)
    up = cache.update(m.backend.field())
    assert set(up.emptied) & before  # blocks left behind were deleted
    # the cache is exactly the extraction of what is left
    inc, ref = cache.full_mesh(), extract_mesh(m.backend.field())
    assert inc.num_triangles == ref.num_triangles > 0
    assert np.array_equal(np.unique(inc.vertices, axis=0), np.unique(ref.vertices, axis=0))


def test_neural_backend_frees_its_per_block_state():
    b = get_backend(MappingConfig.from_flat({
        "backend": "neural", "device": "cpu", "voxel_size_m": 0.05, "depth_max_m": 3.0,
        "neural_rays": 128, "neural_iterations": 1, "neural_keyframe_rays": 256,
        "initial_capacity_blocks": 256}))
    for f in CorridorLoop(6.0, 4.0, 1.0, 10).frames(3):
        b.integrate(f, f.pose)
    g = b.grid
    n0 = g.num_blocks
    assert all(lv.grid.num_blocks == n0 for lv in b.model.levels)
    field0 = b.field()
    keep_sdf = {tuple(c): field0.sdf[i].clone() for i, c in enumerate(g.active_coords().tolist())}
    feats = [{tuple(c): lv.grid.attrs["feat"][i].clone() for i, c in enumerate(lv.grid.active_coords().tolist())}
             for lv in b.model.levels]
    gone = g.active_coords()[::3].clone()
    b.evict(gone)
    n1 = g.num_blocks
    assert n1 == n0 - gone.shape[0]
    for lv, fd in zip(b.model.levels, feats):
        assert lv.grid.num_blocks == n1 and bool((lv.grid.lookup(gone) == -1).all())
        for i, c in enumerate(lv.grid.active_coords().tolist()):
            assert torch.equal(lv.grid.attrs["feat"][i], fd[tuple(c)])
    f1 = b.field()
    for i, c in enumerate(g.active_coords().tolist()):
        assert torch.equal(f1.sdf[i], keep_sdf[tuple(c)])
    assert bool((f1.weight[n1:n0] == 0).all())
    f = next(CorridorLoop(6.0, 4.0, 1.0, 10).frames(1, start=3))
    b.integrate(f, f.pose)  # maps on after an eviction
    assert all(lv.grid.num_blocks == g.num_blocks for lv in b.model.levels)
    assert bool(torch.isfinite(b.field().sdf[: g.num_blocks]).all())
