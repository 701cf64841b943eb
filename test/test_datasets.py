"""Dataset loaders (7-Scenes, TUM RGB-D), the synthetic generator and format detection."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neural_mapping.datasets import (SUPPORTED_LAYOUTS, DatasetError, SevenScenes, SyntheticRoom,
                                     TUMRGBD, detect_format, open_dataset, select_indices)
from neural_mapping.datasets.tum import Undistorter, associate
from neural_mapping.geometry import inv_pose, pose_distance
from neural_mapping.io.images import read_depth_png
from neural_mapping.types import CameraIntrinsics, check_pose


# ------------------------------------------------------------------ selection
def test_select_indices():
    assert select_indices(10).tolist() == list(range(10))
    assert select_indices(10, max_frames=3).tolist() == [0, 1, 2]
    assert select_indices(10, stride=3).tolist() == [0, 3, 6, 9]
    assert select_indices(10, max_frames=2, stride=4).tolist() == [0, 4]
    assert select_indices(10, max_frames=0).tolist() == list(range(10))  # 0 = all
    with pytest.raises(ValueError, match="stride"):
        select_indices(10, stride=0)
    with pytest.raises(ValueError, match="max_frames"):
        select_indices(10, max_frames=-1)


def test_depth_png_invalid_markers(tmp_path):
    raw = np.array([[0, 1000, 65535], [2500, 65534, 1]], dtype=np.uint16)
    Image.fromarray(raw).save(tmp_path / "d.png")
    d = read_depth_png(tmp_path / "d.png", 1000.0)
    assert d.dtype == np.float32
    np.testing.assert_allclose(d, [[0, 1.0, 0], [2.5, 65.534, 0.001]], rtol=1e-6)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(ValueError, match="16-bit"):
        read_depth_png(tmp_path / "c.png", 1000.0)


# ------------------------------------------------------------------ 7-Scenes
def test_seven_scenes(redkitchen):
    ds = SevenScenes(redkitchen)
    assert len(ds) == 500 and ds.has_ground_truth
    K = ds.intrinsics
    assert (K.width, K.height, K.fx, K.fy, K.cx, K.cy) == (640, 480, 585.0, 585.0, 320.0, 240.0)
    np.testing.assert_allclose(ds.timestamps[:3], [0, 1 / 30, 2 / 30])
    lo, hi = np.inf, 0.0
    for i in (0, 123, 250, 499):
        f = ds[i]
        assert f.index == i and f.meta["source_index"] == i
        assert f.depth.shape == (480, 640) and f.depth.dtype == np.float32
        assert f.color.shape == (480, 640, 3) and f.color.dtype == np.uint8
        v = f.depth[f.depth > 0]
        assert 0.8 < v.mean() < 4.0 and 0.7 < (f.depth > 0).mean() <= 1.0
        lo, hi = min(lo, v.min()), max(hi, v.max())
        raw = np.asarray(Image.open(redkitchen / f"frame-{i:06d}.depth.png"))
        ok = (raw > 0) & (raw < 65535)
        np.testing.assert_allclose(f.depth[ok], raw[ok] / 1000.0, rtol=1e-6)
        assert np.all(f.depth[~ok] == 0)
        np.testing.assert_array_equal(f.pose, np.loadtxt(redkitchen / f"frame-{i:06d}.pose.txt"))
        assert f.timestamp == pytest.approx(i / 30)
    assert 0.79 <= lo and hi <= 4.0  # SOURCE.md: valid range 0.801 - 3.975 m
    P = ds.gt_poses()
    assert P.shape == (500, 4, 4)
    for T in P:
        check_pose(T)
    steps = [pose_distance(P[k], P[k + 1])[0] for k in range(499)]
    assert max(steps) < 0.05  # smooth hand-held trajectory (max 36 mm per frame)
    assert ds[-1].meta["source_index"] == 499
    with pytest.raises(IndexError):
        ds[500]


def test_seven_scenes_selection(redkitchen):
    ds = open_dataset(redkitchen, max_frames=4, stride=5)
    assert isinstance(ds, SevenScenes)
    assert len(ds) == 4 and ds.frame_numbers.tolist() == [0, 5, 10, 15]
    np.testing.assert_allclose(ds.timestamps, [0, 5 / 30, 10 / 30, 15 / 30])
    f = ds[2]
    assert f.index == 2 and f.meta["source_index"] == 10
    np.testing.assert_array_equal(f.pose, np.loadtxt(redkitchen / "frame-000010.pose.txt"))
    assert [fr.index for fr in ds] == [0, 1, 2, 3]


# ------------------------------------------------------------------------- TUM
def _tum_rows(path):
    return [ln.split() for ln in open(path) if ln.strip() and not ln.startswith("#")]


def test_tum_association_and_depth_scale(tum_xyz):
    ds = TUMRGBD(tum_xyz, undistort=False)
    assert len(ds) == 798 and ds.dropped_no_color == 0 and ds.no_ground_truth == 0
    assert ds.camera == "fr1"
    K = ds.intrinsics
    assert (K.width, K.height, K.fx, K.fy, K.cx, K.cy) == (640, 480, 517.3, 516.5, 318.6, 255.3)
    depth_rows = _tum_rows(tum_xyz / "depth.txt")
    np.testing.assert_array_equal(ds.timestamps, [float(r[0]) for r in depth_rows])
    rgb_t = np.array([float(r[0]) for r in _tum_rows(tum_xyz / "rgb.txt")])
    f = ds[100]
    assert abs(f.meta["color_stamp"] - f.timestamp) <= 0.02
    assert f.meta["color_stamp"] == rgb_t[np.argmin(np.abs(rgb_t - f.timestamp))]
    raw = np.asarray(Image.open(tum_xyz / depth_rows[100][1]))
    np.testing.assert_allclose(f.depth, raw / 5000.0, rtol=1e-6)
    v = f.depth[f.depth > 0]
    assert 0.4 < np.median(v) < 3.0
    # TUM associate.py (unique pairs) drops 6 depth frames whose colour image is taken
    one = TUMRGBD(tum_xyz, association="one_to_one", load_color=True, max_frames=50)
    assert one.num_associated == 792 and one.dropped_no_color == 6 and len(one) == 50
    m = associate(np.array([0.0, 0.01, 0.5]), np.array([0.005, 0.2]), 0.02)
    assert m.tolist() == [0, 0, -1]
    assert associate(np.array([0.0, 0.01, 0.5]), np.array([0.005, 0.2]), 0.02, one_to_one=True).tolist() == [0, -1, -1]


def test_tum_ground_truth_interpolation(tum_xyz):
    from scipy.spatial.transform import Rotation, Slerp

    ds = TUMRGBD(tum_xyz, undistort=False, stride=37)
    gt = np.array([[float(v) for v in r] for r in _tum_rows(tum_xyz / "groundtruth.txt")])
    assert ds.has_ground_truth
    P = ds.gt_poses()
    assert np.isfinite(P).all()
    for k, t in enumerate(ds.timestamps):
        j = np.searchsorted(gt[:, 0], t)
        a, b = gt[j - 1], gt[j]
        assert a[0] <= t <= b[0]
        alpha = (t - a[0]) / (b[0] - a[0])
        trans = (1 - alpha) * a[1:4] + alpha * b[1:4]
        rot = Slerp([a[0], b[0]], Rotation.from_quat([a[4:8], b[4:8]]))([t])[0]
        np.testing.assert_allclose(P[k][:3, 3], trans, atol=1e-9)
        np.testing.assert_allclose(P[k][:3, :3], rot.as_matrix(), atol=1e-8)
        np.testing.assert_array_equal(ds[k].pose, P[k])
        check_pose(P[k])


def test_tum_undistortion_maps():
    K = CameraIntrinsics(64, 48, 50.0, 50.0, 31.5, 23.5)
    ident = Undistorter(K, (0, 0, 0, 0, 0))
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 3, (48, 64)).astype(np.float32)
    color = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ident.depth(depth), depth)
    np.testing.assert_array_equal(ident.color(color), color)
    und = Undistorter(K, (0.2624, -0.9531, -0.0054, 0.0026, 1.1633))
    # the principal point stays, a corner moves outwards (positive k1 dominates there)
    assert abs(und.map_u[24, 32] - 32) < 0.05 and abs(und.map_v[24, 32] - 24) < 0.05
    d = und.depth(depth)
    assert d.dtype == np.float32 and set(np.unique(d[d > 0])) <= set(np.unique(depth))  # nearest only


def test_tum_undistortion_improves_multiview_consistency(tum_xyz):
    """Reproject depth between frames 60-90 apart with the GT poses: undistorted images agree
    better (the reason ``undistort=True`` is the default)."""
    pairs = [(0, 90), (150, 210), (300, 390), (450, 510), (600, 690)]

    def disagreement(ds):
        K = ds.intrinsics
        med = []
        for a, b in pairs:
            fa, fb = ds[a], ds[b]
            d = fa.depth[::2, ::2]
            v, u = np.nonzero(d > 0)
            z = d[v, u]
            u, v = 2 * u, 2 * v
            P = np.stack([(u - K.cx) / K.fx * z, (v - K.cy) / K.fy * z, z, np.ones_like(z)])
            Q = (inv_pose(fb.pose) @ fa.pose @ P)[:3]
            ub = np.rint(Q[0] / Q[2] * K.fx + K.cx).astype(int)
            vb = np.rint(Q[1] / Q[2] * K.fy + K.cy).astype(int)
            ok = (ub >= 0) & (ub < K.width) & (vb >= 0) & (vb < K.height) & (Q[2] > 0)
            db = fb.depth[vb[ok], ub[ok]]
            good = db > 0
            med.append(np.median(np.abs(db[good] - Q[2][ok][good])))
        return float(np.mean(med))

    raw = disagreement(TUMRGBD(tum_xyz, undistort=False, load_color=False))
    und = disagreement(TUMRGBD(tum_xyz, undistort=True, load_color=False))
    assert und < raw


def _make_tum(root: Path, n=4, gt_span=(0.0, 10.0), with_rgb_gap=False):
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    rgb, dep = ["# color images"], ["# depth maps"]
    for k in range(n):
        t = 1.0 + k / 30
        Image.fromarray(np.full((6, 8), 5000 + 1000 * k, np.uint16)).save(root / f"depth/{t:.6f}.png")
        dep.append(f"{t:.6f} depth/{t:.6f}.png")
        if with_rgb_gap and k == 1:
            continue
        tc = t + 0.004
        Image.fromarray(np.full((6, 8, 3), 10 * k, np.uint8)).save(root / f"rgb/{tc:.6f}.png")
        rgb.append(f"{tc:.6f} rgb/{tc:.6f}.png")
    (root / "rgb.txt").write_text("\n".join(rgb) + "\n")
    (root / "depth.txt").write_text("\n".join(dep) + "\n")
    g0, g1 = gt_span
    (root / "groundtruth.txt").write_text(
        "# ground truth\n" + f"{g0} 0 0 0 0 0 0 1\n" + f"{g1} 1 2 3 0 0 0.7071067811865476 0.7071067811865476\n")
    return root


def test_tum_small_folder_dropped_frames_and_missing_gt(tmp_path):
    root = _make_tum(tmp_path / "rgbd_dataset_freiburg3_tiny", n=4, gt_span=(0.9, 1.05), with_rgb_gap=True)
    ds = open_dataset(root)
    assert isinstance(ds, TUMRGBD) and ds.camera == "fr3" and not ds.undistort
    assert len(ds) == 3 and ds.dropped_no_color == 1
    np.testing.assert_allclose(ds.timestamps, [1.0, 1 + 2 / 30, 1.1], atol=1e-6)
    assert ds.no_ground_truth == 2  # after the last GT stamp: never extrapolated
    f0 = ds[0]
    np.testing.assert_allclose(f0.depth, 1.0)
    assert f0.color[0, 0, 0] == 0 and ds[1].color[0, 0, 0] == 20
    # at t=1.0 of a 0.9..1.05 s segment: translation lerp, rotation slerp (90 deg about z)
    a = (1.0 - 0.9) / 0.15
    np.testing.assert_allclose(f0.pose[:3, 3], a * np.array([1, 2, 3]), atol=1e-12)
    ang = np.degrees(np.arctan2(f0.pose[1, 0], f0.pose[0, 0]))
    assert ang == pytest.approx(90 * a, abs=1e-9)
    assert ds[1].pose is None and np.isnan(ds.gt_poses()[1]).all()
    # bracketing samples further apart than max_gt_gap_s: no ground truth at all
    gap = TUMRGBD(root, max_gt_gap_s=0.1)
    assert gap.no_ground_truth == 3 and not gap.has_ground_truth


def test_tum_unknown_camera_warns(tmp_path):
    root = _make_tum(tmp_path / "myseq", n=2)
    with pytest.warns(UserWarning, match="Freiburg 1"):
        ds = TUMRGBD(root)
    assert ds.camera == "fr1"
    with pytest.raises(DatasetError, match="unknown TUM camera"):
        TUMRGBD(root, camera="fr9")


# ------------------------------------------------------------------ synthetic
def test_synthetic_depth_matches_raycast_of_gt_mesh():
    import open3d as o3d

    ds = SyntheticRoom(num_frames=12, width=96, height=72, seed=3, stride=5)
    assert len(ds) == 3 and ds.has_ground_truth
    K = ds.intrinsics
    assert K.fx == pytest.approx(525 * 96 / 640)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(ds.gt_mesh()))
    u, v = np.meshgrid(np.arange(K.width), np.arange(K.height))
    d = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones(u.shape)], -1)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)  # unit rays: t_hit is the range
    for f in ds:
        T = f.pose
        check_pose(T)
        rays = np.concatenate([np.broadcast_to(T[:3, 3], d.shape), d @ T[:3, :3].T], -1)
        rng_m = scene.cast_rays(o3d.core.Tensor(rays.astype(np.float32)))["t_hit"].numpy()
        z = np.where(np.isfinite(rng_m), rng_m * d[..., 2], 0)
        np.testing.assert_allclose(f.depth, z, atol=2e-5)
        assert (f.depth > 0).mean() > 0.99  # a closed room seen from inside
        assert f.color.std() > 20  # textured
        assert f.timestamp == pytest.approx(f.meta["source_index"] / 30)


def test_synthetic_deterministic_and_smooth():
    a = SyntheticRoom(num_frames=20, width=64, height=48, seed=7, depth_noise_m=0.01)
    b = SyntheticRoom(num_frames=20, width=64, height=48, seed=7, depth_noise_m=0.01)
    c = SyntheticRoom(num_frames=20, width=64, height=48, seed=8, depth_noise_m=0.01)
    fa, fb, fc = a[4], b[4], c[4]
    np.testing.assert_array_equal(fa.depth, fb.depth)
    np.testing.assert_array_equal(fa.color, fb.color)
    assert not np.array_equal(fa.depth, fc.depth)
    clean = SyntheticRoom(num_frames=20, width=64, height=48, seed=7)[4].depth
    diff = fa.depth - clean
    assert 0 < np.abs(diff).mean() < 0.05
    P = SyntheticRoom(num_frames=120, width=32, height=24).gt_poses()
    steps = np.array([pose_distance(P[k], P[(k + 1) % 120]) for k in range(120)])
    assert steps[:, 0].max() < 0.06 and np.degrees(steps[:, 1]).max() < 4.0  # closed smooth orbit
    lo, hi = SyntheticRoom(num_frames=1, width=32, height=24).bounds_m
    assert np.all((P[:, :3, 3] > lo) & (P[:, :3, 3] < hi))


# ---------------------------------------------------------------- detection
def test_open_dataset_detection_and_errors(tmp_path, redkitchen):
    assert detect_format("synthetic") == "synthetic"
    assert isinstance(open_dataset("synthetic", max_frames=2, width=32, height=24), SyntheticRoom)
    assert detect_format(redkitchen) == "7scenes"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(DatasetError) as e:
        open_dataset(tmp_path / "empty")
    msg = str(e.value)
    assert "cannot tell the layout" in msg and "camera-intrinsics.txt" in msg and "rgb.txt" in msg
    assert SUPPORTED_LAYOUTS in msg
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="is a file"):
        open_dataset(tmp_path / "empty" / "readme.txt")


def test_seven_scenes_bad_inputs(tmp_path):
    root = tmp_path / "seq"
    root.mkdir()
    (root / "camera-intrinsics.txt").write_text("1 0 0\n0 1 0\n")
    (root / "frame-000000.pose.txt").write_text(" ".join(map(str, np.eye(4).ravel())))
    with pytest.raises(DatasetError, match="3x3"):
        SevenScenes(root)
    (root / "camera-intrinsics.txt").write_text("500 0 4\n0 500 3\n0 0 1\n")
    with pytest.raises(DatasetError, match="depth.png is missing"):
        SevenScenes(root)
    Image.fromarray(np.full((6, 8), 1500, np.uint16)).save(root / "frame-000000.depth.png")
    (root / "frame-000000.pose.txt").write_text("1 0 0 0\n0 2 0 0\n0 0 1 0\n0 0 0 1\n")
    with pytest.raises(DatasetError, match="not rigid"):
        SevenScenes(root)
    (root / "frame-000000.pose.txt").write_text(" ".join(map(str, np.eye(4).ravel())))
    ds = SevenScenes(root)
    f = ds[0]
    assert f.color is None and np.allclose(f.depth, 1.5) and ds.intrinsics.width == 8
