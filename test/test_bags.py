"""rosbag2: ``neural-mapping make-bag`` writes real bags of the datasets, ``RosbagDataset`` /
``neural-mapping replay`` read them back without ROS, to the same frames, poses and map."""

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from neural_mapping.io.bags import EPOCH_OFFSET_S, OPTICAL_FRAME, bag_topics, make_bag
from neural_mapping.app.cli import main
from neural_mapping.datasets import DatasetError, RosbagDataset, detect_format, open_dataset
from neural_mapping.datasets.rosbag import decode_color, decode_depth, typestore
from neural_mapping.geometry import interpolate_pose, orthonormalize, pose_from_tq, rot_to_quat
from neural_mapping.io.images import read_tum_trajectory

N = 30
TOPICS = {"/camera/depth/image_raw": "sensor_msgs/msg/Image",
          "/camera/color/image_raw": "sensor_msgs/msg/Image",
          "/camera/depth/camera_info": "sensor_msgs/msg/CameraInfo",
          "/camera/color/camera_info": "sensor_msgs/msg/CameraInfo",
          "/camera/pose": "geometry_msgs/msg/PoseStamped",
          "/tf_static": "tf2_msgs/msg/TFMessage"}


@pytest.fixture(scope="module")
def bags(redkitchen, tmp_path_factory):
    """30 real 7-Scenes frames as mcap (through the CLI) and sqlite3 (through the function)."""
    root = tmp_path_factory.mktemp("bags")
    assert main(["make-bag", str(redkitchen), str(root / "kitchen_mcap"), "--max-frames", str(N),
                 "--no-progress"]) == 0
    make_bag(redkitchen, root / "kitchen_sqlite3", storage="sqlite3", max_frames=N)
    return {"mcap": root / "kitchen_mcap", "sqlite3": root / "kitchen_sqlite3"}


@pytest.fixture(scope="module")
def kitchen(redkitchen):
    return open_dataset(redkitchen, max_frames=N)


def test_make_bag_writes_standard_topics(bags, kitchen):
    for storage, path in bags.items():
        topics = bag_topics(path)
        assert {t: typ for t, (typ, _) in topics.items()} == TOPICS
        assert {t: n for t, (_, n) in topics.items()} == {t: 1 if t == "/tf_static" else N for t in TOPICS}
        meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        assert meta["storage_identifier"] == storage
        suffix = {"mcap": ".mcap", "sqlite3": ".db3"}[storage]
        assert (path / meta["relative_file_paths"][0]).suffix == suffix
        assert float(meta["custom_data"]["neural_mapping.time_offset_s"]) == EPOCH_OFFSET_S
        qos = {t["topic_metadata"]["name"]: t["topic_metadata"]["offered_qos_profiles"]
               for t in meta["topics_with_message_count"]}
        # tf2 listeners subscribe /tf_static transient_local: the recorded publisher must offer it
        assert qos["/tf_static"][0]["durability"] == "transient_local"
        assert qos["/camera/depth/image_raw"][0]["reliability"] == "reliable"
        assert meta["starting_time"]["nanoseconds_since_epoch"] == int(EPOCH_OFFSET_S * 1e9)

    from rosbags.rosbag2 import Reader
    store = typestore()
    with Reader(bags["mcap"]) as r:
        conns = {c.topic: c for c in r.connections}
        msgs = {}
        for c, t, raw in r.messages(connections=[conns[t] for t in ("/tf_static", "/camera/depth/camera_info",
                                                                      "/camera/depth/image_raw",
                                                                      "/camera/pose")]):
            msgs.setdefault(c.topic, (t, store.deserialize_cdr(raw, c.msgtype)))
    tf = msgs["/tf_static"][1].transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id) == ("camera_link", OPTICAL_FRAME)
    q = [tf.transform.rotation.x, tf.transform.rotation.y, tf.transform.rotation.z, tf.transform.rotation.w]
    R = pose_from_tq([0, 0, 0], q)[:3, :3]
    # REP-103: optical z (forward) = camera_link x, optical x (right) = -y, optical y (down) = -z
    np.testing.assert_allclose(R, [[0, 0, 1], [-1, 0, 0], [0, -1, 0]], atol=1e-12)
    t_info, info = msgs["/camera/depth/camera_info"]
    K = kitchen.intrinsics
    np.testing.assert_array_equal(info.k, [K.fx, 0, K.cx, 0, K.fy, K.cy, 0, 0, 1])
    np.testing.assert_array_equal(info.p, [K.fx, 0, K.cx, 0, 0, K.fy, K.cy, 0, 0, 0, 1, 0])
    assert (info.width, info.height, info.header.frame_id) == (K.width, K.height, OPTICAL_FRAME)
    t_img, img = msgs["/camera/depth/image_raw"]
    assert (img.encoding, img.step, img.is_bigendian) == ("16UC1", 2 * K.width, 0)
    assert img.header.stamp.sec == int(EPOCH_OFFSET_S) and img.header.stamp.nanosec == 0
    assert t_img == t_info == int(EPOCH_OFFSET_S * 1e9)  # record time = header stamp
    pose = msgs["/camera/pose"][1]
    assert pose.header.frame_id == "map"


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_reads_back_to_the_dataset_frames(bags, kitchen, storage):
    with RosbagDataset(bags[storage]) as ds:
        assert len(ds) == N and ds.has_ground_truth and ds.pose_type == "PoseStamped"
        assert ds.intrinsics == kitchen.intrinsics
        assert ds.dropped_no_color == 0 and ds.no_ground_truth == 0
        np.testing.assert_allclose(ds.timestamps - EPOCH_OFFSET_S, kitchen.timestamps, atol=1e-6)
        # random access, out of order, twice
        for i in [7, 0, N - 1, 7] + list(range(N)):
            a, b = ds[i], kitchen[i]
            np.testing.assert_array_equal(a.depth, b.depth)  # 7-Scenes is mm: 16UC1 is exact
            np.testing.assert_array_equal(a.color, b.color)
            assert a.color.flags.writeable and a.index == i
            # a quaternion carries the nearest rotation of 7-Scenes' slightly non-orthonormal matrix
            assert np.abs(a.pose - orthonormalize(b.pose)).max() < 1e-9
            assert np.abs(a.pose - b.pose).max() < 1e-3
            assert a.meta["depth_stamp_ns"] == a.meta["color_stamp_ns"]
            assert a.meta["frame_id"] == OPTICAL_FRAME
        np.testing.assert_allclose(ds.gt_poses(), np.stack([orthonormalize(T) for T in kitchen.gt_poses()]),
                                   atol=1e-9)
    with pytest.raises(DatasetError, match="closed"):
        ds[0]


def test_bags_are_detected_and_opened_by_open_dataset(bags):
    mcap_file = next(bags["mcap"].glob("*.mcap"))
    db3_file = next(bags["sqlite3"].glob("*.db3"))
    for p in (bags["mcap"], bags["sqlite3"], mcap_file, db3_file):
        assert detect_format(p) == "rosbag2"
    ds = open_dataset(mcap_file, max_frames=5, stride=3)  # a bare .mcap: no metadata.yaml needed
    assert len(ds) == 5 and [ds[i].meta["source_index"] for i in range(5)] == [0, 3, 6, 9, 12]
    ds.close()
    ds = open_dataset(db3_file)
    assert len(ds) == N
    ds.close()


def _mesh_vertices(path):
    import open3d as o3d
    return np.asarray(o3d.io.read_triangle_mesh(str(path)).vertices)


@pytest.mark.parametrize("pose_source", ["external", "track"])
def test_replay_gives_the_same_poses_and_mesh_as_run(bags, redkitchen, tmp_path, capsys, pose_source):
    """Strict mode: external poses (the pose topic vs the dataset's pose files) and tracking
    (the same depth images) give the same trajectory and map from the bag as from the folder."""
    flags = ["--max-frames", str(N), "--voxel-size-m", "0.03", "--no-progress", "--no-views",
             "--pose-source", pose_source, "--sync-mode", "strict"]
    if pose_source == "track":  # CUDA scatter-adds are not bit-reproducible; tracking amplifies them
        flags += ["--device", "cpu"]
    assert main(["run", str(redkitchen), "--out", str(tmp_path / "run")] + flags) == 0
    assert main(["replay", str(bags["mcap"]), "--out", str(tmp_path / "replay")] + flags) == 0
    out = capsys.readouterr().out
    assert "30 integrated" in out
    t_run, P_run = read_tum_trajectory(tmp_path / "run" / "poses.txt")
    t_rep, P_rep = read_tum_trajectory(tmp_path / "replay" / "poses.txt")
    assert len(P_run) == len(P_rep) == N
    np.testing.assert_allclose(P_rep, P_run, atol=1e-9)
    np.testing.assert_allclose(t_rep - EPOCH_OFFSET_S, t_run, atol=1e-6)  # header stamps (ROS time)
    v_run = _mesh_vertices(tmp_path / "run" / "mesh.ply")
    v_rep = _mesh_vertices(tmp_path / "replay" / "mesh.ply")
    assert len(v_run) > 1000 and v_run.shape == v_rep.shape
    assert np.abs(v_run - v_rep).max() <= 1e-6


def test_missing_topic_lists_the_bags_topics(bags, tmp_path, capsys):
    with pytest.raises(DatasetError) as e:
        RosbagDataset(bags["mcap"], depth_topic="/camera/aligned_depth_to_color/image_raw")
    msg = str(e.value)
    assert "/camera/aligned_depth_to_color/image_raw" in msg and "--depth-topic" in msg
    for topic, typ in TOPICS.items():
        assert f"{topic}  [{typ}]" in msg
    with pytest.raises(DatasetError, match="camera_info topic '/nope'"):
        RosbagDataset(bags["mcap"], camera_info_topic="/nope")
    with pytest.raises(DatasetError, match="expected geometry_msgs/msg/PoseStamped or nav_msgs"):
        RosbagDataset(bags["mcap"], pose_topic="/camera/depth/camera_info")
    # a topic named explicitly must exist ...
    assert main(["replay", str(bags["mcap"]), "--out", str(tmp_path / "o"), "--pose-topic", "/odom",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "pose topic '/odom'" in err and "/camera/pose  [geometry_msgs/msg/PoseStamped]" in err
    # ... a default colour / pose topic is optional; '' disables one
    with RosbagDataset(bags["mcap"], color_topic=None, pose_topic="/not/there", max_frames=3) as ds:
        assert ds[0].color is None and ds[0].pose is None and not ds.has_ground_truth
    assert main(["replay", str(bags["mcap"]), "--out", str(tmp_path / "o"), "--pose-topic", "",
                 "--no-progress"]) == 2
    assert "needs a pose topic" in capsys.readouterr().err


# ------------------------------------------------------------ decoding corner cases
def _write_bag(path, depth_msgs, color_msgs, info, pose_topic_type, poses):
    """A small bag written with rosbags: lists of (stamp_ns, message)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    store = typestore()
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c_info = w.add_connection("/cam/depth/camera_info", "sensor_msgs/msg/CameraInfo", typestore=store)
        c_depth = w.add_connection("/cam/depth/image", "sensor_msgs/msg/Image", typestore=store)
        c_color = w.add_connection("/cam/color/image", "sensor_msgs/msg/Image", typestore=store)
        c_pose = w.add_connection("/pose", pose_topic_type, typestore=store)
        # record times deliberately differ from the header stamps (receive latency)
        for conn, items in ((c_depth, depth_msgs), (c_color, color_msgs), (c_pose, poses)):
            for ns, msg in items:
                w.write(conn, ns + 3_000_000, store.serialize_cdr(msg, conn.msgtype))
        w.write(c_info, depth_msgs[0][0], store.serialize_cdr(info, c_info.msgtype))


def _T(store, ns):
    return store.types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)


def _header(store, ns, frame="cam"):
    return store.types["std_msgs/msg/Header"](stamp=_T(store, ns), frame_id=frame)


def _image(store, ns, pixels, encoding, big_endian=False, pad=0):
    h, w = pixels.shape[:2]
    px = pixels
    if px.dtype.itemsize > 1:
        px = px.astype(px.dtype.newbyteorder(">" if big_endian else "<"))
    rows = np.ascontiguousarray(px).reshape(h, -1).view(np.uint8)
    if pad:
        rows = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    return store.types["sensor_msgs/msg/Image"](header=_header(store, ns), height=h, width=w,
                                                encoding=encoding, is_bigendian=int(big_endian),
                                                step=rows.shape[1], data=rows.reshape(-1).copy())


def _pose_msg(store, kind, ns, T):
    t, q = T[:3, 3], rot_to_quat(T[:3, :3])
    P = store.types
    point = P["geometry_msgs/msg/Point"](x=t[0], y=t[1], z=t[2])
    quat = P["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])
    if kind == "nav_msgs/msg/Odometry":
        z6 = np.zeros(36)
        return P[kind](header=_header(store, ns, "odom"), child_frame_id="cam",
                       pose=P["geometry_msgs/msg/PoseWithCovariance"](
                           pose=P["geometry_msgs/msg/Pose"](position=point, orientation=quat), covariance=z6),
                       twist=P["geometry_msgs/msg/TwistWithCovariance"](
                           twist=P["geometry_msgs/msg/Twist"](
                               linear=P["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0),
                               angular=P["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)),
                           covariance=z6))
    if kind == "geometry_msgs/msg/TransformStamped":
        return P[kind](header=_header(store, ns, "map"), child_frame_id="cam",
                       transform=P["geometry_msgs/msg/Transform"](
                           translation=P["geometry_msgs/msg/Vector3"](x=t[0], y=t[1], z=t[2]), rotation=quat))
    return P[kind](header=_header(store, ns, "map"), pose=P["geometry_msgs/msg/Pose"](position=point,
                                                                                   orientation=quat))


CASES = [  # depth encoding, big endian, row padding (B), colour encoding, pose type
    ("32FC1", True, 6, "bgr8", "nav_msgs/msg/Odometry"),
    ("32FC1", False, 0, "rgba8", "geometry_msgs/msg/TransformStamped"),
    ("16UC1", True, 4, "bgra8", "geometry_msgs/msg/PoseStamped"),
    ("mono16", False, 2, "mono8", "geometry_msgs/msg/PoseStamped"),
]


@pytest.mark.parametrize("depth_enc,big,pad,color_enc,pose_type", CASES)
def test_decoding_sync_and_pose_interpolation(tmp_path, depth_enc, big, pad, color_enc, pose_type):
    from neural_mapping.ros.conversions import color_from_msg, depth_from_msg  # pure numpy, no rclpy
    store = typestore()
    rng = np.random.default_rng(0)
    H, W, n = 6, 10, 6
    t0 = 1_700_000_000 * 10**9
    period = 100_000_000  # 10 Hz
    depths, colors, d_msgs, c_msgs = [], [], [], []
    for k in range(n):
        ns = t0 + k * period
        mm = rng.integers(300, 5000, size=(H, W)).astype(np.uint16)
        mm[0, :3] = 0
        if depth_enc == "32FC1":
            px = (mm / 1000.0).astype(np.float32)
            px[0, 0], px[0, 1], px[0, 2] = np.nan, np.inf, -1.0
            expect = np.where(mm > 0, px, 0).astype(np.float32)
        else:
            px = mm
            expect = mm.astype(np.float32) * np.float32(1e-3)
        rgb = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
        if color_enc == "mono8":
            rgb[..., 1] = rgb[..., 2] = rgb[..., 0]
            cpx = rgb[..., 0]
        elif color_enc.startswith("bgr"):
            cpx = rgb[..., ::-1]
        else:
            cpx = rgb
        if color_enc.endswith("a8"):
            cpx = np.concatenate([cpx, np.full((H, W, 1), 7, np.uint8)], axis=2)
        d_msgs.append((ns, _image(store, ns, px, depth_enc, big, pad)))
        # colour 4 ms after depth (paired at the default 20 ms tolerance), except frame 3: 45 ms
        c_ns = ns + (45_000_000 if k == 3 else 4_000_000)
        c_msgs.append((c_ns, _image(store, c_ns, np.ascontiguousarray(cpx), color_enc, False, pad)))
        depths.append(expect)
        colors.append(rgb)
    # poses every 175 ms from 120 ms after the first depth frame to 470 ms: frames 0 and 1 are
    # before the first pose and the last frame (500 ms) after the last one (never extrapolated)
    p_ns = [t0 + 120_000_000 + j * 175_000_000 for j in range(3)]
    p_T = [pose_from_tq([0.1 * j, 0.2, -0.3 * j], [0.1 * j, 0.2, 0.05 * j * j, 1.0]) for j in range(3)]
    info = store.types["sensor_msgs/msg/CameraInfo"](
        header=_header(store, t0), height=2 * H, width=2 * W, distortion_model="plumb_bob", d=np.zeros(5),
        k=np.array([20.0, 0, 9.5, 0, 22.0, 5.5, 0, 0, 1]), r=np.eye(3).reshape(-1), p=np.zeros(12),
        binning_x=2, binning_y=2,
        roi=store.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                            do_rectify=False))
    bag = tmp_path / "bag"
    _write_bag(bag, d_msgs, c_msgs, info, pose_type, [(ns, _pose_msg(store, pose_type, ns, T))
                                                      for ns, T in zip(p_ns, p_T)])

    ds = RosbagDataset(bag, depth_topic="/cam/depth/image", color_topic="/cam/color/image",
                       camera_info_topic="/cam/depth/camera_info", pose_topic="/pose", optional=())
    assert ds.pose_type == pose_type.rsplit("/", 1)[1]
    assert len(ds) == n - 1 and ds.dropped_no_color == 1  # frame 3's colour is 45 ms away
    K = ds.intrinsics  # binning 2x2 of the 20x12 sensor
    assert (K.width, K.height, K.fx, K.fy, K.cx, K.cy) == (W, H, 10.0, 11.0, 4.75, 2.75)
    kept = [0, 1, 2, 4, 5]
    for i, k in enumerate(kept):
        f = ds[i]
        np.testing.assert_array_equal(f.depth, depths[k])
        np.testing.assert_array_equal(f.color, colors[k])
        assert f.timestamp == pytest.approx((t0 + k * period) * 1e-9, abs=1e-6)
        # the node's decoders (neural_mapping.ros.conversions) agree on the same messages
        np.testing.assert_array_equal(depth_from_msg(d_msgs[k][1]), f.depth)
        np.testing.assert_array_equal(color_from_msg(c_msgs[k][1]), f.color)
        ns = t0 + k * period
        if ns < p_ns[0] or ns > p_ns[-1]:
            assert f.pose is None, k
        else:
            j = int(np.searchsorted(p_ns, ns))
            expect = interpolate_pose(p_T[j - 1], p_T[j], (ns - p_ns[j - 1]) / (p_ns[j] - p_ns[j - 1]))
            np.testing.assert_allclose(f.pose, expect, atol=1e-12)
    assert ds.has_ground_truth and ds.no_ground_truth == 3
    ds.close()

    # a tight pose gap refuses to interpolate across the 175 ms between poses
    with RosbagDataset(bag, depth_topic="/cam/depth/image", color_topic=None,
                       camera_info_topic="/cam/depth/camera_info", pose_topic="/pose",
                       max_pose_gap_s=0.15) as ds:
        assert len(ds) == n and not ds.has_ground_truth


def test_bag_pose_topic_drops_non_finite_and_bad_quaternions(tmp_path):
    """The bag path decodes poses with the node's decoder (msg_decode.pose_sample_from_msg):
    a NaN position, an all-zero quaternion and a quaternion far from unit norm are dropped
    (counted as bad_pose), and frames interpolate between the good poses around them."""
    store = typestore()
    t0, period = 1_700_000_000 * 10**9, 100_000_000
    d_msgs = [(t0 + k * period, _image(store, t0 + k * period, np.full((4, 6), 1000, np.uint16), "16UC1"))
              for k in range(5)]
    c_msgs = [(ns, _image(store, ns, np.zeros((4, 6, 3), np.uint8), "rgb8")) for ns, _ in d_msgs]
    good = {0: pose_from_tq([0, 0, 0], [0, 0, 0, 1]), 4: pose_from_tq([0.4, 0, 0], [0, 0, 0.2, 1])}
    kind = "geometry_msgs/msg/PoseStamped"
    poses = [(t0, _pose_msg(store, kind, t0, good[0])), (t0 + 4 * period, _pose_msg(store, kind, t0 + 4 * period, good[4]))]
    for k, (pos, quat) in {1: ((np.nan, 0, 0), (0, 0, 0, 1)), 2: ((5, 5, 5), (0, 0, 0, 0)),
                           3: ((5, 5, 5), (0, 0, 0, 3))}.items():
        m = _pose_msg(store, kind, t0 + k * period, np.eye(4))
        m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(v) for v in pos)
        o = m.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in quat)
        poses.append((t0 + k * period, m))
    info = store.types["sensor_msgs/msg/CameraInfo"](
        header=_header(store, t0), height=4, width=6, distortion_model="plumb_bob", d=np.zeros(5),
        k=np.array([5.0, 0, 2.5, 0, 5.0, 1.5, 0, 0, 1]), r=np.eye(3).reshape(-1), p=np.zeros(12),
        binning_x=0, binning_y=0,
        roi=store.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                            do_rectify=False))
    _write_bag(tmp_path / "bag", d_msgs, c_msgs, info, kind, poses)
    with RosbagDataset(tmp_path / "bag", depth_topic="/cam/depth/image", color_topic="/cam/color/image",
                       camera_info_topic="/cam/depth/camera_info", pose_topic="/pose", optional=()) as ds:
        assert dict(ds.dropped_messages) == {"bad_pose": 3}
        assert len(ds) == 5 and ds.no_ground_truth == 0
        for k in range(5):
            expect = interpolate_pose(good[0], good[4], k / 4)
            np.testing.assert_allclose(ds[k].pose, expect, atol=1e-12)


def test_bad_encodings_are_rejected_with_the_supported_list():
    store = typestore()
    img = _image(store, 0, np.zeros((2, 3), np.uint16), "16UC1")
    img.encoding = "8UC1"
    with pytest.raises(DatasetError, match="16UC1, mono16, 32FC1"):
        decode_depth(img)
    img.encoding = "yuv422"
    with pytest.raises(DatasetError, match="rgb8, bgr8, rgba8, bgra8, mono8"):
        decode_color(img)
    img = _image(store, 0, np.zeros((2, 3), np.uint16), "16UC1")
    img.step = 4
    with pytest.raises(DatasetError, match="step 4 B is smaller"):
        decode_depth(img)


def test_tum_bag_keeps_stamps_and_32fc1_is_lossless(tum_xyz, tmp_path):
    ref = open_dataset(tum_xyz, max_frames=4)
    s = make_bag(ref, tmp_path / "tum32", depth_encoding="32FC1")
    assert s.time_offset_s == 0.0  # TUM stamps are already wall clock
    make_bag(ref, tmp_path / "tum16", storage="sqlite3")
    with RosbagDataset(tmp_path / "tum32") as b32, RosbagDataset(tmp_path / "tum16") as b16:
        assert len(b32) == len(b16) == 4
        np.testing.assert_allclose(b32.timestamps, ref.timestamps, atol=1e-6)
        for i in range(4):
            r = ref[i]
            np.testing.assert_array_equal(b32[i].depth, r.depth)
            d16 = b16[i].depth
            assert np.array_equal(d16 > 0, r.depth > 0)
            assert np.abs(d16 - r.depth).max() <= 0.0005 + 1e-6  # rounded to mm
            np.testing.assert_array_equal(b32[i].color, r.color)
            np.testing.assert_allclose(b32[i].pose, r.pose, atol=1e-9)


def test_rclpy_reads_the_bag_like_the_node(bags, kitchen):
    """Where the ROS 2 wheels are installed: the bytes in our bag deserialize with rclpy's own
    type support, and the node's decoder gives the dataset's depth."""
    pytest.importorskip("rclpy")
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader
    from sensor_msgs.msg import CameraInfo, Image

    from neural_mapping.ros.conversions import (color_from_msg, depth_from_msg,
                                                intrinsics_from_camera_info)
    with Reader(bags["sqlite3"]) as r:
        conns = [c for c in r.connections
                 if c.msgtype in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo")]
        got = {}
        for c, _, raw in r.messages(connections=conns):
            if c.topic not in got:
                cls = CameraInfo if "camera_info" in c.topic else Image
                got[c.topic] = deserialize_message(bytes(raw), cls)
    np.testing.assert_array_equal(depth_from_msg(got["/camera/depth/image_raw"]), kitchen[0].depth)
    np.testing.assert_array_equal(color_from_msg(got["/camera/color/image_raw"]), kitchen[0].color)
    assert intrinsics_from_camera_info(got["/camera/depth/camera_info"]) == kitchen.intrinsics


def test_core_bag_modules_import_no_ros():
    code = ("import sys, neural_mapping.io.bags, neural_mapping.datasets, neural_mapping.app.cli\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rosidl_runtime_py') or "
            "m.split('.')[0].endswith('_msgs') or m.startswith('neural_mapping.ros'))\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
