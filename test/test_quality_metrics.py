"""Map-quality metrics against hand-computed cases; sensor models' statistics; generator
determinism (issue 13)."""

import numpy as np
import open3d as o3d
import pytest

from neural_mapping.datasets import sensor_models as sm
from neural_mapping.datasets.synthetic_objects import ProceduralObject
from neural_mapping.datasets.synthetic_rooms import ProceduralRoom
from neural_mapping.io.map_metrics import depth_metrics, mesh_metrics, visible_samples, voxel_metrics


def _square(z, size=1.0):
    m = o3d.geometry.TriangleMesh()
    m.vertices = o3d.utility.Vector3dVector([[0, 0, z], [size, 0, z], [size, size, z], [0, size, z]])
    m.triangles = o3d.utility.Vector3iVector([[0, 1, 2], [0, 2, 3]])
    return m


def test_mesh_metrics_offset_planes():
    # two 1 m squares 1.5 cm apart along their normal: every distance is exactly 1.5 cm
    a, b = _square(0.0), _square(0.015)
    m = mesh_metrics(a, b, num_samples=20_000)
    assert m["accuracy_cm"] == pytest.approx(1.5, abs=1e-3)
    assert m["completion_cm"] == pytest.approx(1.5, abs=1e-3)
    assert m["completion_ratio_5cm"] == 1.0
    assert m["fscore_1cm"] == 0.0 and m["fscore_2cm"] == 1.0 and m["fscore_5cm"] == 1.0


def test_mesh_metrics_sphere_vs_shifted_sphere():
    r, s = 0.5, 0.03
    a = o3d.geometry.TriangleMesh.create_sphere(r, resolution=120)
    b = o3d.geometry.TriangleMesh.create_sphere(r, resolution=120)
    b.translate((s, 0, 0))
    # a point at angle theta from the shift axis is |sqrt(r^2 + s^2 - 2 r s cos theta) - r| from
    # the shifted sphere; cos theta is uniform on [-1, 1] for uniform samples of a sphere
    u = np.linspace(-1, 1, 200_001)
    dist = np.abs(np.sqrt(r * r + s * s - 2 * r * s * u) - r)
    expect_cm = 100 * dist.mean()
    frac_1cm = float(np.mean(dist < 0.01))
    m = mesh_metrics(a, b, num_samples=100_000)
    assert m["accuracy_cm"] == pytest.approx(expect_cm, rel=0.02)
    assert m["completion_cm"] == pytest.approx(expect_cm, rel=0.02)
    assert m["fscore_1cm"] == pytest.approx(frac_1cm, abs=0.01)
    assert m["fscore_5cm"] == 1.0


def test_voxel_metrics_hand_case():
    t = 0.25
    gt = np.array([-0.3, -0.1, 0.1, 0.3, 0.6, -0.6])
    pred = np.array([-0.2, 0.05, 0.2, 0.2, -0.1, 0.0])
    obs = np.array([True, True, True, False, True, False])
    # evaluated: observed or |gt| < t -> voxels 0, 1, 2, 4 (3: unobserved, |gt| >= t; 5 likewise)
    # clamped gt: -0.25, -0.1, 0.1, 0.25;  pred: -0.2, 0.05, 0.2, -0.1
    m = voxel_metrics(pred, obs, gt, t)
    diffs = np.array([0.05, 0.15, 0.1, 0.35])
    assert m["num_voxels"] == 4
    assert m["mad"] == pytest.approx(diffs.mean())
    assert m["mse"] == pytest.approx((diffs ** 2).mean())
    # occupancy: gt [1, 1, 0, 0], pred [1, 0, 0, 1] -> agree 2/4, inter 1, union 3
    assert m["occ_accuracy"] == pytest.approx(0.5)
    assert m["iou"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(2 * 1 / (2 + 2))
    # an unobserved voxel in the gt band counts as free (+t)
    m = voxel_metrics(np.array([0.0]), np.array([False]), np.array([-0.1]), t)
    assert m["mad"] == pytest.approx(0.35) and m["iou"] == 0.0


def test_depth_metrics_hand_case():
    gt = [np.array([[1.0, 2.0], [0.0, np.nan]]), np.array([[1.0, 1.0], [1.0, 1.0]])]
    rd = [np.array([[1.01, 0.0], [3.0, 1.0]]), np.array([[1.0, 1.1], [1.03, 0.0]])]
    m = depth_metrics(rd, gt)
    # valid ground truth: 2 + 4 = 6 pixels; hits 1 + 3 = 4 with errors 0.01, 0, 0.1, 0.03 m
    assert m["depth_hit_ratio"] == pytest.approx(4 / 6)
    assert m["depth_l1_cm"] == pytest.approx(100 * 0.14 / 4)
    assert m["depth_median_cm"] == pytest.approx(2.0)
    assert m["depth_within_5cm"] == pytest.approx(3 / 6)
    with pytest.raises(ValueError):
        depth_metrics([np.zeros((2, 3))], [np.zeros((2, 2))])


def test_heldout_poses_are_not_fused_views():
    for traj in ("handheld", "robot"):
        ds = ProceduralRoom(seed=2, num_frames=12, trajectory=traj)
        held, fused = ds.heldout_poses(every=4), ds.gt_poses()
        assert held.shape == (3, 4, 4)
        gaps = [min(np.linalg.norm(h[:3, 3] - f[:3, 3]) for f in fused) for h in held]
        assert min(gaps) > 0.05, gaps  # between two frames, on the same orbit
        if traj == "robot":
            assert np.allclose(held[:, 2, 3], 0.6)


def test_sensor_noise_statistics():
    rng = np.random.default_rng(0)
    d = np.full((300, 300), 2.0, np.float32)
    e = (sm.proportional_gaussian(d, rng, 0.01) - d) / d
    assert abs(e.std() / 0.01 - 1) < 0.1 and abs(e.mean()) < 0.001
    d3 = np.full((300, 300), 3.0, np.float32)
    e = sm.axial_kinect(d3, rng) - d3
    assert abs(e.std() / sm.axial_sigma(3.0) - 1) < 0.1
    q = sm.quantise_disparity(d3)
    disp = 525.0 * 0.075 / q
    assert np.allclose(disp / 0.125, np.round(disp / 0.125), atol=1e-3)
    for frac in (0.01, 0.05, 0.1):
        out, cover = sm.blob_outliers(d, np.random.default_rng(1), frac)
        moved = np.mean(out != d)
        assert abs(cover - frac) < 0.2 * frac and moved == pytest.approx(cover)
        assert np.abs(out - d)[out != d].min() >= 0.1 - 1e-6
    out = sm.pixel_outliers(d, np.random.default_rng(2), 0.05)
    assert abs(np.mean(out != d) - 0.05) < 0.005
    miss = sm.missing_returns(d, np.random.default_rng(3), p=0.02)
    assert abs(np.mean(miss == 0) - 0.02) < 0.004


def test_flying_pixels_lie_between_surfaces():
    d = np.full((40, 40), 3.0, np.float32)
    d[:, :20] = 1.0
    out = sm.flying_pixels(d, np.random.default_rng(0), p=1.0)
    changed = out != d
    assert changed.sum() == 40 and changed[:, 19].all()  # the near-side edge column
    assert ((out[changed] > 1.0) & (out[changed] < 3.0)).all()


def test_generators_are_deterministic():
    a = ProceduralRoom(seed=3, num_frames=8, sensor="realistic", blob_fraction=0.05)
    b = ProceduralRoom(seed=3, num_frames=8, sensor="realistic", blob_fraction=0.05)
    c = ProceduralRoom(seed=4, num_frames=8)
    assert np.array_equal(a[2].depth, b[2].depth) and np.array_equal(a[2].color, b[2].color)
    assert np.array_equal(np.asarray(a.gt_mesh().vertices), np.asarray(b.gt_mesh().vertices))
    assert len(a.gt_mesh().vertices) != len(c.gt_mesh().vertices) or \
        not np.array_equal(np.asarray(a.gt_mesh().vertices), np.asarray(c.gt_mesh().vertices))
    names = {o.name for o in a.objects}
    assert {"table_leg", "chair_leg", "chair_back", "shelf_board"} <= names  # thin structures
    robot = ProceduralRoom(seed=3, num_frames=8, trajectory="robot")
    assert np.allclose(robot.gt_poses()[:, 2, 3], 0.6)
    o1, o2 = ProceduralObject(seed=5, num_views=3, outlier_fraction=0.1), ProceduralObject(seed=5, num_views=3,
                                                                                          outlier_fraction=0.1)
    assert np.array_equal(o1.depth(1), o2.depth(1))
    pts = np.random.default_rng(0).uniform(0, 1, (1000, 3))
    assert np.array_equal(o1.sdf(pts), o2.sdf(pts))
    lo, hi = o1._bounds(o1.prims)
    assert (lo >= 0.1 - 1e-9).all() and (hi <= 0.9 + 1e-9).all()
    assert np.isclose((hi - lo).max(), 0.8)


def test_visible_samples_exclude_hidden_surfaces():
    ds = ProceduralRoom(seed=0, num_frames=6)
    gt = ds.gt_mesh()
    pts = visible_samples(gt, [ds.clean_depth(i) for i in range(len(ds))], ds.gt_poses(), ds.intrinsics,
                          num_samples=20_000)
    X, Y, _ = ds.room_size_m
    assert 1000 < len(pts) < 20_000
    # nothing seen behind the walls (the slabs' outer faces are 5 cm out; tol_m is 2 cm)
    assert (np.abs(pts[:, 0]) <= X / 2 + 0.021).all() and (np.abs(pts[:, 1]) <= Y / 2 + 0.021).all()
    assert (pts[:, 2] >= -0.021).all()
