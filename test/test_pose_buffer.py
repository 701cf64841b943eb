import math

import numpy as np
import pytest

from neural_mapping import geometry as g
from neural_mapping.system.pose_buffer import PoseBuffer

AXIS = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])
OMEGA = 0.7  # rad/s about AXIS
VEL = np.array([0.3, -0.1, 0.05])  # m/s
T_START = g.se3_exp([0.2, -0.4, 1.0, 0.3, 0.1, -0.2])


def truth(t):
    """Constant-rate rotation about a fixed axis plus linear translation (exactly what
    lerp + slerp between any two samples reproduces)."""
    T = np.eye(4)
    T[:3, :3] = T_START[:3, :3] @ g.so3_exp(AXIS * OMEGA * t)
    T[:3, 3] = T_START[:3, 3] + VEL * t
    return T


def filled(stamps, **kw):
    buf = PoseBuffer(max_age_s=100.0, **kw)
    for s in stamps:
        assert buf.add(s, truth(s))
    return buf


def test_interpolation_exact_on_constant_rate_trajectory():
    buf = filled(np.arange(0.0, 2.01, 0.1))
    for s in [0.05, 0.123, 0.5, 1.0, 1.37, 1.999, 2.0, 0.0]:
        status, T = buf.query(s)
        assert status == "ok"
        np.testing.assert_allclose(T, truth(s), atol=1e-12)


def test_tq_and_tum_vector_inputs_agree():
    buf = PoseBuffer()
    T0, T1 = truth(0.0), truth(1.0)
    assert buf.add(0.0, (T0[:3, 3], g.rot_to_quat(T0[:3, :3])))
    assert buf.add(1.0, g.pose_to_tum(T1))
    np.testing.assert_allclose(buf.query(0.25).T, truth(0.25), atol=1e-12)


def test_out_of_order_adds_are_sorted():
    stamps = [0.5, 0.0, 1.0, 0.2, 0.8]
    buf = filled(stamps)
    np.testing.assert_allclose(buf.query(0.6).T, truth(0.6), atol=1e-12)
    assert buf.oldest_stamp == 0.0 and buf.newest_stamp == 1.0


def test_never_extrapolates_wait_and_too_old():
    buf = PoseBuffer(max_age_s=1.0)
    assert buf.query(5.0) == ("wait", None)  # empty
    for s in np.arange(0.0, 3.01, 0.1):
        buf.add(s, truth(s))
    status, T = buf.query(3.05)
    assert status == "wait" and T is None
    # history older than max_age_s (1 s back from the newest, plus one bracketing pose) is gone
    assert buf.query(1.0).status == "too_old"
    assert buf.query(2.0).ok and buf.query(2.05).ok  # the window edge is still answered
    assert buf.query(1.95).status == "too_old"
    assert buf.frame_drops["too_old"] == 2
    # a pose arriving later lets the waiting frame through
    buf.add(3.1, truth(3.1))
    np.testing.assert_allclose(buf.query(3.05).T, truth(3.05), atol=1e-12)


def test_max_size_bounds_the_buffer():
    buf = PoseBuffer(max_age_s=1e3, max_size=10)
    for i in range(50):
        buf.add(float(i), truth(i * 0.01))
    assert len(buf) == 10
    assert buf.oldest_stamp == 40.0


def test_expiry_policy():
    buf = PoseBuffer(wait_timeout_s=0.5)
    buf.add(0.0, truth(0.0))
    buf.add(1.0, truth(1.0))
    # frame at 1.2 waits for a newer pose ...
    assert not buf.is_expired(1.2, now=1.5)
    assert buf.query(1.2, now=1.5).status == "wait"
    # ... and expires once it has waited longer than the timeout
    assert buf.is_expired(1.2, now=1.71)
    assert buf.query(1.2, now=1.71).status == "expired"
    assert buf.frame_drops["expired"] == 1
    # answerable frames never expire, unanswerable (too old) ones always do
    assert not buf.is_expired(0.5, now=100.0)
    assert buf.query(0.5, now=100.0).ok
    assert buf.is_expired(-1.0, now=-1.0)


def test_gap_policy():
    buf = PoseBuffer(max_gap_s=0.2)
    buf.add(0.0, truth(0.0))
    buf.add(0.1, truth(0.1))
    buf.add(1.0, truth(1.0))
    assert buf.query(0.05).ok
    assert buf.query(0.5).status == "gap"
    assert buf.query(1.0).ok  # exact stamp


@pytest.mark.parametrize("bad, reason", [
    (np.full((4, 4), np.nan), "non_finite"),
    (([0, 0, np.inf], [0, 0, 0, 1]), "non_finite"),
    (([0, 0, 0], [0, 0, 0, 1.5]), "bad_quaternion"),
    (([0, 0, 0], [0, 0, 0, 0]), "bad_quaternion"),
    (([0, 0, 0], [0.1, 0.1, 0.1, 0.5]), "bad_quaternion"),
    (np.diag([2.0, 1.0, 1.0, 1.0]), "not_rigid"),
    (np.eye(3), "bad_shape"),
    ("pose", "bad_shape"),
])
def test_bad_poses_rejected_and_counted(bad, reason):
    buf = PoseBuffer()
    assert buf.add(0.0, bad) is False
    assert buf.drops[reason] == 1
    assert len(buf) == 0
    assert buf.drops_prefixed()[f"pose_dropped_{reason}"] == 1


def test_non_finite_stamp_rejected():
    buf = PoseBuffer()
    assert buf.add(float("nan"), np.eye(4)) is False
    assert buf.add(float("inf"), np.eye(4)) is False
    assert buf.drops["non_finite"] == 2


def test_small_quaternion_deviation_normalised():
    buf = PoseBuffer()
    q = g.rot_to_quat(truth(0.0)[:3, :3]) * 1.05
    assert buf.add(0.0, (truth(0.0)[:3, 3], q))
    assert buf.normalized == 1
    T = buf.query(0.0).T
    np.testing.assert_allclose(T, truth(0.0), atol=1e-12)
    np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-12)


def test_duplicate_stamp_replaces():
    buf = PoseBuffer()
    buf.add(1.0, truth(0.0))
    buf.add(1.0, truth(0.5))
    assert len(buf) == 1 and buf.replaced == 1
    np.testing.assert_allclose(buf.query(1.0).T, truth(0.5))


def test_interpolation_matches_slerp_across_large_rotation():
    buf = PoseBuffer()
    T0 = np.eye(4)
    T1 = g.make_pose(g.so3_exp([0, 0, math.radians(170)]), [1, 0, 0])
    buf.add(0.0, T0)
    buf.add(1.0, T1)
    T = buf.query(0.5).T
    np.testing.assert_allclose(T[:3, :3], g.so3_exp([0, 0, math.radians(85)]), atol=1e-12)
    np.testing.assert_allclose(T[:3, 3], [0.5, 0, 0])
