"""Degeneracy-aware solving: the eigen-analysis of the ICP normal equations on analytic cases,
and tracking on the seeded degenerate synthetic sequences (wall + floor, corridor)."""

import math

import numpy as np
import pytest

from neural_mapping import geometry as g
from neural_mapping.config import MappingConfig
from neural_mapping.tracking.model_view import ModelView
from neural_mapping.tracking.tracker import Tracker, weak_directions


def _normal_equations(points, normals):
    """H = sum J^T J of point-to-plane residuals r = n . (R p + t - q), xi = [t, w]:
    J = [n, p x n]."""
    J = np.concatenate([normals, np.cross(points, normals)], 1)
    return J.T @ J


def _plane(rng, n, origin, normal, extent=1.0):
    normal = np.asarray(normal, float) / np.linalg.norm(normal)
    a = np.cross(normal, [1.0, 0, 0] if abs(normal[0]) < 0.9 else [0, 1.0, 0])
    a /= np.linalg.norm(a)
    b = np.cross(normal, a)
    uv = rng.uniform(-extent, extent, (n, 2))
    return np.asarray(origin) + uv[:, :1] * a + uv[:, 1:] * b, np.tile(normal, (n, 1))


def _weak_translations(points, normals, ratio=1e-4):
    ev, V, weak = weak_directions(_normal_equations(points, normals), 2.0, ratio)
    return ev, V[:, weak]


@pytest.mark.parametrize("case,n_weak", [("plane", 3), ("two_planes", 1), ("corner", 0)])
def test_weak_directions_analytic(case, n_weak):
    rng = np.random.default_rng(0)
    wall = _plane(rng, 2000, [0, 0, 2.0], [0, 0, -1])            # facing the camera
    floor = _plane(rng, 2000, [0, 1.0, 1.5], [0, -1, 0])         # below it (y down)
    side = _plane(rng, 2000, [1.0, 0, 1.5], [-1, 0, 0])          # to the right
    parts = {"plane": [wall], "two_planes": [wall, floor], "corner": [wall, floor, side]}[case]
    P = np.concatenate([p for p, _ in parts])
    N = np.concatenate([n for _, n in parts])
    ev, Vw = _weak_translations(P, N)
    assert Vw.shape[1] == n_weak, ev
    if case == "two_planes":  # the weak direction is the translation along the wall-floor line
        assert abs(abs(Vw[0, 0]) - 1) < 1e-6, Vw[:, 0]
    if case == "plane":  # translations along the wall (x, y) and the rotation about its normal
        span = Vw @ Vw.T
        for e in (0, 1, 5):
            v = np.eye(6)[e]
            assert np.linalg.norm(span @ v - v) < 1e-6
    if case == "corner":
        assert ev[0] / ev[-1] > 1e-3


def test_weak_directions_threshold_and_bad_input():
    rng = np.random.default_rng(1)
    P, N = _plane(rng, 500, [0, 0, 2.0], [0, 0, -1])
    H = _normal_equations(P, N)
    assert weak_directions(H, 2.0, 1.0)[2].sum() == 5  # everything below the largest
    assert weak_directions(H * np.nan, 2.0, 1e-4)[2].all()
    assert weak_directions(np.zeros((6, 6)), 2.0, 1e-4)[2].all()


def _tracker(**values):
    return Tracker.from_config(MappingConfig.from_flat(values), "cpu")


@pytest.fixture(scope="module")
def wall_floor():
    from neural_mapping.datasets.synthetic_tracking import DegenerateSequence
    return DegenerateSequence("wall_floor", num_frames=40, width=320, height=240, seed=3)


def test_wall_floor_pair_keeps_the_prior_along_the_line(wall_floor):
    """Depth-only ICP on a wall + floor view: the translation along the wall-floor line (world
    x) is weak: it stays at the initial guess, the other five directions are recovered, and
    the frame is tracked (not a failure)."""
    f0, f1 = wall_floor[10], wall_floor[11]
    view = ModelView.from_depth(f0.depth, f0.intrinsics, f0.pose)
    line = np.array([0.01, 0, 0])  # initial guess 1 cm off along the line, 1 cm off across it
    across = np.array([0, 0.01, -0.008])
    T_init = f1.pose.copy()
    T_init[:3, 3] += line + across
    res = _tracker().track(f1, view, T_init)
    assert res.ok and res.weak_directions >= 1, res.info()
    err = res.T_world_cam[:3, 3] - f1.pose[:3, 3]
    assert abs(err[0] - 0.01) < 2e-3, err      # kept the prior along the line
    assert np.linalg.norm(err[1:]) < 2e-3, err  # recovered across it
    assert math.degrees(g.pose_distance(res.T_world_cam, f1.pose)[1]) < 0.2
