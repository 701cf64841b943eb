"""ROS message <-> numpy conversions on real rclpy messages."""

import array
import math
import struct
import time

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (PyPI ROS 2 wheels) is not installed")
from geometry_msgs.msg import PoseStamped, TransformStamped  # noqa: E402
from nav_msgs.msg import Odometry, Path  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from neural_mapping.geometry import pose_from_tq, rot_to_quat, so3_exp  # noqa: E402
from neural_mapping.system.pose_buffer import PoseBuffer  # noqa: E402
from neural_mapping.ros import conversions as cv  # noqa: E402
from neural_mapping.types import CameraIntrinsics, RGBDFrame  # noqa: E402

H, W = 48, 64


@pytest.fixture
def depth():
    rng = np.random.default_rng(1)
    d = rng.uniform(0.3, 6.0, (H, W)).astype(np.float32)
    d[0, :5] = 0.0
    return d


@pytest.fixture
def color():
    return np.random.default_rng(2).integers(0, 256, (H, W, 3), dtype=np.uint8)


def roundtrip(msg):
    """Through rclpy's serializer, as a subscriber would receive it."""
    return deserialize_message(serialize_message(msg), type(msg))


# ------------------------------------------------------------------------------ depth
@pytest.mark.parametrize("encoding", ["16UC1", "mono16", "32FC1"])
@pytest.mark.parametrize("padding", [0, 3, 8])
@pytest.mark.parametrize("big_endian", [False, True])
def test_depth_encodings_padding_endianness(depth, encoding, padding, big_endian):
    msg = roundtrip(cv.image_msg(depth, encoding, row_padding=padding, big_endian=big_endian))
    bpp = 2 if encoding != "32FC1" else 4
    assert msg.step == W * bpp + padding and msg.is_bigendian == int(big_endian)
    out = cv.depth_from_msg(msg)
    assert out.dtype == np.float32 and out.shape == (H, W) and out.flags.c_contiguous
    if encoding == "32FC1":
        np.testing.assert_array_equal(out, depth)
    else:
        np.testing.assert_allclose(out, np.round(depth * 1000) / 1000, atol=1e-6)
    assert (out[0, :5] == 0).all()
    RGBDFrame(out, CameraIntrinsics(W, H, 50.0, 50.0, 32.0, 24.0))  # accepted by the core


def test_depth_bytes_written_by_hand():
    """Independent of image_msg: big-endian 16UC1 with 2 bytes of padding, 2x2 pixels."""
    msg = Image(height=2, width=2, encoding="16UC1", is_bigendian=1, step=6)
    rows = [struct.pack(">HH", 1234, 0) + b"\xff\xff", struct.pack(">HH", 65000, 1) + b"\x00\x07"]
    msg.data = array.array("B", b"".join(rows))
    np.testing.assert_allclose(cv.depth_from_msg(msg), [[1.234, 0.0], [65.0, 0.001]], rtol=1e-6)
    msg = Image(height=1, width=3, encoding="32FC1", is_bigendian=0, step=12)
    msg.data = array.array("B", struct.pack("<fff", 1.5, float("nan"), float("inf")))
    np.testing.assert_array_equal(cv.depth_from_msg(msg), [[1.5, 0.0, 0.0]])
    msg.data = array.array("B", struct.pack("<fff", -float("inf"), -2.0, 0.25))
    np.testing.assert_array_equal(cv.depth_from_msg(msg), [[0.0, 0.0, 0.25]])


def test_depth_decode_is_zero_copy_until_conversion(depth):
    msg = cv.image_msg(depth, "16UC1", row_padding=4)
    raw, scale = cv.depth_raw_from_msg(msg)
    assert scale == 1e-3 and raw.shape == (H, W) and raw.strides == (W * 2 + 4, 2)
    assert np.shares_memory(raw, np.frombuffer(msg.data, np.uint8))
    before = bytes(msg.data)
    msg32 = cv.image_msg(np.where(depth > 0, depth, np.nan).astype(np.float32), "32FC1")
    before32 = bytes(msg32.data)
    cv.depth_from_msg(msg)
    cv.depth_from_msg(msg32)
    assert bytes(msg.data) == before and bytes(msg32.data) == before32  # inputs never modified


@pytest.mark.parametrize("encoding", ["8UC1", "bgr8", "16SC1", "64FC1", ""])
def test_depth_bad_encoding(depth, encoding):
    msg = cv.image_msg(depth, "16UC1")
    msg.encoding = encoding
    with pytest.raises(cv.DecodeError) as ei:
        cv.depth_from_msg(msg)
    assert ei.value.reason == "depth_encoding"
    for supported in ("16UC1", "mono16", "32FC1"):
        assert supported in str(ei.value)


def test_size_checks(depth, color):
    msg = cv.image_msg(depth, "16UC1")
    msg.step = W * 2 - 1
    with pytest.raises(cv.DecodeError, match="step") as ei:
        cv.depth_from_msg(msg)
    assert ei.value.reason == "size_mismatch"
    msg = cv.image_msg(depth, "32FC1")
    msg.height = H + 1
    with pytest.raises(cv.DecodeError, match="expected step") as ei:
        cv.depth_from_msg(msg)
    assert ei.value.reason == "size_mismatch"
    msg = cv.image_msg(color, "rgb8")
    msg.data = msg.data[:-1]
    with pytest.raises(cv.DecodeError) as ei:
        cv.color_from_msg(msg)
    assert ei.value.reason == "size_mismatch"
    msg = Image(encoding="rgb8")
    with pytest.raises(cv.DecodeError, match="must be > 0"):
        cv.color_from_msg(msg)


# ------------------------------------------------------------------------------ color
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("padding", [0, 5])
def test_color_encodings(color, encoding, padding):
    msg = roundtrip(cv.image_msg(color, encoding, row_padding=padding))
    out = cv.color_from_msg(msg)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, color)


def test_color_mono8_and_zero_copy(color):
    gray = color[..., 0]
    out = cv.color_from_msg(cv.image_msg(gray, "mono8", row_padding=2))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))
    msg = cv.image_msg(color, "rgb8")
    out = cv.color_from_msg(msg)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))  # rgb8, no padding: a view


def test_color_bad_encoding(color):
    msg = cv.image_msg(color, "rgb8")
    msg.encoding = "yuv422"
    with pytest.raises(cv.DecodeError) as ei:
        cv.color_from_msg(msg)
    assert ei.value.reason == "color_encoding" and "bgra8" in str(ei.value)


def test_check_registered_names_the_fix():
    cv.check_registered((480, 640), (480, 640))
    with pytest.raises(cv.DecodeError) as ei:
        cv.check_registered((480, 640), (720, 1280), "depth_optical", "color_optical")
    assert ei.value.reason == "not_registered"
    msg = str(ei.value)
    assert "640x480" in msg and "1280x720" in msg
    assert "align_depth.enable:=true" in msg and "aligned_depth_to_color" in msg
    assert "depth/image" in msg


def test_image_builder_uses_array_fields_and_is_fast(depth, color, capsys):
    big_d = np.resize(depth, (480, 640))
    big_c = np.resize(color, (480, 640, 3))
    timings = {}
    for enc, img in (("16UC1", big_d), ("32FC1", big_d), ("rgb8", big_c), ("bgr8", big_c)):
        t0 = time.perf_counter()
        for _ in range(5):
            msg = cv.image_msg(img, enc)
        timings[enc] = (time.perf_counter() - t0) / 5 * 1e3
        assert isinstance(msg.data, array.array) and msg.data.typecode == "B"
        assert len(msg.data) == msg.step * msg.height
    with capsys.disabled():
        print("\n640x480 Image build (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))


def test_cross_check_with_cv_bridge(depth, color):
    cv_bridge = pytest.importorskip(
        "cv_bridge", reason="cv_bridge is not on PyPI: decoding is cross-checked where it is installed")
    bridge = cv_bridge.CvBridge()
    for enc in ("16UC1", "32FC1"):
        msg = cv.image_msg(depth, enc, row_padding=4)
        ref = bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough").astype(np.float32)
        if enc == "16UC1":
            ref *= 1e-3
        np.testing.assert_allclose(cv.depth_from_msg(msg), np.nan_to_num(ref), atol=1e-6)
    msg = cv.image_msg(color, "bgr8")
    np.testing.assert_array_equal(cv.color_from_msg(msg), bridge.imgmsg_to_cv2(msg, "rgb8"))


# ------------------------------------------------------------------------ camera info
def test_camera_info_plain_and_roundtrip():
    K = CameraIntrinsics(640, 480, 525.0, 526.0, 319.5, 239.5)
    msg = roundtrip(cv.camera_info_msg(K, "cam", 3.5))
    assert isinstance(msg, CameraInfo) and msg.header.frame_id == "cam"
    assert cv.intrinsics_from_camera_info(msg, (640, 480)) == K
    assert not cv.has_distortion(msg)
    msg.d = [0.1, 0.0, 0.0, 0.0, 0.0]
    assert cv.has_distortion(msg)


@pytest.mark.parametrize("binning", [(0, 0), (1, 1), (2, 2), (2, 1), (4, 4)])
def test_camera_info_binning(binning):
    K = CameraIntrinsics(640, 480, 525.0, 526.0, 319.5, 239.5)
    msg = cv.camera_info_msg(K, binning=binning)
    bx, by = max(binning[0], 1), max(binning[1], 1)
    got = cv.intrinsics_from_camera_info(msg, (640 // bx, 480 // by))
    assert got == CameraIntrinsics(640 // bx, 480 // by, 525.0 / bx, 526.0 / by, 319.5 / bx, 239.5 / by)


def test_camera_info_roi_and_binning():
    K = CameraIntrinsics(1280, 720, 900.0, 901.0, 640.0, 360.0)
    msg = cv.camera_info_msg(K)
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 100, 60, 640, 480
    assert cv.intrinsics_from_camera_info(msg, (640, 480)) == CameraIntrinsics(
        640, 480, 900.0, 901.0, 540.0, 300.0)
    msg.binning_x = msg.binning_y = 2
    assert cv.intrinsics_from_camera_info(msg, (320, 240)) == CameraIntrinsics(
        320, 240, 450.0, 450.5, 270.0, 150.0)
    with pytest.raises(cv.DecodeError, match="describes 320x240") as ei:
        cv.intrinsics_from_camera_info(msg, (640, 480))
    assert ei.value.reason == "size_mismatch"
    msg.roi.x_offset = 1000  # outside the sensor
    with pytest.raises(cv.DecodeError, match="exceeds") as ei:
        cv.intrinsics_from_camera_info(msg)
    assert ei.value.reason == "bad_camera_info"


@pytest.mark.parametrize("index, value", [(0, 0.0), (4, 0.0), (2, float("nan")), (0, float("inf")),
                                          (0, -500.0)])
def test_camera_info_bad_K(index, value):
    msg = cv.camera_info_msg(CameraIntrinsics(640, 480, 525.0, 525.0, 320.0, 240.0))
    k = list(msg.k)
    k[index] = value
    msg.k = k
    with pytest.raises(cv.DecodeError) as ei:
        cv.intrinsics_from_camera_info(msg)
    assert ei.value.reason == "bad_camera_info"
    assert str(ei.value).startswith("[bad_camera_info]")


def test_camera_info_uncalibrated_size():
    msg = cv.camera_info_msg(CameraIntrinsics(640, 480, 525.0, 525.0, 320.0, 240.0))
    msg.width = 0
    with pytest.raises(cv.DecodeError) as ei:
        cv.intrinsics_from_camera_info(msg)
    assert ei.value.reason == "bad_camera_info"


# ------------------------------------------------------------------------------ poses
def _pose():
    return pose_from_tq([1.0, -2.0, 0.5], rot_to_quat(so3_exp([0.3, -0.2, 1.1])))


@pytest.mark.parametrize("kind", ["PoseStamped", "Odometry", "TransformStamped"])
def test_pose_messages_roundtrip(kind):
    T = _pose()
    if kind == "PoseStamped":
        msg = cv.pose_stamped_msg(T, 1234.5678, "map")
    elif kind == "Odometry":
        msg = cv.odometry_msg(T, 1234.5678, "odom", "camera", linear=[1, 2, 3])
        assert msg.twist.twist.linear.y == 2.0
    else:
        msg = cv.transform_stamped_msg(T, 1234.5678, "map", "camera")
    msg = roundtrip(msg)
    assert isinstance(msg, cv.pose_msg_type(kind))
    stamp, T2 = cv.pose_from_msg(msg, kind)
    assert stamp == pytest.approx(1234.5678, abs=1e-9)
    np.testing.assert_allclose(T2, T, atol=1e-12)
    s = cv.pose_sample_from_msg(msg)
    assert s.frame_id == msg.header.frame_id
    assert s.child_frame_id == ("" if kind == "PoseStamped" else "camera")
    with pytest.raises(cv.DecodeError, match="expected a"):
        cv.pose_from_msg(msg, "PoseStamped" if kind != "PoseStamped" else "Odometry")


def test_pose_rejects_nan_and_zero_quaternion():
    for field in ("x", "w"):
        msg = cv.pose_stamped_msg(np.eye(4), 1.0, "map")
        target = msg.pose.position if field == "x" else msg.pose.orientation
        setattr(target, field, float("nan"))
        with pytest.raises(cv.DecodeError) as ei:
            cv.pose_from_msg(msg)
        assert ei.value.reason == "bad_pose"
    msg = TransformStamped()
    msg.transform.rotation.w = 0.0
    with pytest.raises(cv.DecodeError, match="zero quaternion"):
        cv.pose_from_msg(msg)
    with pytest.raises(cv.DecodeError, match="unsupported pose message type") as ei:
        cv.pose_from_msg(Path())
    assert ei.value.reason == "bad_pose"
    with pytest.raises(ValueError):
        cv.pose_msg_type("Pose")


def test_pose_quaternion_left_to_the_pose_buffer():
    msg = cv.pose_stamped_msg(_pose(), 5.0, "map")
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = (2 * v for v in (o.x, o.y, o.z, o.w))  # norm 2: not normalised here
    s = cv.pose_sample_from_msg(msg)
    assert np.linalg.norm(s.q) == pytest.approx(2.0)
    buf = PoseBuffer()
    assert not buf.add(s.stamp, s.tq)  # far from unit: the buffer rejects and counts it
    assert buf.drops["bad_quaternion"] == 1
    o.x, o.y, o.z, o.w = (v * 0.51 for v in (o.x, o.y, o.z, o.w))  # norm 1.02: normalised
    s = cv.pose_sample_from_msg(msg)
    assert buf.add(s.stamp, s.tq) and buf.normalized == 1
    status, T = buf.query(5.0)
    np.testing.assert_allclose(T, _pose(), atol=1e-9)


def test_stamps():
    for t in (0.0, 1.5, 1234567.000000001, 1.9999999999, -0.5, 1e9 + 0.25):
        st = cv.sec_to_stamp(t)
        assert 0 <= st.nanosec < 1_000_000_000
        assert cv.stamp_to_sec(st) == pytest.approx(t, abs=1e-9)
    st = cv.sec_to_stamp(1.9999999999)
    assert (st.sec, st.nanosec) == (2, 0)
    st = cv.sec_to_stamp(-0.25)
    assert (st.sec, st.nanosec) == (-1, 750_000_000)
    assert cv.stamp_to_sec(cv.pose_stamped_msg(np.eye(4), 3.25, "m").header) == 3.25
    with pytest.raises(ValueError):
        cv.sec_to_stamp(float("nan"))
    with pytest.raises(ValueError):
        cv.sec_to_stamp(2.0**40)


# --------------------------------------------------------------------------- builders
def test_path_append_bounded():
    path = Path()
    for i in range(7):
        cv.path_append(path, cv.pose_stamped_msg(np.eye(4), float(i), "map"), max_length=5)
    assert len(path.poses) == 5 and path.header.frame_id == "map"
    assert [cv.stamp_to_sec(p.header.stamp) for p in path.poses] == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert cv.stamp_to_sec(path.header.stamp) == 6.0
    assert len(roundtrip(path).poses) == 5


def test_occupancy_grid():
    g = np.full((30, 50), -1, np.int8)
    g[5:10, 20:40] = 100
    g[10:20] = 0
    msg = roundtrip(cv.occupancy_grid_msg(g, 0.05, (-1.25, 2.5), "map", 7.5))
    assert isinstance(msg.data, array.array) and msg.data.typecode == "b"
    info = msg.info
    assert (info.width, info.height, info.resolution) == (50, 30, pytest.approx(0.05))
    assert (info.origin.position.x, info.origin.position.y) == (-1.25, 2.5)
    assert info.origin.orientation.w == 1.0 and msg.header.frame_id == "map"
    assert cv.stamp_to_sec(info.map_load_time) == 7.5
    np.testing.assert_array_equal(cv.occupancy_grid_to_array(msg), g)
    # other integer dtypes are accepted when in range; bad values are not
    np.testing.assert_array_equal(
        cv.occupancy_grid_to_array(cv.occupancy_grid_msg(g.astype(np.int32), 0.1, (0, 0), "m", 0)), g)
    with pytest.raises(ValueError):
        cv.occupancy_grid_msg(np.full((2, 2), 200, np.int32), 0.1, (0, 0), "m", 0)
    with pytest.raises(ValueError):
        cv.occupancy_grid_msg(g, 0.0, (0, 0), "m", 0)


def test_decode_error_is_a_value_error():
    e = cv.DecodeError("bad_pose", "nope")
    assert isinstance(e, ValueError) and e.reason == "bad_pose" and str(e) == "[bad_pose] nope"
    assert set(cv.REASONS) >= {"depth_encoding", "color_encoding", "size_mismatch",
                               "bad_camera_info", "not_registered", "bad_pose"}
    assert math.isfinite(cv.stamp_to_sec(Odometry().header.stamp))
    assert isinstance(PoseStamped(), cv.pose_msg_type("PoseStamped"))
