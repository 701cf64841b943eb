"""neural_mapping.io.msg_decode: the one pure-numpy Image / CameraInfo decoding shared by the bag
reader and the ROS node, fed plain objects with the message fields (no ROS needed)."""

import array
import struct
from types import SimpleNamespace

import numpy as np
import pytest

from neural_mapping.io import msg_decode as md
from neural_mapping.types import CameraIntrinsics


def image(h, w, encoding, rows, step, big=0, data_type=bytes):
    data = b"".join(rows)
    if data_type is array.array:
        data = array.array("B", data)
    elif data_type is np.ndarray:
        data = np.frombuffer(data, np.uint8).copy()
    return SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=big, step=step,
                           data=data)


def camera_info(fx=500.0, fy=501.0, cx=320.0, cy=240.0, width=640, height=480, *, key="k",
                binning=(0, 0), roi=(0, 0, 0, 0), d=(0.0,) * 5):
    x, y, w, h = roi
    fields = dict(width=width, height=height, binning_x=binning[0], binning_y=binning[1],
                  roi=SimpleNamespace(x_offset=x, y_offset=y, width=w, height=h), d=list(d))
    fields[key] = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    return SimpleNamespace(**fields)


# ------------------------------------------------------------------------------ depth
@pytest.mark.parametrize("data_type", [bytes, array.array, np.ndarray])
@pytest.mark.parametrize("encoding", ["16UC1", "mono16"])
def test_depth_16bit_big_endian_with_row_padding(data_type, encoding):
    rows = [struct.pack(">HH", 1234, 0) + b"\xff\xff", struct.pack(">HH", 65000, 1) + b"\x00\x07"]
    msg = image(2, 2, encoding, rows, step=6, big=1, data_type=data_type)
    out = md.depth_from_msg(msg)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.flags.writeable
    np.testing.assert_allclose(out, [[1.234, 0.0], [65.0, 0.001]], rtol=1e-6)
    raw, scale = md.depth_raw_from_msg(msg)
    assert scale == 1e-3 and raw.strides == (6, 2) and raw[1, 0] == 65000


def test_depth_float_invalid_becomes_zero_and_input_is_untouched():
    rows = [struct.pack("<fff", 1.5, float("nan"), float("inf")),
            struct.pack("<fff", -float("inf"), -2.0, 0.25)]
    msg = image(2, 3, "32FC1", rows, step=12, data_type=array.array)
    before = bytes(msg.data)
    np.testing.assert_array_equal(md.depth_from_msg(msg), [[1.5, 0, 0], [0, 0, 0.25]])
    assert bytes(msg.data) == before
    big = image(1, 2, "32FC1", [struct.pack(">ff", 2.0, 0.5)], step=8, big=1)
    np.testing.assert_array_equal(md.depth_from_msg(big), [[2.0, 0.5]])


def test_depth_raw_view_is_zero_copy():
    msg = image(2, 2, "16UC1", [struct.pack("<HH", 1, 2) + b"\0\0", struct.pack("<HH", 3, 4) + b"\0\0"],
                step=6, data_type=np.ndarray)
    raw, _ = md.depth_raw_from_msg(msg)
    assert np.shares_memory(raw, msg.data)
    np.testing.assert_array_equal(raw, [[1, 2], [3, 4]])


@pytest.mark.parametrize("encoding", ["8UC1", "bgr8", "16SC1", "64FC1", ""])
def test_depth_bad_encoding_names_the_supported_ones(encoding):
    msg = image(1, 1, encoding, [b"\0\0"], step=2)
    with pytest.raises(md.DecodeError) as ei:
        md.depth_from_msg(msg)
    assert ei.value.reason == md.DEPTH_ENCODING
    assert "16UC1, mono16, 32FC1" in ei.value.message
    assert str(ei.value) == f"[depth_encoding] {ei.value.message}"
    assert isinstance(ei.value, ValueError)


def test_image_size_checks():
    with pytest.raises(md.DecodeError, match="must be > 0") as ei:
        md.color_from_msg(image(0, 0, "rgb8", [], step=0))
    assert ei.value.reason == md.SIZE_MISMATCH
    with pytest.raises(md.DecodeError, match=r"step 3 B is smaller than width 2 x 2 B/pixel") as ei:
        md.depth_from_msg(image(1, 2, "16UC1", [b"\0" * 4], step=3))
    assert ei.value.reason == md.SIZE_MISMATCH
    with pytest.raises(md.DecodeError, match=r"data has 5 B, expected step 6 x height 1 = 6 B") as ei:
        md.color_from_msg(image(1, 2, "rgb8", [b"\0" * 5], step=6, data_type=np.ndarray))
    assert ei.value.reason == md.SIZE_MISMATCH
    with pytest.raises(TypeError, match="bytes-like"):
        md.depth_from_msg(SimpleNamespace(height=1, width=1, encoding="16UC1", is_bigendian=0,
                                          step=2, data=[0, 0]))


# ------------------------------------------------------------------------------ color
RGB = np.array([[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [100, 110, 120]]], np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("padding", [0, 3])
def test_color_encodings(encoding, padding):
    px = RGB[..., ::-1] if encoding.startswith("bgr") else RGB
    if encoding.endswith("a8"):
        px = np.concatenate([px, np.full((2, 2, 1), 255, np.uint8)], axis=2)
    rows = [r.tobytes() + b"\xab" * padding for r in px]
    msg = image(2, 2, encoding, rows, step=px.shape[2] * 2 + padding)
    for copy in (False, True):
        out = md.color_from_msg(msg, copy=copy)
        assert out.dtype == np.uint8 and out.shape == (2, 2, 3) and out.flags.c_contiguous
        np.testing.assert_array_equal(out, RGB)


def test_color_mono8_and_copy_flag():
    gray = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    msg = image(2, 3, "mono8", [r.tobytes() + b"\0" for r in gray], step=4)
    np.testing.assert_array_equal(md.color_from_msg(msg), np.repeat(gray[..., None], 3, axis=2))
    msg = image(2, 2, "rgb8", [r.tobytes() for r in RGB], step=6)  # bytes: read-only data
    view = md.color_from_msg(msg)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8)) and not view.flags.writeable
    own = md.color_from_msg(msg, copy=True)
    assert not np.shares_memory(own, np.frombuffer(msg.data, np.uint8)) and own.flags.writeable


def test_color_bad_encoding():
    with pytest.raises(md.DecodeError) as ei:
        md.color_from_msg(image(1, 1, "yuv422", [b"\0\0"], step=2))
    assert ei.value.reason == md.COLOR_ENCODING
    assert "rgb8, bgr8, rgba8, bgra8, mono8" in str(ei.value)


# ------------------------------------------------------------------------ camera info
@pytest.mark.parametrize("key", ["k", "K"])
def test_camera_info_plain_k_or_K(key):
    msg = camera_info(key=key)
    assert md.intrinsics_from_camera_info(msg) == CameraIntrinsics(640, 480, 500.0, 501.0, 320.0, 240.0)
    assert md.intrinsics_from_camera_info(msg, (640, 480)).width == 640


def test_camera_info_roi_then_binning():
    msg = camera_info(900.0, 901.0, 640.0, 360.0, 1280, 720, roi=(100, 60, 640, 480))
    assert md.intrinsics_from_camera_info(msg) == CameraIntrinsics(640, 480, 900.0, 901.0, 540.0, 300.0)
    msg.binning_x = msg.binning_y = 2
    assert md.intrinsics_from_camera_info(msg, (320, 240)) == CameraIntrinsics(
        320, 240, 450.0, 450.5, 270.0, 150.0)
    with pytest.raises(md.DecodeError, match="describes 320x240") as ei:
        md.intrinsics_from_camera_info(msg, (640, 480))
    assert ei.value.reason == md.SIZE_MISMATCH


@pytest.mark.parametrize("binning", [(0, 0), (1, 1), (2, 1), (4, 4)])
def test_camera_info_binning(binning):
    bx, by = max(binning[0], 1), max(binning[1], 1)
    got = md.intrinsics_from_camera_info(camera_info(binning=binning))
    assert got == CameraIntrinsics(640 // bx, 480 // by, 500.0 / bx, 501.0 / by, 320.0 / bx, 240.0 / by)


@pytest.mark.parametrize("change, match", [
    (dict(fx=0.0), "uncalibrated"),
    (dict(fy=-5.0), "uncalibrated"),
    (dict(cx=float("nan")), "non-finite"),
    (dict(fx=float("inf")), "non-finite"),
    (dict(width=0), "size is 0x480"),
    (dict(roi=(0, 0, 640, 0)), "roi is 640x0"),
    (dict(roi=(1000, 0, 640, 480)), "exceeds the 640x480 sensor"),
    (dict(binning=(1024, 1)), "after roi/binning"),
])
def test_camera_info_rejections(change, match):
    with pytest.raises(md.DecodeError, match=match) as ei:
        md.intrinsics_from_camera_info(camera_info(**change))
    assert ei.value.reason == md.BAD_CAMERA_INFO and str(ei.value).startswith("[bad_camera_info]")


@pytest.mark.parametrize("k, match", [([1.0] * 8, "9 values, got 8"), (["a"] * 9, "not numeric"),
                                      (None, "no K")])
def test_camera_info_malformed_K(k, match):
    msg = camera_info()
    msg.k = k
    with pytest.raises(md.DecodeError, match=match) as ei:
        md.intrinsics_from_camera_info(msg)
    assert ei.value.reason == md.BAD_CAMERA_INFO


def test_has_distortion():
    assert not md.has_distortion(camera_info())
    assert md.has_distortion(camera_info(d=(0.1, 0, 0, 0, 0)))
    assert not md.has_distortion(SimpleNamespace(D=np.zeros(8)))
    assert not md.has_distortion(SimpleNamespace(d=[]))


def test_bag_reader_wraps_errors_as_dataset_errors_with_the_same_message():
    from neural_mapping.datasets.base import DatasetError
    from neural_mapping.datasets.rosbag import decode_color, decode_depth, intrinsics_from_camera_info
    msg = image(1, 2, "16UC1", [b"\0" * 4], step=3)
    with pytest.raises(md.DecodeError) as core:
        md.depth_from_msg(msg)
    with pytest.raises(DatasetError) as ds:
        decode_depth(msg)
    assert str(ds.value) == core.value.message and not isinstance(ds.value, md.DecodeError)
    with pytest.raises(DatasetError, match="uncalibrated"):
        intrinsics_from_camera_info(camera_info(fx=0.0))
    rgb = image(2, 2, "rgb8", [r.tobytes() for r in RGB], step=6)
    out = decode_color(rgb)  # the bag reader always gets its own writable copy
    assert out.flags.writeable and not np.shares_memory(out, np.frombuffer(rgb.data, np.uint8))


# ------------------------------------------------------------------------------ poses
def _rosbags_pose(kind, t=(1.0, 2.0, 3.0), q=(0.0, 0.0, 0.0, 2.0), stamp=(5, 250_000_000)):
    from neural_mapping.datasets.rosbag import typestore
    P = typestore().types
    hdr = P["std_msgs/msg/Header"](stamp=P["builtin_interfaces/msg/Time"](sec=stamp[0], nanosec=stamp[1]),
                                   frame_id="map")
    quat = P["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])
    if kind == "TransformStamped":
        return P["geometry_msgs/msg/TransformStamped"](
            header=hdr, child_frame_id="cam", transform=P["geometry_msgs/msg/Transform"](
                translation=P["geometry_msgs/msg/Vector3"](x=t[0], y=t[1], z=t[2]), rotation=quat))
    return P["geometry_msgs/msg/PoseStamped"](header=hdr, pose=P["geometry_msgs/msg/Pose"](
        position=P["geometry_msgs/msg/Point"](x=t[0], y=t[1], z=t[2]), orientation=quat))


@pytest.mark.parametrize("kind", ["PoseStamped", "TransformStamped"])
def test_pose_decoding_of_bag_messages(kind):
    """One pose decoder for the bag reader (rosbags classes, named geometry_msgs__msg__X) and the
    node (rclpy classes, re-exported by ros.conversions)."""
    msg = _rosbags_pose(kind)
    s = md.pose_sample_from_msg(msg)
    assert md.pose_kind(msg) == kind
    assert s.stamp_ns == 5_250_000_000 and s.stamp == 5.25
    np.testing.assert_array_equal(s.t, [1, 2, 3])
    np.testing.assert_array_equal(s.q, [0, 0, 0, 2])  # as received; T normalises
    np.testing.assert_allclose(s.T[:3, :3], np.eye(3))
    with pytest.raises(md.DecodeError, match="quaternion norm 2.0000") as e:
        md.pose_sample_from_msg(msg, quat_norm_tol=0.1)
    assert e.value.reason == md.BAD_POSE
    with pytest.raises(md.DecodeError, match="expected a Odometry"):
        md.pose_sample_from_msg(msg, "Odometry")


@pytest.mark.parametrize("t,q,what", [((np.nan, 0, 0), (0, 0, 0, 1), "non-finite"),
                                      ((0, 0, 0), (0, np.inf, 0, 1), "non-finite"),
                                      ((0, 0, 0), (0, 0, 0, 0), "all-zero quaternion")])
def test_pose_decoding_rejects_bad_values(t, q, what):
    with pytest.raises(md.DecodeError, match=what) as e:
        md.pose_sample_from_msg(_rosbags_pose("PoseStamped", t, q))
    assert e.value.reason == md.BAD_POSE


def test_node_conversions_reexport_the_one_pose_decoder():
    from neural_mapping.ros import conversions as cv  # pure numpy without rclpy for these names
    assert cv.pose_sample_from_msg is md.pose_sample_from_msg
    assert cv.PoseSample is md.PoseSample and cv.stamp_to_sec is md.stamp_to_sec


def test_decoding_imports_numpy_only():
    """The decoders load without torch (the node and bag tools pay only for numpy)."""
    import os
    import subprocess
    import sys
    code = "import sys, neural_mapping.io.msg_decode\nassert 'torch' not in sys.modules\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
