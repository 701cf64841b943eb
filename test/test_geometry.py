import math

import numpy as np
import pytest
import torch

from neural_mapping import geometry as g


def _random_rotvecs(n, seed=0, max_angle=math.pi):
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = rng.uniform(0, max_angle, size=n)
    return axes * angles[:, None]


def test_quat_rot_roundtrip_and_sign():
    for w in _random_rotvecs(200):
        R = g.so3_exp(w)
        q = g.rot_to_quat(R)
        assert q[3] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        np.testing.assert_allclose(g.quat_to_rot(q), R, atol=1e-12)
        np.testing.assert_allclose(g.quat_to_rot(-q), R, atol=1e-12)


def test_known_quaternion():
    # 90 degrees about z: (0, 0, sin 45, cos 45)
    q = [0, 0, math.sqrt(0.5), math.sqrt(0.5)]
    np.testing.assert_allclose(g.quat_to_rot(q), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)


def test_so3_exp_log_roundtrip_including_near_zero_and_pi():
    ws = list(_random_rotvecs(200, seed=1))
    ws += [np.zeros(3), np.array([1e-9, 0, 0]), np.array([0, 1e-7, 2e-7]),
           np.array([0, 0, math.pi - 1e-9]), np.array([math.pi - 1e-6, 0, 0])]
    for w in ws:
        R = g.so3_exp(w)
        assert abs(np.linalg.det(R) - 1) < 1e-12
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        w2 = g.so3_log(R)
        np.testing.assert_allclose(g.so3_exp(w2), R, atol=1e-9)
        if np.linalg.norm(w) < math.pi - 1e-3:
            np.testing.assert_allclose(w2, w, atol=1e-9)


def test_se3_exp_log_roundtrip():
    rng = np.random.default_rng(2)
    for w in _random_rotvecs(100, seed=3, max_angle=3.0):
        xi = np.concatenate([rng.normal(size=3), w])
        T = g.se3_exp(xi)
        np.testing.assert_allclose(g.se3_log(T), xi, atol=1e-9)
    np.testing.assert_allclose(g.se3_exp(np.zeros(6)), np.eye(4))
    # pure translation
    np.testing.assert_allclose(g.se3_exp([1, 2, 3, 0, 0, 0])[:3, 3], [1, 2, 3])


def test_torch_variants_match_numpy():
    rng = np.random.default_rng(4)
    xis = np.concatenate([rng.normal(size=(50, 3)), _random_rotvecs(50, seed=5, max_angle=3.0)], 1)
    xis[0, 3:] = 0.0
    xis[1, 3:] = 1e-8
    Tt = g.se3_exp_torch(torch.from_numpy(xis)).numpy()
    for xi, T in zip(xis, Tt):
        np.testing.assert_allclose(T, g.se3_exp(xi), atol=1e-12)
    Rt = g.so3_exp_torch(torch.from_numpy(xis[:, 3:])).numpy()
    for w, R in zip(xis[:, 3:], Rt):
        np.testing.assert_allclose(R, g.so3_exp(w), atol=1e-12)


def test_interpolate_pose_endpoints_and_midpoint():
    T0 = g.se3_exp([0.1, 0.2, 0.3, 0.1, -0.2, 0.3])
    T1 = g.se3_exp([1.1, -0.2, 0.5, 0.4, 0.1, -0.2])
    np.testing.assert_allclose(g.interpolate_pose(T0, T1, 0.0), T0, atol=1e-12)
    np.testing.assert_allclose(g.interpolate_pose(T0, T1, 1.0), T1, atol=1e-12)
    Tm = g.interpolate_pose(T0, T1, 0.5)
    np.testing.assert_allclose(Tm[:3, 3], 0.5 * (T0[:3, 3] + T1[:3, 3]), atol=1e-12)
    # rotation half-way: equal geodesic distance to both ends
    _, a0 = g.pose_distance(T0, Tm)
    _, a1 = g.pose_distance(Tm, T1)
    assert abs(a0 - a1) < 1e-12
    # agrees with quaternion slerp
    q = g.quat_slerp(g.rot_to_quat(T0[:3, :3]), g.rot_to_quat(T1[:3, :3]), 0.3)
    np.testing.assert_allclose(g.interpolate_pose(T0, T1, 0.3)[:3, :3], g.quat_to_rot(q), atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 10**9])  # seconds (float) or nanoseconds (int)
def test_pose_at_stamp_never_extrapolates(scale):
    poses = [g.se3_exp([0.1 * k, 0.0, 0.2, 0.0, 0.1 * k, 0.0]) for k in range(3)]
    stamps = np.array([1, 2, 4]) * (10**9 if scale != 1.0 else 1.0)
    if scale != 1.0:
        stamps = stamps.astype(np.int64)
    at = lambda t, gap=None: g.pose_at_stamp(stamps, poses, t * (10**9 if scale != 1.0 else 1.0), gap)  # noqa: E731
    assert at(0.5) == ("before", None) and at(4.5) == ("after", None)
    assert g.pose_at_stamp([], [], 1.0) == ("after", None)
    status, T = at(2)
    assert status == "ok" and np.array_equal(T, poses[1]) and T is not poses[1]
    status, T = at(3)
    np.testing.assert_allclose(T, g.interpolate_pose(poses[1], poses[2], 0.5), atol=1e-12)
    assert at(3, 1.5 * stamps[0])[0] == "gap" and at(1.5, 1.5 * stamps[0])[0] == "ok"


def test_tum_roundtrip():
    T = g.se3_exp([0.5, -1.0, 2.0, 0.3, 0.2, -1.0])
    row = g.pose_to_tum(T, 12.5)
    assert row.shape == (8,) and row[0] == 12.5
    stamp, T2 = g.pose_from_tum(row)
    assert stamp == 12.5
    np.testing.assert_allclose(T2, T, atol=1e-12)
    stamp, T3 = g.pose_from_tum(g.format_tum_line(T, 3.25))
    assert stamp == 3.25
    np.testing.assert_allclose(T3, T, atol=1e-7)
    assert g.pose_from_tum(row[1:])[0] is None
    with pytest.raises(ValueError):
        g.pose_from_tum([1, 2, 3])


def test_orthonormalize_and_inverse():
    rng = np.random.default_rng(6)
    R = g.so3_exp([0.3, 0.2, 0.1])
    Rn = g.orthonormalize(R + 1e-4 * rng.normal(size=(3, 3)))
    np.testing.assert_allclose(Rn @ Rn.T, np.eye(3), atol=1e-12)
    assert abs(np.linalg.det(Rn) - 1) < 1e-12
    assert np.abs(Rn - R).max() < 1e-3
    T = g.se3_exp([1, 2, 3, 0.5, 0.1, 0.2])
    np.testing.assert_allclose(g.inv_pose(T) @ T, np.eye(4), atol=1e-12)
    T_noisy = T.copy()
    T_noisy[:3, :3] += 1e-5
    To = g.orthonormalize(T_noisy)
    np.testing.assert_allclose(To[:3, :3] @ To[:3, :3].T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(To[:3, 3], T[:3, 3])
