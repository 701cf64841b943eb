"""Occupancy for planners (issue 6): 2D grid, ESDF slice, costmap, Nav2 files, gravity alignment.

Ground truth: the synthetic room's objects are convex meshes (boxes, cylinder, cone,
sphere), so the footprint of "object inside the height band" is exactly the 2D convex
hull of the mesh clipped to the slab ``min_z <= z <= max_z``; a cell's GT is whether its
square overlaps (more than touches) one of those polygons (separating axis test;
``_occupancy_gt.py``).
"""

import dataclasses
import math

import numpy as np
import pytest
import yaml

from _occupancy_gt import brute_distance, cells_vs_polygon, gt_cells, slab_footprint
from neural_mapping.products import occupancy as O
from neural_mapping.config import MappingConfig, OccupancyConfig
from neural_mapping.datasets.synthetic import SyntheticRoom
from neural_mapping.backends.tsdf import TSDFVolume

VOXEL = 0.02


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def room():
    """Synthetic room (z-up world), full orbit, 640x480 exact depth, 2 cm voxels, 3-voxel
    truncation: ``(dataset, field)``."""
    ds = SyntheticRoom(num_frames=48, width=640, height=480, seed=0)
    vol = TSDFVolume(VOXEL, truncation_m=3 * VOXEL, depth_max_m=6.0, device="cpu")
    for fr in ds:
        vol.integrate(fr)
    return ds, vol.field()


@pytest.fixture(scope="module")
def room_grid(room):
    ds, field = room
    cfg = OccupancyConfig(occupancy_resolution_m=0.0)  # cells = voxels
    return O.occupancy_grid_2d(field, cfg), cfg


# ----------------------------------------------------------------------------- 2D grid vs GT
def test_grid_matches_ground_truth(room, room_grid):
    ds, field = room
    g, cfg = room_grid
    assert g.data.dtype == np.int8 and set(np.unique(g.data)) <= {-1, 0, 100}
    # origin / resolution exact: the resolution is the voxel size, the origin a multiple of it
    assert g.resolution_m == VOXEL
    for o in g.origin_xy:
        assert o / VOXEL == pytest.approx(round(o / VOXEL), abs=1e-9)
    inter, inside = gt_cells(ds, g, cfg.occupancy_min_z_m, cfg.occupancy_max_z_m)
    obs = g.data != O.UNKNOWN
    occ = g.data == O.OCCUPIED
    assert obs.sum() > 0.8 * (4.0 * 3.5) / VOXEL ** 2  # most of the room floor is mapped
    acc = ((occ == inter) & obs).sum() / obs.sum()
    assert acc >= 0.99, f"only {acc:.4f} of the observed cells agree with the GT"
    # no cell inside an obstacle's footprint is free
    assert not ((g.data == O.FREE) & inside).any()
    # every obstacle is seen: most of each object's footprint cells are occupied
    for ob in ds.objects:
        poly = slab_footprint(np.asarray(ob.mesh.vertices), np.asarray(ob.mesh.triangles),
                              cfg.occupancy_min_z_m, cfg.occupancy_max_z_m)
        if poly is None:
            continue
        a, _ = cells_vs_polygon(poly, g.origin_xy, g.resolution_m, *g.data.shape)
        seen = a & obs
        assert seen.sum() and (occ & seen).sum() >= 0.8 * seen.sum(), ob.name


@pytest.mark.parametrize("res,min_acc", [(0.04, 0.985), (0.05, 0.93)])
def test_coarser_cells_stay_conservative(room, res, min_acc):
    """Cells of two voxels (borders on voxel borders) are nearly as exact as voxel cells;
    5 cm cells over 2 cm voxels are not aligned, and voxels straddling two cells mark both
    (conservative: obstacles grow, free space inside an obstacle never appears)."""
    ds, field = room
    cfg = OccupancyConfig(occupancy_resolution_m=res)
    g = O.occupancy_grid_2d(field, cfg)
    assert g.resolution_m == res
    for o in g.origin_xy:
        assert o / res == pytest.approx(round(o / res), abs=1e-9)
    inter, inside = gt_cells(ds, g, cfg.occupancy_min_z_m, cfg.occupancy_max_z_m)
    obs = g.data != O.UNKNOWN
    occ = g.data == O.OCCUPIED
    assert not ((g.data == O.FREE) & inside).any()
    # a GT-occupied cell is missed only where the obstacle barely enters it
    missed = inter & obs & ~occ
    assert missed.sum() <= 0.015 * (inter & obs).sum()
    assert ((occ == inter) & obs).sum() / obs.sum() >= min_acc


def test_unknown_where_never_observed():
    """Quarter orbit: cells whose band voxels were in no camera's frustum stay unknown, and
    so does everything behind the walls."""
    ds = SyntheticRoom(num_frames=48, max_frames=12, width=320, height=240, seed=0)
    vol = TSDFVolume(VOXEL, truncation_m=3 * VOXEL, depth_max_m=6.0, device="cpu")
    for fr in ds:
        vol.integrate(fr)
    cfg = OccupancyConfig(occupancy_resolution_m=0.0, occupancy_grid_growth_m=1.0)
    omap = O.OccupancyMap2D(cfg)
    g = omap.update(vol.field())
    x, y = g.cell_centers()
    X, Y = np.meshgrid(x, y)
    zs = (np.floor(cfg.occupancy_min_z_m / VOXEL) + 1 + np.arange(
        int((cfg.occupancy_max_z_m - cfg.occupancy_min_z_m) / VOXEL))) * VOXEL - VOXEL / 2
    zs = zs[(zs >= cfg.occupancy_min_z_m) & (zs <= cfg.occupancy_max_z_m)]
    K = ds.intrinsics
    seen = np.zeros(X.shape, bool)
    for T in ds.gt_poses():
        Tinv = np.linalg.inv(T)
        for z in zs:
            p = np.stack([X, Y, np.full_like(X, z)], -1) @ Tinv[:3, :3].T + Tinv[:3, 3]
            with np.errstate(divide="ignore", invalid="ignore"):
                u = np.rint(K.fx * p[..., 0] / p[..., 2] + K.cx)
                v = np.rint(K.fy * p[..., 1] / p[..., 2] + K.cy)
            seen |= (p[..., 2] > 0) & (u >= -1) & (u <= K.width) & (v >= -1) & (v <= K.height)
    known = g.data != O.UNKNOWN
    assert known.sum() > 1000 and (~seen).sum() > 1000  # both kinds exist
    assert not (known & ~seen).any(), "cells outside every frustum must be unknown"
    lo, hi = ds.bounds_m
    behind = (np.abs(X) > hi[0] + 0.05 + 3 * VOXEL + VOXEL) | (np.abs(Y) > hi[1] + 0.05 + 3 * VOXEL + VOXEL)
    assert behind.any() and not known[behind].any()


# ----------------------------------------------------------------------------- incremental
def test_map2d_bounds_grow_in_chunks_and_match_one_shot():
    ds = SyntheticRoom(num_frames=40, width=320, height=240, seed=1)
    vol = TSDFVolume(VOXEL, depth_max_m=6.0, device="cpu")
    cfg = OccupancyConfig(occupancy_resolution_m=0.04, occupancy_grid_growth_m=2.0)
    omap = O.OccupancyMap2D(cfg)
    assert omap.update(vol.field()) is None  # empty map: no grid yet
    changes, bounds = 0, []
    for k, fr in enumerate(ds):
        vol.integrate(fr)
        if k % 4 == 3:
            field = vol.field()
            g = omap.update(field)
            changes += omap.bounds_changed
            bounds.append(omap.bounds_cells)
            # each update equals a one-shot projection onto the same cells
            ref = O.occupancy_grid_2d(field, cfg, bounds_cells=omap.bounds_cells)
            assert np.array_equal(ref.data, g.data) and ref.origin_xy == g.origin_xy
            # the grid covers every observed cell of the tight grid
            tight, full = O.occupancy_grid_2d(field, cfg).counts(), g.counts()
            assert (tight["free"], tight["occupied"]) == (full["free"], full["occupied"])
    assert changes <= 2, f"grid resized {changes} times in {len(bounds)} updates"
    x0, y0, x1, y1 = bounds[0]
    assert (x1 - x0 + 1) * 0.04 >= 4.0  # >= growth on each side
    assert omap.last.origin_xy == (bounds[-1][0] * 0.04, bounds[-1][1] * 0.04)


# ----------------------------------------------------------------------------- ESDF / costmap
def test_esdf_slice_brute_force_and_gt(room, room_grid):
    ds, _ = room
    g, cfg = room_grid
    cfg = dataclasses.replace(cfg, esdf_max_distance_m=1.0)
    xyz, dist = O.esdf_slice(g, cfg)
    known = g.data != O.UNKNOWN
    assert xyz.dtype == np.float32 and dist.dtype == np.float32
    assert len(xyz) == len(dist) == known.sum()
    assert np.allclose(xyz[:, 2], 0.5 * (cfg.occupancy_min_z_m + cfg.occupancy_max_z_m))
    assert dist.max() <= 1.0 + 1e-6 and dist.min() == 0.0
    rows, cols = g.cell_of(xyz[:, 0], xyz[:, 1])
    assert np.array_equal(g.data[rows, cols] == O.OCCUPIED, dist == 0)
    xc, yc = g.cell_centers()
    rng = np.random.default_rng(0)
    pick = rng.choice(len(xyz), 4000, replace=False)
    # exact against brute force on the grid itself
    r, c = np.nonzero(g.data == O.OCCUPIED)
    bf = np.minimum(brute_distance(xyz[pick, :2].astype(np.float64), np.stack([xc[c], yc[r]], 1)), 1.0)
    assert np.abs(bf - dist[pick]).max() < 1e-4
    # within one cell of brute force on the GT occupancy
    inter, _ = gt_cells(ds, g, cfg.occupancy_min_z_m, cfg.occupancy_max_z_m)
    r, c = np.nonzero(inter)
    bf_gt = np.minimum(brute_distance(xyz[pick, :2].astype(np.float64), np.stack([xc[c], yc[r]], 1)), 1.0)
    err = np.abs(bf_gt - dist[pick])
    # (misses: cells next to obstacles that the projective TSDF's edge artefacts mark occupied)
    assert np.mean(err <= g.resolution_m + 1e-6) >= 0.98, np.percentile(err, [50, 99, 100])
    assert err.max() <= 4 * g.resolution_m


def test_inflated_costmap_values(room_grid):
    g, cfg = room_grid
    cfg = dataclasses.replace(cfg, costmap_inscribed_radius_m=0.1, costmap_inflation_radius_m=0.4,
                              costmap_cost_scaling_factor=5.0)
    cost = O.inflated_costmap(g, cfg)
    assert cost.data.dtype == np.int8 and cost.origin_xy == g.origin_xy
    d = O.esdf_2d(g)
    known = g.data != O.UNKNOWN
    assert np.array_equal(cost.data == -1, ~known)
    assert np.array_equal(cost.data == 100, g.data == O.OCCUPIED)
    free = known & (g.data != O.OCCUPIED)
    assert (cost.data[free & (d <= 0.1)] == 99).all()
    ring = free & (d > 0.1) & (d <= 0.4)
    expect = np.clip(np.rint(1 + 97 * np.exp(-5.0 * (d[ring] - 0.1))), 1, 98)
    assert ring.any() and np.array_equal(cost.data[ring], expect.astype(np.int8))
    assert (cost.data[free & (d > 0.4)] == 0).all()
    # cost decreases with distance
    order = np.argsort(d[ring])
    assert (np.diff(cost.data[ring][order].astype(int)) <= 0).all()


# ----------------------------------------------------------------------------- Nav2 files
def test_nav2_map_files_parse_and_round_trip(room_grid, tmp_path):
    g, _ = room_grid
    pgm, yml = O.save_nav2_map(g, tmp_path / "maps" / "occupancy")
    assert pgm.name == "occupancy.pgm" and yml.name == "occupancy.yaml"
    raw = pgm.read_bytes()
    # header by hand: magic, (comment), width height, maxval, one whitespace byte
    tokens, pos = [], 0
    while len(tokens) < 4:
        line_end = raw.index(b"\n", pos)
        line = raw[pos:line_end].decode()
        pos = line_end + 1
        if line.startswith("#"):
            continue
        tokens += line.split()
    assert tokens[0] == "P5" and int(tokens[1]) == g.width and int(tokens[2]) == g.height
    assert int(tokens[3]) == 255
    img = np.frombuffer(raw[pos:], dtype=np.uint8)
    assert img.size == g.width * g.height
    img = img.reshape(g.height, g.width)
    assert set(np.unique(img)) <= {0, 205, 254}
    # top image row = largest y: map row r is image row H-1-r
    flipped = img[::-1]
    assert np.array_equal(flipped == 0, g.data == O.OCCUPIED)
    assert np.array_equal(flipped == 254, g.data == O.FREE)
    assert np.array_equal(flipped == 205, g.data == O.UNKNOWN)
    meta = yaml.safe_load(yml.read_text())
    assert set(meta) == {"image", "mode", "resolution", "origin", "negate", "occupied_thresh",
                         "free_thresh"}
    assert meta["image"] == "occupancy.pgm" and meta["mode"] == "trinary" and meta["negate"] == 0
    assert meta["resolution"] == g.resolution_m
    assert meta["origin"] == [g.origin_xy[0], g.origin_xy[1], 0.0]
    # Nav2's trinary loader: occ = 1 - v/255; occupied if occ > occupied_thresh, free if
    # occ < free_thresh -> unknown (205) must fall between the two thresholds
    occ = lambda v: 1.0 - v / 255.0  # noqa: E731
    assert occ(0) > meta["occupied_thresh"] and occ(254) < meta["free_thresh"]
    assert meta["free_thresh"] <= occ(205) <= meta["occupied_thresh"]
    back = O.load_nav2_map(yml)
    assert np.array_equal(back.data, g.data)
    assert back.resolution_m == g.resolution_m and back.origin_xy == g.origin_xy


def test_nav2_map_orientation_on_a_known_grid(tmp_path):
    data = np.full((3, 4), O.UNKNOWN, np.int8)
    data[0, 0] = O.OCCUPIED   # lower-left cell (smallest x and y)
    data[2, 3] = O.FREE       # upper-right cell
    g = O.OccupancyGrid2D(data, 0.1, (-1.0, 2.0))
    pgm, yml = O.save_nav2_map(g, tmp_path / "m.yaml")
    img = O.read_pgm(pgm)
    assert img.shape == (3, 4)
    assert img[2, 0] == 0 and img[0, 3] == 254 and (img == 205).sum() == 10
    back = O.load_nav2_map(yml)
    assert np.array_equal(back.data, data) and back.origin_xy == (-1.0, 2.0)


# ----------------------------------------------------------------------------- gravity alignment
def test_gravity_aligned_map_transform():
    assert np.allclose(O.gravity_aligned_map_transform((0, 0, 2.0)), np.eye(4))
    g = np.array([-0.0089, 0.9044, 0.4265])  # 7-Scenes gravity (down) in world coordinates
    T = O.gravity_aligned_map_transform(-g, origin_world=(1.0, 2.0, 3.0))
    R = T[:3, :3]
    assert np.allclose(R.T @ R, np.eye(3)) and np.linalg.det(R) == pytest.approx(1.0)
    assert np.allclose(R[:, 2], -g / np.linalg.norm(g))  # map z = up
    assert np.allclose(R.T @ (-g / np.linalg.norm(g)), [0, 0, 1])
    assert R[2, 0] == pytest.approx(0.0, abs=1e-12) or abs(R[:, 0] @ (-g)) < 1e-9  # x horizontal
    assert R[0, 0] > 0.9  # x close to world x
    assert np.allclose(T[:3, 3], [1, 2, 3])
    # world x vertical: x falls back to world y
    T2 = O.gravity_aligned_map_transform((1.0, 0, 0))
    assert np.allclose(T2[:3, 2], [1, 0, 0]) and abs(T2[:3, 0] @ [1, 0, 0]) < 1e-9
    with pytest.raises(ValueError):
        O.gravity_aligned_map_transform((0, 0, 0))
    # a level camera (optical y down) gives up = world z
    from neural_mapping.datasets.synthetic import _look_at
    cam = _look_at(np.array([0.0, 0.0, 1.4]), np.array([1.0, 0.3, 1.4]))
    assert np.allclose(O.up_from_camera_pose(cam), [0, 0, 1])
    cfg = OccupancyConfig(map_up_source="first_camera", map_origin="first_camera",
                          first_camera_height_m=1.4)
    Tm = O.map_transform_from_config(cfg, cam)
    assert np.allclose(Tm[:3, 2], [0, 0, 1]) and np.allclose(Tm[:3, 3], [0, 0, 0])
    with pytest.raises(ValueError, match="first camera"):
        O.map_transform_from_config(cfg)
    assert np.allclose(O.map_transform_from_config(MappingConfig()), np.eye(4))
    v = O.map_transform_from_config(OccupancyConfig(map_up_source="vector", map_up_x=-g[0],
                                                    map_up_y=-g[1], map_up_z=-g[2]))
    assert np.allclose(v, T - np.pad(np.array([[1.0, 2, 3]]).T, ((0, 1), (3, 0))))


def test_tilted_world_made_gravity_aligned():
    """The room integrated in a y-down world (like 7-Scenes): with map_up = -gravity the
    grid matches the GT footprints of the z-up room (conservatively)."""
    ds = SyntheticRoom(num_frames=32, width=320, height=240, seed=0)
    a = math.radians(100.0)  # world = z-up room rotated about x: gravity ~ +y, tilted 10 deg
    G = np.eye(4)
    G[:3, :3] = [[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]]
    G[:3, 3] = [0.3, -0.2, 0.5]
    vol = TSDFVolume(VOXEL, depth_max_m=6.0, device="cpu")
    for fr in ds:
        vol.integrate(fr.depth, fr.intrinsics, G @ fr.pose, fr.color)
    up_world = G[:3, :3] @ [0, 0, 1]
    gravity = -up_world
    assert gravity[1] > 0.9  # "y down-ish", as 7-Scenes
    cfg = OccupancyConfig(map_up_source="vector", map_up_x=up_world[0], map_up_y=up_world[1],
                          map_up_z=up_world[2])
    T_world_map = O.map_transform_from_config(cfg)
    # the map frame differs from the room frame by a yaw and a translation only
    M = np.linalg.inv(T_world_map) @ G  # room -> map
    assert np.allclose(M[:3, 2], [0, 0, 1], atol=1e-9)
    band_shift = M[2, 3]  # room z -> map z
    cfg = dataclasses.replace(cfg, occupancy_min_z_m=0.1 + band_shift,
                              occupancy_max_z_m=1.2 + band_shift)
    g = O.occupancy_grid_2d(vol.field(), cfg, T_world_map)
    inter, inside = gt_cells(ds, g, cfg.occupancy_min_z_m, cfg.occupancy_max_z_m, M)
    obs = g.data != O.UNKNOWN
    occ = g.data == O.OCCUPIED
    assert obs.sum() > 3000
    assert not ((g.data == O.FREE) & inside).any()
    assert (inter & obs & ~occ).sum() <= 0.01 * (inter & obs).sum()
    # voxels tilted against the cells: their footprints spill into neighbours (conservative)
    assert ((occ == inter) & obs).sum() / obs.sum() >= 0.93


# ----------------------------------------------------------------------------- 3D occupancy
def test_occupied_voxels_on_the_surface(room):
    import open3d as o3d

    ds, field = room
    xyz, rgb = O.occupied_voxels(field)
    assert xyz.dtype == np.float32 and xyz.ndim == 2 and xyz.shape[1] == 3 and len(xyz) > 10000
    assert rgb.dtype == np.uint8 and rgb.shape == xyz.shape
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(ds.gt_mesh()))
    dist = scene.compute_distance(o3d.core.Tensor(xyz)).numpy()
    # occupied = surface voxels and a thin layer behind: within the thickness + one voxel
    assert np.percentile(dist, 99) <= 0.05 + VOXEL
    assert np.median(dist) <= VOXEL
    # colours: the room is not black
    assert rgb.astype(float).mean() > 40
    # a height band selects a subset, in the map frame
    T = np.eye(4)
    T[2, 3] = -1.0  # map origin 1 m below the world's: map z = world z + 1
    band, _ = O.occupied_voxels(field, None, T, z_range=(1.1, 1.5), with_color=False)
    assert len(band) and band[:, 2].min() >= 1.1 and band[:, 2].max() <= 1.5
    ref = xyz[(xyz[:, 2] + 1.0 >= 1.1) & (xyz[:, 2] + 1.0 <= 1.5)]
    assert abs(len(ref) - len(band)) <= 0.01 * len(ref)


def test_config_section():
    cfg = MappingConfig()
    assert isinstance(cfg.occupancy, OccupancyConfig)
    assert "occupancy_min_z_m" in cfg.to_flat()
    with pytest.raises(ValueError, match="occupancy_min_z_m"):
        MappingConfig.from_flat({"occupancy_min_z_m": 2.0, "occupancy_max_z_m": 1.0})
    with pytest.raises(ValueError, match="map_up"):
        MappingConfig.from_flat({"map_up_source": "vector", "map_up_z": 0.0})
    with pytest.raises(ValueError):
        MappingConfig.from_flat({"map_up_source": "compass"})
    # resolution 0 = the voxel size
    assert O.resolution_of(OccupancyConfig(occupancy_resolution_m=0.0), 0.03) == 0.03
    # products read a VoxelField only (its truncation included), not a volume or a bare grid
    vol = TSDFVolume(0.05, device="cpu")
    for bad in (object(), vol, vol.grid):
        with pytest.raises(TypeError, match="VoxelField"):
            O.occupancy_grid_2d(bad)
        with pytest.raises(TypeError, match="VoxelField"):
            O.occupied_voxels(bad)
        with pytest.raises(TypeError, match="VoxelField"):
            O.OccupancyMap2D().update(bad)
