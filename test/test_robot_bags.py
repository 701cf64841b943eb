"""Bags as robots record them: compressed colour (JPEG), compressedDepth (PNG), poses from TF
(odom -> base_link + a static mount) or from Odometry of the base; ``replay`` with no options."""

import numpy as np
import pytest

from neural_mapping.app.cli import main
from neural_mapping.datasets import DatasetError, RosbagDataset
from neural_mapping.io.bags import bag_topics, make_bag, mount_transform, optical_transform
from neural_mapping.io.images import read_tum_trajectory

N = 20
FLAGS = ["--max-frames", str(N), "--voxel-size-m", "0.03", "--no-progress", "--no-views",
         "--sync-mode", "strict", "--device", "cpu"]


@pytest.fixture(scope="module")
def robot_bags(redkitchen, tmp_path_factory):
    root = tmp_path_factory.mktemp("robot_bags")
    make_bag(redkitchen, root / "raw", max_frames=N)
    assert main(["make-bag", str(redkitchen), str(root / "tf"), "--max-frames", str(N), "--no-progress",
                 "--color-transport", "compressed", "--depth-transport", "compressedDepth",
                 "--poses", "tf"]) == 0
    make_bag(redkitchen, root / "odom", max_frames=N, depth_transport="compressedDepth", poses="odom")
    return root


def test_robot_layout_topics(robot_bags):
    topics = bag_topics(robot_bags / "tf")
    assert topics["/camera/color/image_raw/compressed"] == ("sensor_msgs/msg/CompressedImage", N)
    assert topics["/camera/depth/image_raw/compressedDepth"] == ("sensor_msgs/msg/CompressedImage", N)
    assert topics["/tf"] == ("tf2_msgs/msg/TFMessage", N) and "/camera/pose" not in topics
    assert "/camera/depth/image_raw" not in topics and "/camera/color/image_raw" not in topics
    assert bag_topics(robot_bags / "odom")["/odom"] == ("nav_msgs/msg/Odometry", N)


def test_frames_are_depth_identical_and_poses_equal(robot_bags):
    raw = RosbagDataset(robot_bags / "raw")
    tf = RosbagDataset(robot_bags / "tf", depth_topic="/camera/depth/image_raw/compressedDepth",
                       color_topic="/camera/color/image_raw/compressed", pose_topic=None,
                       pose_from_tf=True)
    odom = RosbagDataset(robot_bags / "odom", depth_topic="/camera/depth/image_raw/compressedDepth",
                         pose_topic="/odom")  # child base_link: the mount comes from /tf_static
    with raw, tf, odom:
        assert tf.pose_topic == "TF:odom" and len(raw) == len(tf) == len(odom) == N
        for i in range(N):
            a, b, o = raw[i], tf[i], odom[i]
            np.testing.assert_array_equal(b.depth, a.depth)  # PNG: lossless
            np.testing.assert_array_equal(o.depth, a.depth)
            np.testing.assert_allclose(b.pose, a.pose, atol=1e-9)
            np.testing.assert_allclose(o.pose, a.pose, atol=1e-9)
            assert np.abs(b.color.astype(int) - a.color).mean() < 2.0  # JPEG q90
        # the mount given as a parameter instead of TF: the same; a mount from another frame: refused
        M = mount_transform() @ optical_transform()
        from neural_mapping.geometry import rot_to_quat
        text = " ".join(f"{v:.17g}" for v in list(M[:3, 3]) + list(rot_to_quat(M[:3, :3])))
        with RosbagDataset(robot_bags / "odom", depth_topic="/camera/depth/image_raw/compressedDepth",
                           pose_topic="/odom", camera_mount=text, camera_mount_frame="base_link") as m:
            np.testing.assert_allclose(m[3].pose, raw[3].pose, atol=1e-9)
    with pytest.raises(DatasetError, match="pose of 'base_link' but camera_mount is from 'base_footprint'"):
        RosbagDataset(robot_bags / "odom", depth_topic="/camera/depth/image_raw/compressedDepth",
                      pose_topic="/odom", camera_mount=text, camera_mount_frame="base_footprint")
    with pytest.raises(DatasetError, match="no transform chain from 'camera_color_optical_frame' to "
                                           "'world'.*missing link"):
        RosbagDataset(robot_bags / "tf", depth_topic="/camera/depth/image_raw/compressedDepth",
                      pose_topic=None, pose_from_tf=True, pose_frame="world")


def _mesh_vertices(path):
    import open3d as o3d
    return np.asarray(o3d.io.read_triangle_mesh(str(path)).vertices)


def test_replay_with_no_options_matches_the_raw_bag(robot_bags, tmp_path, capsys):
    assert main(["replay", str(robot_bags / "raw"), "--out", str(tmp_path / "raw")] + FLAGS) == 0
    capsys.readouterr()
    assert main(["replay", str(robot_bags / "tf"), "--out", str(tmp_path / "tf")] + FLAGS) == 0
    out = capsys.readouterr().out
    assert "depth        /camera/depth/image_raw/compressedDepth" in out
    assert "colour       /camera/color/image_raw/compressed" in out
    assert "pose         TF" in out and "--pose-topic" in out and f"{N} integrated" in out
    t_raw, P_raw = read_tum_trajectory(tmp_path / "raw" / "poses.txt")
    t_tf, P_tf = read_tum_trajectory(tmp_path / "tf" / "poses.txt")
    np.testing.assert_allclose(t_tf, t_raw, atol=1e-9)
    np.testing.assert_allclose(P_tf, P_raw, atol=2e-8)  # poses.txt: 8 decimals
    v_raw, v_tf = _mesh_vertices(tmp_path / "raw" / "mesh.ply"), _mesh_vertices(tmp_path / "tf" / "mesh.ply")
    assert len(v_raw) > 1000 and v_raw.shape == v_tf.shape
    assert np.abs(v_raw - v_tf).max() <= 1e-5
    # the Odometry bag: pose topic /odom chosen, composed with the static mount
    assert main(["replay", str(robot_bags / "odom"), "--out", str(tmp_path / "odom")] + FLAGS) == 0
    assert "pose         /odom" in capsys.readouterr().out
    np.testing.assert_allclose(read_tum_trajectory(tmp_path / "odom" / "poses.txt")[1], P_raw, atol=2e-8)


def test_topic_choice_for_realsense_and_kinect_recordings():
    from neural_mapping.datasets.rosbag_topics import choose_topics
    C, I, O = "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/CameraInfo", "nav_msgs/msg/Odometry"
    rs = {"/camera/camera/color/image_raw/compressed": (C, 9), "/camera/camera/color/camera_info": (I, 9),
          "/camera/camera/aligned_depth_to_color/image_raw/compressedDepth": (C, 9),
          "/camera/camera/aligned_depth_to_color/camera_info": (I, 9),
          "/camera/camera/depth/image_rect_raw/compressedDepth": (C, 9),
          "/camera/camera/depth/camera_info": (I, 9),
          "/camera/camera/infra1/image_rect_raw/compressed": (C, 9),
          "/tf": ("tf2_msgs/msg/TFMessage", 90), "/tf_static": ("tf2_msgs/msg/TFMessage", 1), "/odom": (O, 90)}
    ch = choose_topics(rs)
    assert ch.depth == "/camera/camera/aligned_depth_to_color/image_raw/compressedDepth"
    assert ch.camera_info == "/camera/camera/aligned_depth_to_color/camera_info"
    assert ch.color == "/camera/camera/color/image_raw/compressed" and ch.pose == "/odom"
    del rs["/odom"]
    assert choose_topics(rs).pose_from_tf and choose_topics(rs, pose="").pose is None
    kinect = {"/rgb/image_raw/compressed": (C, 5), "/rgb/camera_info": (I, 5),
              "/depth/image_raw/compressedDepth": (C, 5), "/depth/camera_info": (I, 5),
              "/depth_to_rgb/image_raw/compressedDepth": (C, 5), "/depth_to_rgb/camera_info": (I, 5),
              "/tf_static": ("tf2_msgs/msg/TFMessage", 1)}
    ch = choose_topics(kinect)
    assert (ch.depth, ch.camera_info, ch.color, ch.pose, ch.pose_from_tf) == (
        "/depth_to_rgb/image_raw/compressedDepth", "/depth_to_rgb/camera_info", "/rgb/image_raw/compressed",
        None, False)
    del kinect["/depth_to_rgb/image_raw/compressedDepth"]
    kinect["/depth/points_depth"] = (C, 5)  # two depth images, neither registered: ask
    with pytest.raises(DatasetError, match="2 depth image topics.*--depth-topic"):
        choose_topics(kinect)
