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


def test_map_to_odom_correction_keeps_the_robot_tree_and_adds_no_second_parent():
    """pose_source track: the node knows T_map_cam; the robot publishes odom -> base_link ->
    camera_link -> optical.  map -> odom = T_map_cam inv(T_odom_cam) puts the camera where the
    map says, and the map -> optical transform the node used to send is a second parent."""
    from neural_mapping.io.tf_tree import map_to_odom
    tf = _tree()
    T_map_odom = _T([0.02, -0.01, 0.7], [3.0, -1.0, 0.1])  # drift the map corrects
    for stamp in (0, S // 2, 3 * S // 2):
        T_odom_cam = tf.lookup("odom", "camera_color_optical_frame", stamp)
        T_map_cam = T_map_odom @ T_odom_cam  # what tracking estimates
        corr = map_to_odom(T_map_cam, T_odom_cam)
        np.testing.assert_allclose(corr, T_map_odom, atol=1e-12)
        np.testing.assert_allclose(corr[:3, :3] @ corr[:3, :3].T, np.eye(3), atol=1e-12)
    assert tf.add("map", "odom", 0, T_map_odom, static=True)  # what the node broadcasts now
    np.testing.assert_allclose(tf.lookup("map", "camera_color_optical_frame", S // 2),
                               T_map_odom @ tf.lookup("odom", "camera_color_optical_frame", S // 2), atol=1e-12)
    assert tf.root("camera_color_optical_frame") == "map" and tf.conflicts == 0
    assert not tf.add("map", "camera_color_optical_frame", 0, np.eye(4))  # the old broadcast
    assert tf.conflicts == 1


def test_tf_root_below_is_the_frame_nothing_else_parents():
    from neural_mapping.io.tf_tree import tf_root_below
    opt = "camera_color_optical_frame"
    assert tf_root_below({}, opt, "map") == opt                                  # bare camera
    assert tf_root_below({opt: "camera_link"}, opt, "map") == "camera_link"      # driver's static TF
    assert tf_root_below({opt: "camera_link", "camera_link": "map"}, opt, "map") == "camera_link"  # ours
    assert tf_root_below({opt: "camera_link", "camera_link": "base_link", "base_link": "odom"},
                         "/" + opt, "map") == "odom"
    assert tf_root_below({"a": "b", "b": "a"}, "a", "map") == "b"  # a loop ends the walk


def test_node_tf_rule_in_words():
    pytest.importorskip("rclpy")
    from neural_mapping.ros.tf_out import tf_plan
    assert tf_plan("external", "odom", "map").startswith("map -> odom (the map->odom correction")
    assert "TF lookup odom -> cam" in tf_plan("track", "odom", "map", "cam")
    assert "top of cam's TF tree" in tf_plan("track", "", "map", "cam")
    assert "top of <depth frame_id>'s TF tree" in tf_plan("external", "", "map")


def test_node_frame_config_is_validated():
    from neural_mapping.ros.node_config import NodeConfig
    for bad, says in [({"odom_frame": "map"}, "odom_frame 'map' is map_frame"),
                      ({"camera_frame": "/map"}, "camera_frame '/map' is map_frame"),
                      ({"map_frame": ""}, "map_frame must not be empty")]:
        with pytest.raises(ValueError, match=says):
            NodeConfig.from_flat(bad)
    assert NodeConfig.from_flat({"odom_frame": "camera_link"}).odom_frame == "camera_link"
