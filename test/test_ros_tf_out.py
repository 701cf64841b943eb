"""ros/tf_out.py's broadcast rule through its real lookup/publish loop (``TfOutput._poll``).

tf2_ros is not installable here (not on PyPI), so the tf2 buffer is played by our own
:class:`~neural_mapping.io.tf_tree.TfTree` behind tf2's two calls (``lookup_transform``,
``all_frames_as_yaml``; never extrapolates, as tf2), and the broadcaster records what it
would send.  Everything else (node, clock, messages, the pending/expiry logic) is real.
Over DDS without tf2_ros: test_ros_robot_inputs.py (the node says what it would broadcast)."""

import types

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from neural_mapping.geometry import pose_from_tq, so3_exp  # noqa: E402
from neural_mapping.io.tf_tree import TfError, TfTree  # noqa: E402
from neural_mapping.ros import conversions as conv  # noqa: E402

S = 1_000_000_000
OPT = "camera_color_optical_frame"
MOUNT = pose_from_tq([0.2, 0, 0.35], [0, 0.085, 0, 0.9963762]) @ pose_from_tq([0, 0, 0], [-0.5, 0.5, -0.5, 0.5])


def _T(rotvec, t):
    T = np.eye(4)
    T[:3, :3] = so3_exp(np.asarray(rotvec, float))
    T[:3, 3] = t
    return T


class TreeBuffer:
    """tf2_ros.Buffer's two calls used by TfOutput, answered by a TfTree."""

    def __init__(self, tree):
        self.tree = tree

    def lookup_transform(self, target, source, time):
        T = self.tree.lookup(target, source, time.nanoseconds)  # TfError when it cannot
        return conv.transform_stamped_msg(T, conv.sec_to_stamp(time.nanoseconds * 1e-9), target, source)

    def all_frames_as_yaml(self):
        import yaml
        return yaml.safe_dump({f: {"parent": self.tree.parent(f)} for f in self.tree.frames
                               if self.tree.parent(f)})


@pytest.fixture
def make_out():
    import random
    from neural_mapping.ros.node_config import NodeConfig, node_core_defaults
    from neural_mapping.ros.tf_out import TfOutput
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=random.randint(100, 200))
    nodes = []

    def make(tree, odom_frame, timeout_s=5.0):
        node = rclpy.create_node("tf_out_check", context=ctx, start_parameter_services=False,
                                 enable_rosout=False)
        nodes.append(node)
        node.ncfg = NodeConfig.from_flat({"odom_frame": odom_frame})
        node.cfg = node_core_defaults()
        node.cfg.run.pose_source, node.cfg.system.pose_wait_timeout_s = "track", timeout_s
        out = TfOutput(node)  # no tf2_ros here: says so, broadcasts nothing
        assert out.broadcaster is None
        sent = []
        out.broadcaster = types.SimpleNamespace(sendTransform=sent.append)
        out.buffer, out._tf2 = TreeBuffer(tree), types.SimpleNamespace(
            LookupException=TfError, ConnectivityException=TfError, ExtrapolationException=TfError)
        return out, sent
    yield make
    for n in nodes:
        n.destroy_node()
    rclpy.try_shutdown(context=ctx)


def _tf(msg):
    tr, ro = msg.transform.translation, msg.transform.rotation
    return msg.header.frame_id, msg.child_frame_id, pose_from_tq((tr.x, tr.y, tr.z), (ro.x, ro.y, ro.z, ro.w))


def _pose(T):
    return types.SimpleNamespace(T_world_cam=T, T_correction=None, ok=True)


def test_track_mode_broadcasts_map_to_odom_from_the_lookup_at_the_stamp(make_out):
    tree = TfTree()
    tree.add("base_link", OPT, 0, MOUNT, static=True)
    for k in range(3):
        tree.add("odom", "base_link", k * S, _T([0, 0, 0.2 * k], [k, 0.1 * k, 0]))
    T_map_odom = _T([0.01, 0.02, -0.4], [2.0, 1.0, 0.0])
    out, sent = make_out(tree, "odom")
    cam = lambda t: T_map_odom @ tree.lookup("odom", OPT, int(t * S))  # noqa: E731
    out.on_pose(_pose(cam(1.2)), conv.sec_to_stamp(1.2), OPT)
    out.on_pose(_pose(cam(1.5)), conv.sec_to_stamp(1.5), OPT)
    out._poll()
    assert len(sent) == 1 and not out._pending  # the newest one; the older is superseded
    parent, child, T = _tf(sent[0])
    assert (parent, child) == ("map", "odom")
    np.testing.assert_allclose(T, T_map_odom, atol=1e-9)
    # a stamp after the last odom sample waits (never extrapolated), then goes out
    out.on_pose(_pose(np.eye(4)), conv.sec_to_stamp(2.5), OPT)
    out._poll()
    assert len(sent) == 1 and len(out._pending) == 1
    tree.add("odom", "base_link", 3 * S, _T([0, 0, 0.6], [3, 0.3, 0]))
    out._poll()
    assert len(sent) == 2 and not out._pending and out.stats["tf_published"] == 2
    assert out.stats["tf_lookup_failed"] == 0


def test_lookup_that_never_comes_is_counted_and_nothing_is_sent(make_out):
    tree = TfTree()
    tree.add("camera_link", OPT, 0, MOUNT, static=True)  # no odom frame at all
    out, sent = make_out(tree, "odom", timeout_s=0.0)
    out.on_pose(_pose(np.eye(4)), conv.sec_to_stamp(1.0), OPT)
    out._poll()
    assert sent == [] and not out._pending and out.stats["tf_lookup_failed"] == 1


def test_empty_odom_frame_hangs_the_top_of_the_camera_tree_under_map(make_out):
    tree = TfTree()
    tree.add("camera_link", OPT, 0, MOUNT, static=True)  # a hand-held camera's driver TF
    out, sent = make_out(tree, "")
    T_map_cam = _T([0.3, 0, 0.1], [1, 2, 3])
    out.on_pose(_pose(T_map_cam), conv.sec_to_stamp(1.0), OPT)
    out._poll()
    parent, child, T = _tf(sent[0])
    assert (parent, child) == ("map", "camera_link")  # not map -> optical: its parent is camera_link
    np.testing.assert_allclose(T @ MOUNT, T_map_cam, atol=1e-9)
    bare, sent2 = make_out(TfTree(), "")  # nothing parents the camera frame: map -> camera
    bare.on_pose(_pose(T_map_cam), conv.sec_to_stamp(1.0), OPT)
    bare._poll()
    parent, child, T = _tf(sent2[0])
    assert (parent, child) == ("map", OPT)
    np.testing.assert_allclose(T, T_map_cam, atol=1e-9)
