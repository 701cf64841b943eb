"""TfTree: chains of /tf and /tf_static (static mount + moving odom frame), interpolation at a
stamp with the one pose interpolation, no extrapolation, missing links reported by name."""

import numpy as np
import pytest

from neural_mapping.geometry import interpolate_pose, pose_from_tq, so3_exp
from neural_mapping.io.tf_tree import TfError, TfTree, parse_mount

S = 1_000_000_000


def _T(rotvec, t):
    T = np.eye(4)
    T[:3, :3] = so3_exp(np.asarray(rotvec, float))
    T[:3, 3] = t
    return T


MOUNT = _T([0, 0.17, 0], [0.2, 0.0, 0.35])                      # base_link -> camera_link
OPTICAL = pose_from_tq([0, 0, 0], [-0.5, 0.5, -0.5, 0.5])        # camera_link -> optical
ODOM = [_T([0, 0, 0.1 * k], [0.5 * k, 0.1 * k, 0]) for k in range(3)]  # odom -> base_link at 0, 1, 2 s


def _tree():
    tf = TfTree()
    assert tf.add("base_link", "camera_link", 0, MOUNT, static=True)
    assert tf.add("camera_link", "camera_color_optical_frame", 0, OPTICAL, static=True)
    for k in (2, 0, 1):  # out of order, as messages may be recorded
        assert tf.add("/odom", "base_link", k * S, ODOM[k])
    return tf


def test_chain_is_composed_and_interpolated_at_the_stamp():
    tf = _tree()
    assert tf.root("camera_color_optical_frame") == "odom"
    T = tf.lookup("odom", "camera_color_optical_frame", S)  # a sample stamp: exact
    np.testing.assert_allclose(T, ODOM[1] @ MOUNT @ OPTICAL, atol=1e-12)
    T = tf.lookup("odom", "camera_color_optical_frame", S + S // 4)
    np.testing.assert_allclose(T, interpolate_pose(ODOM[1], ODOM[2], 0.25) @ MOUNT @ OPTICAL, atol=1e-12)
    # the other way round, and between siblings through their common ancestor
    np.testing.assert_allclose(tf.lookup("camera_color_optical_frame", "odom", S),
                               np.linalg.inv(ODOM[1] @ MOUNT @ OPTICAL), atol=1e-12)
    np.testing.assert_allclose(tf.lookup("base_link", "camera_color_optical_frame", 7 * S),
                               MOUNT @ OPTICAL, atol=1e-12)  # static only: any stamp


def test_never_extrapolated_gaps_and_missing_links_named():
    tf = _tree()
    with pytest.raises(TfError, match="odom -> base_link.*newer than the last") as e:
        tf.lookup("odom", "camera_color_optical_frame", 2 * S + 1)
    assert e.value.reason == "after"
    with pytest.raises(TfError) as e:
        tf.lookup("odom", "camera_color_optical_frame", -1)
    assert e.value.reason == "before"
    with pytest.raises(TfError) as e:
        tf.lookup("odom", "base_link", S // 2, max_gap_ns=0.5 * S)
    assert e.value.reason == "gap"
    with pytest.raises(TfError, match="'camera_depth_optical_frame' reaches root "
                                      "'camera_depth_optical_frame'.*'odom'") as e:
        tf.lookup("odom", "camera_depth_optical_frame", S)
    assert e.value.reason == "unconnected"


def test_a_second_parent_is_refused_and_counted():
    tf = _tree()
    assert not tf.add("map", "base_link", S, np.eye(4))          # base_link has a parent already
    assert not tf.add("camera_link", "odom", S, np.eye(4))       # would close a loop
    assert tf.conflicts == 2 and tf.parent("base_link") == "odom"
    assert tf.add("map", "odom", S, np.eye(4))                   # a new root above: fine
    assert tf.root("camera_link") == "map"


def test_camera_mount_parameter():
    assert parse_mount("") is None
    M = parse_mount("0.2 0 0.35  -0.5 0.5 -0.5 0.5")
    np.testing.assert_allclose(M, pose_from_tq([0.2, 0, 0.35], [-0.5, 0.5, -0.5, 0.5]))
    for bad in ("1 2 3", "0 0 0 0 0 0 2", "a b c d e f g", "0 0 nan 0 0 0 1"):
        with pytest.raises(ValueError, match="camera mount"):
            parse_mount(bad)
