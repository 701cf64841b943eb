"""The node fed as a robot feeds it, over real rclpy/DDS: ``nav_msgs/Odometry`` of ``base_link``
with a known camera mount (``camera_mount_xyz_m_qxyzw``), JPEG colour on
``color/image/compressed`` and compressedDepth PNG on ``depth/image/compressedDepth``.
The map must land where the ground truth says; malformed payloads are dropped and counted."""

import array

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from test_ros_node import INTR, Harness, dget, load_frames, node_params  # noqa: E402

from neural_mapping.geometry import inv_pose, pose_from_tq, rot_to_quat  # noqa: E402
from neural_mapping.io import compressed  # noqa: E402
from neural_mapping.ros import conversions as conv  # noqa: E402

N = 12
OPTICAL = "camera_color_optical_frame"
# base_link -> optical: 20 cm forward, 35 cm up, pitched 10 degrees down, REP-103 optical axes
MOUNT = pose_from_tq([0.2, 0.0, 0.35], [0.0, np.sin(np.radians(5)), 0.0, np.cos(np.radians(5))]) @ \
    pose_from_tq([0, 0, 0], [-0.5, 0.5, -0.5, 0.5])
def rigid(G):
    """7-Scenes matrices are orthonormal to ~1e-4 only: the rotation a quaternion message holds."""
    return pose_from_tq(G[:3, 3], rot_to_quat(G[:3, :3]))


MOUNT_TEXT = " ".join(f"{v:.12f}" for v in list(MOUNT[:3, 3]) + list(rot_to_quat(MOUNT[:3, :3])))


class Robot:
    def __init__(self, h):
        from nav_msgs.msg import Odometry
        from sensor_msgs.msg import CameraInfo, CompressedImage
        nd = h.node
        self.h = h
        self.depth = nd.create_publisher(CompressedImage, "/depth/image/compressedDepth", 10)
        self.color = nd.create_publisher(CompressedImage, "/color/image/compressed", 10)
        self.info = nd.create_publisher(CameraInfo, "/depth/camera_info", 10)
        self.odom = nd.create_publisher(Odometry, "/pose", 100)
        assert h.spin_until(lambda: all(p.get_subscription_count() > 0 for p in
                                        (self.depth, self.color, self.info, self.odom)), 60), h.logs()

    @staticmethod
    def compressed_msg(stamp, fmt, data):
        from sensor_msgs.msg import CompressedImage
        m = CompressedImage()
        m.header.stamp, m.header.frame_id = conv.sec_to_stamp(stamp), OPTICAL
        m.format = fmt
        m.data = array.array("B", data)
        return m

    def odometry(self, T_odom_base, stamp, child="base_link"):
        from nav_msgs.msg import Odometry
        ps = conv.pose_stamped_msg(T_odom_base, stamp, "odom")
        m = Odometry()
        m.header, m.child_frame_id, m.pose.pose = ps.header, child, ps.pose
        return m

    def send(self, frame, stamp):
        depth, color, G = frame
        self.odom.publish(self.odometry(rigid(G) @ inv_pose(MOUNT), stamp))  # the base, not the camera
        self.info.publish(conv.camera_info_msg(INTR, OPTICAL, stamp))
        self.color.publish(self.compressed_msg(stamp, *compressed.compress_color(color, "jpeg", 90)))
        self.depth.publish(self.compressed_msg(stamp, *compressed.compress_depth(depth, "png")))

    def lockstep(self, frames, stamp0):
        missing = []
        for i, frame in enumerate(frames):
            stamp = stamp0 + i / 30.0
            self.send(frame, stamp)
            if not self.h.spin_until(lambda: round(stamp, 6) in self.h.pose_stamps, 20):
                missing.append(stamp)
        return missing


@pytest.fixture(scope="module")
def robot(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robot_node")
    h = Harness(tmp, node_params(tmp / "out", pose_source="external", voxel_size_m=0.04,
                                 diagnostics_rate_hz=5.0, mesh_rate_hz=0.0, pose_wait_timeout_s=8.0,
                                 pose_topic_type="Odometry", odom_frame="odom",
                                 camera_mount_xyz_m_qxyzw=f"'{MOUNT_TEXT}'", camera_mount_frame="base_link",
                                 depth_transport="compressedDepth", color_transport="compressed"))
    h.out = tmp / "out"
    try:
        yield h, Robot(h)
    finally:
        h.stop_and_check()


def test_odometry_of_the_base_with_a_mount_puts_the_map_where_ground_truth_says(robot, redkitchen):
    import open3d as o3d
    from scipy.spatial import cKDTree
    from std_srvs.srv import Trigger
    h, r = robot
    frames = load_frames(redkitchen, N)
    missing = r.lockstep(frames, 2000.0)
    assert not missing, (missing, h.logs()[-3000:])
    for p in h.poses:  # ~/pose is the camera (optical frame) pose: odometry composed with the mount
        k = int(round((conv.stamp_to_sec(p.header.stamp) - 2000.0) * 30.0))
        T, G = conv.pose_from_msg(p)[1], rigid(frames[k][2])
        np.testing.assert_allclose(T, G, atol=1e-6)
    h.wait_idle(N)
    assert h.call(Trigger, "/neural_mapping/save_mesh").success
    v = np.asarray(o3d.io.read_triangle_mesh(str(h.out / "mesh.ply")).vertices)
    # ground-truth surface points: frame 0's depth back-projected with its ground-truth pose
    depth, _, G = frames[0]
    vv, uu = np.nonzero((depth > 0) & (depth < 3000))
    z = depth[vv, uu] / 1000.0
    P = np.stack([(uu - INTR.cx) * z / INTR.fx, (vv - INTR.cy) * z / INTR.fy, z], 1)[::50]
    P = P @ G[:3, :3].T + G[:3, 3]
    dist, _ = cKDTree(v).query(P)
    assert len(v) > 1000 and np.median(dist) < 0.02, np.percentile(dist, [50, 90])
    # without the mount the map would be ~0.4 m and ~90 degrees off: the check can fail
    P_wrong = P @ inv_pose(MOUNT)[:3, :3].T + inv_pose(MOUNT)[:3, 3]
    assert np.median(cKDTree(v).query(P_wrong)[0]) > 0.1


def test_compressed_inputs_malformed_payloads_and_wrong_pose_frame_are_counted(robot, redkitchen):
    h, r = robot
    frames = load_frames(redkitchen, 3)
    d0 = h.diag_after(lambda d: True)
    t = 3000.0
    depth, color, G = frames[0]
    for k in range(2):
        t += 0.1
        fmt, data = compressed.compress_depth(depth, "png")
        r.depth.publish(r.compressed_msg(t, fmt, data[:40]))             # truncated PNG
        r.color.publish(r.compressed_msg(t, "jpeg", b"\xff\xd8 not a jpeg"))
        r.depth.publish(r.compressed_msg(t + 0.01, "16UC1; compressedDepth zstd", data))
        r.odom.publish(r.odometry(G, t, child="base_footprint"))         # not the mount's frame
        bad_q = r.odometry(G, t + 0.02)
        o = bad_q.pose.pose.orientation
        o.x, o.y, o.z, o.w = 5 * o.x, 5 * o.y, 5 * o.z, 5 * o.w           # quaternion norm 5
        r.odom.publish(bad_q)
    missing = r.lockstep(frames, t + 1.0)  # then good frames are mapped
    assert not missing, h.logs()[-3000:]
    expect = {"input_dropped_compressed_payload": 4, "input_dropped_compressed_format": 2,
              "input_dropped_pose_frame_mismatch": 2, "input_dropped_bad_pose": 2}
    d = h.diag_after(lambda d: all(dget(d, k) - dget(d0, k) >= v for k, v in expect.items()))
    assert {k: dget(d, k) - dget(d0, k) for k in expect} == expect, d
    logs = h.logs()
    for reason in ("compressed_payload", "compressed_format", "pose_frame_mismatch", "bad_pose"):
        assert logs.count(f"dropping input ({reason})") == 1, (reason, logs[-3000:])


def test_pose_input_tf_without_tf2_ros_says_so_once_and_what_to_use(tmp_path):
    pytest.importorskip("neural_mapping.ros.node")
    try:
        import tf2_ros  # noqa: F401
        pytest.skip("tf2_ros is importable here: the TF path is the one in use")
    except ImportError:
        pass
    h = Harness(tmp_path, node_params(tmp_path / "out", pose_source="external", pose_input="tf"))
    try:
        assert h.spin_until(lambda: "mapping on" in h.logs(), 60), h.logs()
    finally:
        logs = h.stop_and_check()
    assert logs.count("pose_input: tf needs tf2_ros") == 1, logs
    assert "pose_input: topic" in logs and "camera_mount_xyz_m_qxyzw" in logs


def test_mount_and_tf_need_an_odom_frame_so_no_frame_gets_a_second_parent():
    from neural_mapping.ros.node_config import NodeConfig
    for bad in ({"pose_input": "tf", "odom_frame": ""},
                {"camera_mount_xyz_m_qxyzw": MOUNT_TEXT, "odom_frame": ""}):
        with pytest.raises(ValueError, match="need odom_frame"):
            NodeConfig.from_flat(bad)
    with pytest.raises(ValueError, match="camera mount"):
        NodeConfig.from_flat({"camera_mount_xyz_m_qxyzw": "0 0 0"})
    assert NodeConfig.from_flat({"camera_mount_xyz_m_qxyzw": MOUNT_TEXT}).odom_frame == "odom"


def test_compressed_topic_follows_the_remapped_base_name_as_image_transport():
    import random
    from sensor_msgs.msg import CompressedImage, Image
    from neural_mapping.ros.tf_poses import image_input
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=random.randint(100, 200))
    node = rclpy.create_node("remap_check", context=ctx, start_parameter_services=False, enable_rosout=False,
                             cli_args=["--ros-args", "-r", "depth/image:=/camera/camera/aligned_depth_to_color/image_raw"])
    try:
        typ, topic, decode = image_input(node, "depth/image", "compressedDepth", True)
        assert (typ, topic) == (CompressedImage, "/camera/camera/aligned_depth_to_color/image_raw/compressedDepth")
        assert decode is compressed.depth_from_compressed
        typ, topic, _ = image_input(node, "color/image", "compressed", False)
        assert (typ, topic) == (CompressedImage, "/color/image/compressed")
        assert image_input(node, "depth/image", "raw", True)[:2] == (Image, "depth/image")
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


def test_track_mode_without_tf2_ros_says_once_what_it_would_broadcast(tmp_path):
    """pose_source track used to broadcast map -> <camera frame>, a second parent when the
    driver publishes camera_link -> optical; now map -> odom (ros/tf_out.py).  Here (no
    tf2_ros) the node says once that nothing goes out and what would, over DDS."""
    pytest.importorskip("neural_mapping.ros.node")
    try:
        import tf2_ros  # noqa: F401
        pytest.skip("tf2_ros is importable here: the broadcast path is the one in use")
    except ImportError:
        pass
    h = Harness(tmp_path, node_params(tmp_path / "out", pose_source="track", camera_frame=OPTICAL))
    try:
        assert h.spin_until(lambda: "mapping on" in h.logs(), 60), h.logs()
    finally:
        logs = h.stop_and_check()
    assert logs.count("TF: nothing is broadcast: tf2_ros is not importable") == 1, logs
    assert f"it would be map -> odom = T_map_camera * inverse of the TF lookup odom -> {OPTICAL}" in logs
    assert f"map -> {OPTICAL}" not in logs
