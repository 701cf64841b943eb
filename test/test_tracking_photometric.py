"""Photometric alignment in the weak directions: residual and Jacobian against finite
differences, exposure invariance, and a wall + floor pair where depth-only ICP cannot see the
motion along the wall-floor line and the intensity term recovers it."""

import math

import numpy as np
import pytest
import torch

from neural_mapping import geometry as g
from neural_mapping.config import MappingConfig
from neural_mapping.tracking.model_view import ModelView
from neural_mapping.tracking.photometric import _photometric_system, gray, photometric_system
from neural_mapping.tracking.tracker import Tracker
from neural_mapping.types import CameraIntrinsics

K = CameraIntrinsics(80, 60, 65.0, 65.0, 39.5, 29.5)


def _view():
    """A textured plane 2 m in front of the reference camera (smooth pattern)."""
    v, u = torch.meshgrid(torch.arange(60.0), torch.arange(80.0), indexing="ij")
    z = torch.full((60, 80), 2.0)
    P = torch.stack([(u - K.cx) / K.fx * z, (v - K.cy) / K.fy * z, z], -1)
    N = torch.zeros_like(P)
    N[..., 2] = -1
    view = ModelView(P, N, torch.ones(60, 80, dtype=torch.bool), K, np.eye(4))
    X, Y = P[..., 0], P[..., 1]
    view.set_intensity(0.5 + 0.2 * torch.sin(9 * X) * torch.cos(7 * Y) + 0.1 * torch.sin(5 * X + 3 * Y))
    return view


def _points(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.9, 0.9, n)
    y = rng.uniform(-0.6, 0.6, n)
    return torch.tensor(np.stack([x, y, np.full(n, 2.0)]), dtype=torch.float64)


def _system(view, q, If, fn=_photometric_system):
    return fn(q, If, view.intensity.double(), view.grad_x.double(), view.grad_y.double(),
              view.intensity_ok, view.depth_map.double(), K.fx, K.fy, K.cx, K.cy, 0.05, 1.0, 1e-6)


@pytest.mark.parametrize("fn", [_photometric_system, photometric_system])
def test_residual_and_jacobian_match_finite_differences(fn):
    view = _view()
    q = _points()
    If = torch.full((q.shape[1],), 0.5, dtype=torch.float64)
    r, J, w, If2 = _system(view, q, If, fn)
    keep = w > 0
    assert keep.sum() > 300
    eps = 1e-5
    for k in range(6):
        xi = np.zeros(6)
        xi[k] = eps
        Tp = torch.as_tensor(g.se3_exp(xi))
        Tm = torch.as_tensor(g.se3_exp(-xi))
        qp = Tp[:3, :3] @ q + Tp[:3, 3:4]
        qm = Tm[:3, :3] @ q + Tm[:3, 3:4]
        # the model term only (the brightness fit is redone at each pose)
        sp, sm = _system(view, qp, If, fn), _system(view, qm, If, fn)
        rp = sp[0] + sp[3] * (sp[2] > 0)
        rm = sm[0] + sm[3] * (sm[2] > 0)
        keep = keep & (sp[2] > 0) & (sm[2] > 0)
        fd = (rp - rm) / (2 * eps)
        # the Jacobian uses the interpolated central-difference gradient: close to the
        # derivative of the bilinear interpolant, not identical
        err = (fd - J[k])[keep].abs()
        scale = J[k][keep].abs().mean()
        assert float(err.median()) < 0.1 * float(scale) + 1e-6, (k, float(err.median()), float(scale))


def test_brightness_fit_absorbs_exposure():
    """Frame intensities that are a brighter copy (1.3 I + 0.1) of the model's own at the same
    points: after the affine fit the residual is ~0."""
    view = _view()
    q = _points()
    base = _system(view, q, torch.full((q.shape[1],), 0.3, dtype=torch.float64))
    used = base[2] > 0
    assert used.sum() > 300
    model_values = base[0] + base[3]  # residual + fitted frame term = model intensity at q
    r, _, w, _ = _system(view, q, 1.3 * model_values + 0.1)
    assert bool((w > 0).eq(used).all())
    assert float(r[used].abs().max()) < 1e-6


def test_gray():
    c = np.zeros((2, 2, 3), np.uint8)
    c[0, 0] = (255, 255, 255)
    np.testing.assert_allclose(gray(c).numpy(), [[1, 0], [0, 0]])


@pytest.fixture(scope="module")
def wall_floor():
    from neural_mapping.datasets.synthetic_tracking import DegenerateSequence
    return DegenerateSequence("wall_floor", num_frames=40, width=320, height=240, seed=3)


def _tracker(**values):
    return Tracker.from_config(MappingConfig.from_flat(values), "cpu")


def test_wall_floor_pair_joint_cost_recovers_the_motion(wall_floor):
    """Depth-only: 2 cm off along the wall-floor line stays 2 cm off (the prior); with the
    photometric term in the weak direction the true motion is recovered."""
    f0, f1 = wall_floor[10], wall_floor[11]
    view = ModelView.from_depth(f0.depth, f0.intrinsics, f0.pose)
    view.set_intensity(gray(f0.color))
    T_init = f1.pose.copy()
    T_init[:3, 3] += [0.02, 0.005, 0.0]
    depth_only = _tracker(tracking_photometric=False).track(f1, view, T_init)
    joint = _tracker().track(f1, view, T_init)
    no_color = _tracker().track_depth(f1.depth, f1.intrinsics, view, T_init)
    for res in (depth_only, joint, no_color):
        assert res.ok, res.info()
    assert depth_only.weak_directions >= 1 and no_color.weak_directions >= 1
    assert joint.weak_directions == 0, joint.info()  # the intensity term constrains the line
    e_depth = g.pose_distance(depth_only.T_world_cam, f1.pose)[0]
    e_joint = g.pose_distance(joint.T_world_cam, f1.pose)[0]
    assert e_depth > 0.015, e_depth  # slid nowhere: kept the (wrong) prior along the line
    assert e_joint < 0.5 * e_depth, (e_joint, joint.info())  # 3 fine iterations: on its way
    # the joint cost's minimum is the true motion: more Gauss-Newton iterations reach it
    joint = _tracker(tracking_iterations_fine=10).track(f1, view, T_init)
    e_joint = g.pose_distance(joint.T_world_cam, f1.pose)[0]
    assert e_joint < 0.002, (e_joint, joint.info())
    assert joint.photometric_pairs > 300
    np.testing.assert_array_equal(no_color.T_world_cam, depth_only.T_world_cam)  # no color: geometry
    assert math.degrees(g.pose_distance(joint.T_world_cam, f1.pose)[1]) < 0.2


def test_joint_alignment_is_deterministic(wall_floor):
    f0, f1 = wall_floor[20], wall_floor[21]
    view = ModelView.from_depth(f0.depth, f0.intrinsics, f0.pose)
    view.set_intensity(gray(f0.color))
    T_init = f1.pose.copy()
    T_init[:3, 3] += [0.015, 0.0, 0.0]
    a = _tracker().track(f1, view, T_init)
    b = _tracker().track(f1, view, T_init)
    assert a.photometric_pairs > 0
    np.testing.assert_array_equal(a.T_world_cam, b.T_world_cam)


@pytest.fixture(scope="module")
def corridor():
    from neural_mapping.datasets.synthetic_tracking import DegenerateSequence
    return DegenerateSequence("corridor", num_frames=40, width=320, height=240, seed=0)


@pytest.mark.parametrize("k", [5, 25])
def test_corridor_pair_depth_only_slides_joint_recovers(corridor, k):
    """Looking down a corridor the translation along it is invisible to depth: 2 cm off along
    it stays 2 cm off depth-only (any other error is fixed); the joint cost (default weight)
    recovers the true motion, in all six directions at once.  Without color the joint tracker
    is the depth-only one."""
    f0, f1 = corridor[k], corridor[k + 1]
    view = ModelView.from_depth(f0.depth, f0.intrinsics, f0.pose)
    view.set_intensity(gray(f0.color))
    T_init = f1.pose.copy()
    T_init[:3, 3] += [0.02, 0.0, 0.0]  # x: along the corridor
    T_init[:3, :3] = g.so3_exp(np.radians([0.3, -0.2, 0.1])) @ T_init[:3, :3]
    assert MappingConfig().tracking.tracking_photometric_weight > 0
    depth_only = _tracker(tracking_photometric=False).track(f1, view, T_init)
    joint = _tracker().track(f1, view, T_init)
    no_color = _tracker().track_depth(f1.depth, f1.intrinsics, view, T_init)
    assert depth_only.ok and joint.ok and no_color.ok
    e_depth, r_depth = g.pose_distance(depth_only.T_world_cam, f1.pose)
    e_joint, r_joint = g.pose_distance(joint.T_world_cam, f1.pose)
    assert e_depth > 0.015, e_depth
    assert math.degrees(r_depth) < 0.1  # the geometry fixes the rotation...
    assert e_joint < 0.005, (e_joint, joint.info())  # ...the intensity the slide
    assert math.degrees(r_joint) < 0.1
    assert joint.photometric_pairs > 300 and joint.weak_directions == 0
    np.testing.assert_array_equal(no_color.T_world_cam, depth_only.T_world_cam)


def test_joint_term_keeps_a_well_constrained_pair():
    """Where depth alone fixes the motion (the furnished room), adding the intensity term
    does not move the estimate off: both within 2 mm / 0.1 degree of the truth."""
    from neural_mapping.datasets.synthetic_tracking import DegenerateSequence
    ds = DegenerateSequence("fast_rotation", num_frames=12, width=320, height=240, seed=1)
    f0, f1 = ds[8], ds[9]
    view = ModelView.from_depth(f0.depth, f0.intrinsics, f0.pose)
    view.set_intensity(gray(f0.color))
    T_init = f1.pose.copy()
    T_init[:3, 3] += [0.01, -0.01, 0.005]
    for res in (_tracker(tracking_photometric=False).track(f1, view, T_init),
                _tracker().track(f1, view, T_init)):
        e, r = g.pose_distance(res.T_world_cam, f1.pose)
        assert res.ok and e < 0.002 and math.degrees(r) < 0.1, (e, math.degrees(r), res.info())


def test_normal_equations_are_the_weighted_system():
    """``photometric_normal_equations``: H = J W J^T and b = J W r of the residuals at T."""
    from neural_mapping.tracking.photometric import photometric_normal_equations
    view = _view()
    P = _points().float()
    If = torch.full((P.shape[1],), 0.4)
    T = g.se3_exp([0.01, -0.005, 0.0, 0.002, 0.0, -0.001])
    H, b, pairs = photometric_normal_equations(P, If, T, view, 0.05, 0.1, 1e-6)
    q = torch.as_tensor(T[:3, :3], dtype=torch.float32) @ P + torch.as_tensor(T[:3, 3:4], dtype=torch.float32)
    r, J, w, _ = photometric_system(q, If, view.intensity, view.grad_x, view.grad_y,
                                    view.intensity_ok, view.depth_map, K.fx, K.fy, K.cx, K.cy,
                                    0.05, 0.1, 1e-6)
    assert pairs == int((w > 0).sum()) > 300
    Jd, wd, rd = J.double(), w.double(), r.double()
    torch.testing.assert_close(H, (Jd * wd) @ Jd.T, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b, (Jd * wd) @ rd, rtol=1e-4, atol=1e-6)
    assert float(torch.linalg.eigvalsh(H)[0]) > -1e-6 * float(H.trace())
