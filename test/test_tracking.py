import math

import numpy as np
import pytest
import torch

from neural_mapping import geometry as g
from neural_mapping.config import MappingConfig, TrackingConfig
from neural_mapping.tracking.model_view import ModelView
from neural_mapping.tracking.pyramid import downsample_depth
from neural_mapping.tracking.tracker import Tracker
from neural_mapping.types import RGBDFrame

from _synthetic_scene import K_QVGA as K, render_depth as _render

# Looking down into the room corner: floor, two walls and the boxes constrain all 6 DOF.


def render_depth(T, **kw):
    return _render(T, K, **kw)


def tracker(**values) -> Tracker:
    """The system's tracker (default config, its depth range) with flat config overrides."""
    return Tracker.from_config(MappingConfig.from_flat(values), "cpu")


T0 = g.make_pose(g.so3_exp([-0.35, 0.25, 0.0]), [0.0, -0.2, 0.0])
DEG = math.radians(1.0)

MOTIONS = [
    [0.01, 0, 0, 0, 0, 0],
    [0, 0.02, 0, 0, 0, 0],
    [0, 0, 0.03, 0, 0, 0],
    [0.015, -0.02, 0.01, 0, 0, 0],
    [0, 0, 0, 1 * DEG, 0, 0],
    [0, 0, 0, 0, 2 * DEG, 0],
    [0, 0, 0, 0, 0, 3 * DEG],
    [0.02, 0.01, -0.02, 2 * DEG, -1 * DEG, 3 * DEG],
    [-0.03, 0.0, 0.02, -3 * DEG, 2 * DEG, -1 * DEG],
]


@pytest.fixture(scope="module")
def reference():
    d0 = render_depth(T0)
    return d0, ModelView.from_depth(d0, K, T0)


def _err(T_est, T_true):
    dt, dr = g.pose_distance(T_true, T_est)
    return dt, math.degrees(dr)


@pytest.mark.parametrize("delta", MOTIONS)
def test_recovers_known_motion(reference, delta):
    _, view = reference
    T1 = T0 @ g.se3_exp(delta)
    tr = tracker()
    res = tr.track_depth(render_depth(T1), K, view, T0)
    assert res.ok, res.reason
    dt, dr = _err(res.T_world_cam, T1)
    assert dt < 0.002 and dr < 0.2, (dt, dr)
    assert res.inliers > 5000 and res.residual < 0.002
    assert res.iterations >= 1


def test_refines_external_guess(reference):
    """external+refine: a drifting external pose is the initial guess, the result is the truth."""
    _, view = reference
    T1 = T0 @ g.se3_exp([0.01, 0.0, 0.01, 0, DEG, 0])
    T_ext = T1 @ g.se3_exp([0.015, -0.01, 0.0, 0.5 * DEG, 0, -DEG])
    res = tracker().track_depth(render_depth(T1), K, view, T_ext)
    assert res.ok
    dt, dr = _err(res.T_world_cam, T1)
    assert dt < 0.002 and dr < 0.2


def test_sequence_from_previous_estimates_and_stateless():
    """Three frames in a row, each tracked from the previous estimate against a view of the
    previous frame at that estimate.  The tracker keeps no state: the same call repeats bit
    for bit, whatever was tracked in between."""
    step = g.se3_exp([0.01, 0.005, 0.0, 0.0, DEG, 0.0])
    tr = tracker()
    T_est, T_true = T0, T0
    first = None
    for k in range(1, 4):
        view = ModelView.from_depth(render_depth(T_true), K, T_est)
        T_true = T_true @ step
        d = render_depth(T_true)
        res = tr.track_depth(d, K, view, T_est)
        assert res.ok, res.reason
        dt, dr = _err(res.T_world_cam, T_true)
        assert dt < 0.003 and dr < 0.3, (k, dt, dr)
        if first is None:
            first = (d, view, T_est, res.T_world_cam)
        T_est = res.T_world_cam
    again = tr.track_depth(first[0], K, first[1], first[2])
    np.testing.assert_array_equal(again.T_world_cam, first[3])


def test_no_valid_depth_fails_cleanly(reference):
    _, view = reference
    tr = tracker()
    for depth in (np.zeros((240, 320), np.float32), np.full((240, 320), np.nan, np.float32)):
        res = tr.track_depth(depth, K, view, T0)
        assert not res.ok and res.reason == "no_depth"
        np.testing.assert_array_equal(res.T_world_cam, T0)


def test_textureless_wall_keeps_the_prior_in_its_weak_directions():
    """A flat wall constrains 3 directions (the distance to it, two tilts): those are
    recovered, the other 3 stay at the initial guess -- tracked, not a failure; with
    tracking_max_weak_directions below 3 it is a 'degenerate' failure."""
    d = render_depth(T0, walls_only="plane")
    view = ModelView.from_depth(d, K, T0)
    T1 = T0 @ g.se3_exp([0.01, 0, 0, 0, 0, 0])
    res = tracker().track_depth(render_depth(T1, walls_only="plane"), K, view, T0)
    assert res.ok and res.weak_directions == 3, res.info()
    n = T0[:3, :3].T @ np.array([0.0, 0.0, 1.0])  # wall normal (world z) in T0's camera frame
    step = (inv := g.inv_pose(T0) @ res.T_world_cam)[:3, 3]
    true = (g.inv_pose(T0) @ T1)[:3, 3]
    assert abs(np.dot(step - true, n)) < 1e-3  # the distance to the wall is recovered
    # along the wall nothing moved it: the estimate stays at the prior (T0) there
    along = step - np.dot(step, n) * n
    assert np.linalg.norm(along) < 2e-3, (along, inv)
    res = tracker(tracking_max_weak_directions=2).track_depth(
        render_depth(T1, walls_only="plane"), K, view, T0)
    assert not res.ok and res.reason == "degenerate"
    assert np.all(np.isfinite(res.T_world_cam))


def test_no_model(reference):
    """No view (empty map), or a view with fewer valid pixels than tracking_min_valid_points."""
    d0, _ = reference
    tr = tracker()
    res = tr.track(RGBDFrame(d0, K), None, T0)
    assert not res.ok and res.reason == "no_model"
    sparse = np.zeros_like(d0)
    sparse[100:110, 100:110] = d0[100:110, 100:110]  # 100 pixels, of which < 64 keep a normal
    view = ModelView.from_depth(sparse, K, T0)
    assert 0 < view.num_valid < 300
    res = tr.track_depth(d0, K, view, T0)
    assert not res.ok and res.reason == "no_model"
    np.testing.assert_array_equal(res.T_world_cam, T0)
    with pytest.raises(TypeError, match="ModelView"):
        tr.track_depth(d0, K, d0, T0)


def test_unrelated_frame_fails(reference):
    """A frame that does not overlap the model (camera turned away) is not accepted."""
    _, view = reference
    T_away = T0 @ g.se3_exp([0, 0, 0, 0, math.radians(150), 0])
    res = tracker().track_depth(render_depth(T_away), K, view, T0)
    assert not res.ok and res.reason == "few_inliers", res.reason
    np.testing.assert_array_equal(res.T_world_cam, T0)


@pytest.mark.parametrize("values,reason", [
    # the true motion (3 cm, 3 deg from T0) converges but is beyond the allowed jump
    ({"tracking_max_motion_m": 0.02}, "large_motion"),
    ({"tracking_max_motion_deg": 2.0}, "large_motion"),
    ({"tracking_min_inliers": 1_000_000}, "few_inliers"),
    ({"tracking_min_inlier_ratio": 1.0}, "few_inliers"),
    ({"tracking_max_rms_m": 1e-4}, "large_residual"),  # noisy frame: residual ~ 1 mm
    ({"tracking_degenerate_ratio": 1.0}, "degenerate"),
])
def test_failure_checks_follow_the_config(reference, values, reason):
    """Each check of an estimate fails the frame with its own reason once its config limit
    is crossed (the default config accepts the same frame)."""
    _, view = reference
    T1 = T0 @ g.se3_exp(MOTIONS[-1])
    d1 = render_depth(T1)
    d1 = d1 + np.random.default_rng(0).normal(0, 0.002, d1.shape).astype(np.float32) * (d1 > 0)
    ok = tracker().track_depth(d1, K, view, T0)
    assert ok.ok and _err(ok.T_world_cam, T1)[0] < 0.003, ok.reason
    res = tracker(**values).track_depth(d1, K, view, T0)
    assert not res.ok and res.reason == reason, (res.reason, res.info())
    np.testing.assert_array_equal(res.T_world_cam, T0)


def test_deterministic(reference):
    _, view = reference
    d1 = render_depth(T0 @ g.se3_exp(MOTIONS[-1]))
    a = tracker().track_depth(d1, K, view, T0)
    b = tracker().track_depth(d1, K, view, T0)
    np.testing.assert_array_equal(a.T_world_cam, b.T_world_cam)
    assert a.iterations == b.iterations and a.inliers == b.inliers


def test_pyramid_levels_from_the_config(reference):
    """The per-level iteration fields drive the pyramid: a skipped coarse level runs no
    iterations, and the iteration count never exceeds the configured budget."""
    _, view = reference
    d1 = render_depth(T0 @ g.se3_exp(MOTIONS[3]))
    full = tracker().track_depth(d1, K, view, T0)
    assert full.ok and len(full.levels) == 3 and full.iterations <= 6 + 4 + 3
    fine_only = tracker(tracking_iterations_coarse=0, tracking_iterations_mid=0,
                        tracking_iterations_fine=5).track_depth(d1, K, view, T0)
    assert fine_only.ok and len(fine_only.levels) == 1 and fine_only.iterations <= 5
    assert fine_only.levels[0][0] == full.levels[-1][0]  # same finest level points
    with pytest.raises(ValueError, match="tracking_iterations_fine"):
        tracker(tracking_iterations_fine=0)


def test_one_tracking_config():
    """Every tracker setting is a TrackingConfig field (reachable from YAML, CLI and ROS); the
    depth range is the integration's."""
    cfg = MappingConfig.from_flat({"depth_min_m": 0.3, "depth_max_m": 2.5, "tracking_width_px": 160,
                                   "tracking_max_dist_fine_m": 0.02})
    tr = Tracker.from_config(cfg, "cpu")
    assert tr.config is cfg.tracking and (tr.depth_min_m, tr.depth_max_m) == (0.3, 2.5)
    assert tr.levels[-1] == (3, 0.02)
    with pytest.raises(ValueError, match="depth_min_m"):
        Tracker(TrackingConfig(), 2.0, 1.0, "cpu")


def test_downsample_keeps_edges_apart():
    d = torch.ones(4, 4)
    d[:, 2:] = 3.0  # two blocks per row pair: left at 1 m, right at 3 m
    d[0, 0] = 0.0  # a hole is ignored in the mean
    d[2, 1] = 2.0  # a block spanning an edge is dropped
    out = downsample_depth(d, 2)
    assert out.shape == (2, 2)
    assert out[0, 0] == 1.0 and out[0, 1] == 3.0 and out[1, 1] == 3.0
    assert out[1, 0] == 0.0
    assert downsample_depth(torch.zeros(4, 4), 2).abs().sum() == 0


def _load_7scenes(root, i):
    from PIL import Image
    raw = np.asarray(Image.open(root / f"frame-{i:06d}.depth.png"), dtype=np.uint16)
    d = raw.astype(np.float32) / 1000.0
    d[raw == 65535] = 0
    return d, np.loadtxt(root / f"frame-{i:06d}.pose.txt")


def test_real_frames_against_raycast_model(redkitchen):
    """7-Scenes: map frames 0..2 at their ground-truth poses (TSDF + raycast), then track frames
    3..5 from the previous ground-truth pose; each relative pose matches ground truth."""
    from neural_mapping.geometry import orthonormalize
    from neural_mapping.backends.tsdf.volume import TSDFVolume
    from neural_mapping.types import CameraIntrinsics

    K = CameraIntrinsics.from_matrix(np.loadtxt(redkitchen / "camera-intrinsics.txt"), 640, 480)
    vol = TSDFVolume(voxel_size_m=0.02, depth_max_m=3.0, device="cpu")
    for i in range(3):
        d, T = _load_7scenes(redkitchen, i)
        vol.integrate(d, K, orthonormalize(T))
    tr = tracker()
    errs = []
    for i in range(3, 6):
        d_prev, T_prev = _load_7scenes(redkitchen, i - 1)
        d, T_gt = _load_7scenes(redkitchen, i)
        T_prev, T_gt = orthonormalize(T_prev), orthonormalize(T_gt)
        model = tr.predict(vol, K, T_prev)  # the TSDF backend renders the model view
        res = tr.track_depth(d, K, model, T_prev)
        assert res.ok, res.reason
        errs.append(_err(res.T_world_cam, T_gt))
        vol.integrate(d, K, T_gt)
    dt = max(e[0] for e in errs)
    dr = max(e[1] for e in errs)
    # measured at 2 cm voxels: 3.0 mm / 0.13 deg (the ground truth is itself KinectFusion-tracked)
    assert dt < 0.006 and dr < 0.5, errs
