"""Thin numpy conversions between ROS messages and the core's types.

Decoding (inputs):

* :func:`depth_from_msg` -- ``sensor_msgs/Image`` depth to float32 metres per REP-118:
  ``16UC1``/``mono16`` in millimetres (0 = invalid), ``32FC1`` in metres (NaN/Inf = invalid;
  invalid and negative become 0).
* :func:`color_from_msg` -- ``rgb8, bgr8, rgba8, bgra8, mono8`` to uint8 (H, W, 3) RGB.
* :func:`intrinsics_from_camera_info` -- ``K`` with ``binning_x/y`` and ``roi`` applied.
* :func:`pose_from_msg` / :func:`pose_sample_from_msg` -- PoseStamped, Odometry,
  TransformStamped.

The image, camera_info and pose decoders (and :class:`DecodeError`, :class:`PoseSample`,
:func:`stamp_to_sec`) are the core's :mod:`neural_mapping.io.msg_decode`, re-exported here: one
pure-numpy copy shared with the bag reader.  They read ``msg.data`` through ``np.ndarray(buffer=...)`` with the row ``step`` as
stride and the byte order given by ``is_bigendian``: no copy until the one conversion to the
output array (``rgb8`` without padding is returned as a zero-copy view).  Every rejected
input raises :class:`DecodeError` whose ``reason`` is a short, stable key (the node counts
drops per reason): see ``REASONS``.

Building (outputs and tests): :func:`pose_stamped_msg`, :func:`odometry_msg`,
:func:`path_append`, :func:`occupancy_grid_msg`, :func:`image_msg`,
:func:`camera_info_msg`.  Array fields are filled with ``array.array(...).frombytes``
(never a numpy array or an element-wise Python list): a 640x480 image takes ~1 ms.
"""

from __future__ import annotations

import array
import math
import sys
from typing import Optional, Sequence, Tuple

import numpy as np

from neural_mapping.geometry import rot_to_quat
from neural_mapping.io.msg_decode import (BAD_CAMERA_INFO, BAD_POSE, COLOR_ENCODING,  # noqa: F401 (API)
                                          COLOR_ENCODINGS, DEPTH_ENCODING, DEPTH_ENCODINGS, POSE_TYPES,
                                          SIZE_MISMATCH, DecodeError, PoseSample, color_from_msg,
                                          depth_from_msg, depth_raw_from_msg, has_distortion,
                                          intrinsics_from_camera_info, pose_sample_from_msg,
                                          stamp_to_sec)
from neural_mapping.types import CameraIntrinsics

# Stable drop-counter keys (the image / camera_info / pose ones come from msg_decode).
NOT_REGISTERED = "not_registered"
BAD_STAMP = "bad_stamp"
REASONS = (DEPTH_ENCODING, COLOR_ENCODING, SIZE_MISMATCH, BAD_CAMERA_INFO, NOT_REGISTERED,
           BAD_POSE, BAD_STAMP)

HOST_BIGENDIAN = sys.byteorder == "big"


# ------------------------------------------------------------------------------ time
def sec_to_stamp(t: float):
    """Float seconds to ``builtin_interfaces/Time`` (nanoseconds rounded, carried)."""
    from builtin_interfaces.msg import Time
    if hasattr(t, "sec") and hasattr(t, "nanosec"):
        return t
    t = float(t)
    if not math.isfinite(t):
        raise ValueError(f"stamp must be finite, got {t!r}")
    sec = math.floor(t)
    nsec = int(round((t - sec) * 1e9))
    if nsec >= 1_000_000_000:
        sec, nsec = sec + 1, nsec - 1_000_000_000
    if not -2**31 <= sec < 2**31:
        raise ValueError(f"stamp {t} s does not fit builtin_interfaces/Time (int32 seconds)")
    return Time(sec=int(sec), nanosec=nsec)


def header_msg(frame_id: str, stamp):
    from std_msgs.msg import Header
    return Header(stamp=sec_to_stamp(stamp), frame_id=str(frame_id))


# ------------------------------------------------------------------ images, camera info
# depth_raw_from_msg, depth_from_msg, color_from_msg, intrinsics_from_camera_info and
# has_distortion are the core's (neural_mapping.io.msg_decode, imported above): one copy of the
# decoding, shared with the bag reader.


def check_registered(depth_shape: Sequence[int], color_shape: Sequence[int],
                     depth_frame: Optional[str] = None, color_frame: Optional[str] = None) -> None:
    """Raise ``DecodeError('not_registered')`` when depth and color differ in size."""
    dh, dw = int(depth_shape[0]), int(depth_shape[1])
    ch, cw = int(color_shape[0]), int(color_shape[1])
    if (dh, dw) == (ch, cw):
        return
    frames = ""
    if depth_frame is not None or color_frame is not None:
        frames = f" (depth frame {depth_frame!r}, color frame {color_frame!r})"
    raise DecodeError(NOT_REGISTERED, (
        f"depth is {dw}x{dh} but color is {cw}x{ch}{frames}: depth and color must be registered "
        "(same size and intrinsics). Remap 'depth/image' and 'depth/camera_info' to the depth "
        "registered to the color camera (RealSense: launch with align_depth.enable:=true and use "
        "/camera/camera/aligned_depth_to_color/image_raw; Azure Kinect: depth_to_rgb), set the "
        "camera's depth and color profiles to the same resolution, or leave 'color/image' "
        "unconnected to map without color"))


# ------------------------------------------------------------------------------ poses
# PoseSample and pose_sample_from_msg are the core's (neural_mapping.io.msg_decode, above).
def pose_from_msg(msg, kind: Optional[str] = None) -> Tuple[float, np.ndarray]:
    """``(stamp_s, T)`` with ``T`` the 4x4 pose of the message (quaternion normalised to make
    a rotation).  To go through the PoseBuffer's quaternion checks, use
    :func:`pose_sample_from_msg` and ``buffer.add(s.stamp, s.tq)``."""
    s = pose_sample_from_msg(msg, kind)
    return s.stamp, s.T


def pose_msg_type(kind: str):
    """The message class for a ``pose_topic_type`` value."""
    if kind == "PoseStamped":
        from geometry_msgs.msg import PoseStamped
        return PoseStamped
    if kind == "Odometry":
        from nav_msgs.msg import Odometry
        return Odometry
    if kind == "TransformStamped":
        from geometry_msgs.msg import TransformStamped
        return TransformStamped
    raise ValueError(f"pose_topic_type {kind!r} is not one of {list(POSE_TYPES)}")


# --------------------------------------------------------------------------- builders
def _fill_pose(pose, T) -> None:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f"pose must be a finite 4x4 matrix, got shape {T.shape}")
    x, y, z = (float(v) for v in T[:3, 3])
    qx, qy, qz, qw = (float(v) for v in rot_to_quat(T[:3, :3]))
    pose.position.x, pose.position.y, pose.position.z = x, y, z
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = qx, qy, qz, qw


def pose_stamped_msg(T, stamp, frame_id: str):
    from geometry_msgs.msg import PoseStamped
    msg = PoseStamped()
    msg.header = header_msg(frame_id, stamp)
    _fill_pose(msg.pose, T)
    return msg


def odometry_msg(T, stamp, frame_id: str, child_frame_id: str, *,
                 linear=None, angular=None):
    """``nav_msgs/Odometry`` with pose ``T`` (child in frame_id); optional twist in the child
    frame.  Covariances are left zero (unknown)."""
    from nav_msgs.msg import Odometry
    msg = Odometry()
    msg.header = header_msg(frame_id, stamp)
    msg.child_frame_id = str(child_frame_id)
    _fill_pose(msg.pose.pose, T)
    if linear is not None:
        msg.twist.twist.linear.x, msg.twist.twist.linear.y, msg.twist.twist.linear.z = (
            float(v) for v in linear)
    if angular is not None:
        msg.twist.twist.angular.x, msg.twist.twist.angular.y, msg.twist.twist.angular.z = (
            float(v) for v in angular)
    return msg


def transform_stamped_msg(T, stamp, frame_id: str, child_frame_id: str):
    from geometry_msgs.msg import TransformStamped
    msg = TransformStamped()
    msg.header = header_msg(frame_id, stamp)
    msg.child_frame_id = str(child_frame_id)
    T = np.asarray(T, dtype=np.float64)
    tr, rot = msg.transform.translation, msg.transform.rotation
    tr.x, tr.y, tr.z = (float(v) for v in T[:3, 3])
    rot.x, rot.y, rot.z, rot.w = (float(v) for v in rot_to_quat(T[:3, :3]))
    return msg


def path_append(path, pose_stamped, max_length: int = 0):
    """Append to ``nav_msgs/Path`` (header stamp/frame follow the newest pose); keep at most
    ``max_length`` poses (0 = unbounded).  Returns ``path``."""
    path.poses.append(pose_stamped)
    if max_length and len(path.poses) > max_length:
        del path.poses[:len(path.poses) - max_length]
    path.header.stamp = pose_stamped.header.stamp
    path.header.frame_id = pose_stamped.header.frame_id
    return path


def occupancy_grid_msg(grid, resolution: float, origin_xy: Sequence[float], frame_id: str,
                       stamp, origin_z: float = 0.0):
    """``nav_msgs/OccupancyGrid`` from an int8 (H, W) grid, row ``r`` = y index, column ``c``
    = x index (row-major, cell (0, 0) at the lower-left corner ``origin_xy``, yaw 0); values
    0 free, 100 occupied, -1 unknown."""
    from nav_msgs.msg import OccupancyGrid
    g = np.asarray(grid)
    if g.ndim != 2:
        raise ValueError(f"grid must be (H, W), got shape {g.shape}")
    if g.dtype != np.int8:
        if g.size and (g.min() < -1 or g.max() > 100):
            raise ValueError("grid values must be -1 (unknown) or 0..100")
        g = g.astype(np.int8)
    if not (resolution > 0 and math.isfinite(resolution)):
        raise ValueError(f"resolution must be > 0, got {resolution}")
    msg = OccupancyGrid()
    msg.header = header_msg(frame_id, stamp)
    info = msg.info
    info.map_load_time = msg.header.stamp
    info.resolution = float(resolution)
    info.height, info.width = int(g.shape[0]), int(g.shape[1])
    info.origin.position.x = float(origin_xy[0])
    info.origin.position.y = float(origin_xy[1])
    info.origin.position.z = float(origin_z)
    info.origin.orientation.w = 1.0
    data = array.array("b")
    data.frombytes(np.ascontiguousarray(g).tobytes())
    msg.data = data
    return msg


def occupancy_grid_to_array(msg) -> np.ndarray:
    """(H, W) int8 view of an OccupancyGrid's data (zero copy)."""
    return np.frombuffer(msg.data, np.int8).reshape(msg.info.height, msg.info.width)


_ENC_BYTES = {"16UC1": 2, "mono16": 2, "32FC1": 4, "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4,
              "mono8": 1}


def image_msg(img, encoding: str, *, stamp=0.0, frame_id: str = "", row_padding: int = 0,
              big_endian: bool = False):
    """A ``sensor_msgs/Image`` (tests and tools; the node does not publish images).

    Depth: ``img`` (H, W) float metres (-> ``16UC1``/``mono16`` mm, rounded, invalid -> 0;
    ``32FC1`` m, invalid kept as NaN) or uint16 mm for the integer encodings.  Color: (H, W, 3)
    uint8 RGB (-> ``rgb8, bgr8, rgba8`` (alpha 255), ``bgra8``, ``mono8`` (ITU-R 601 luma)), or
    (H, W) uint8 for ``mono8``.  ``row_padding`` extra bytes per row (``step`` > width x bpp,
    padding bytes are 0xAB), ``big_endian`` for the multi-byte depth encodings."""
    from sensor_msgs.msg import Image
    a = np.asarray(img)
    if encoding in ("16UC1", "mono16"):
        if a.dtype == np.uint16:
            px = a
        else:
            d = a.astype(np.float64)
            ok = np.isfinite(d) & (d > 0)
            px = np.where(ok, np.clip(np.round(d * 1000.0), 0, 65535), 0).astype(np.uint16)
        px = px.astype(">u2" if big_endian else "<u2")
    elif encoding == "32FC1":
        px = a.astype(">f4" if big_endian else "<f4")
    elif encoding in COLOR_ENCODINGS:
        if encoding == "mono8":
            if a.ndim == 3:
                a = np.round(a[..., :3].astype(np.float32) @ np.float32([0.299, 0.587, 0.114]))
            px = a.astype(np.uint8)
        else:
            if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
                raise ValueError(f"color must be (H, W, 3) uint8 RGB, got {a.shape} {a.dtype}")
            px = a[..., ::-1] if encoding.startswith("bgr") else a
            if encoding.endswith("a8"):
                alpha = np.full(a.shape[:2] + (1,), 255, np.uint8)
                px = np.concatenate([px, alpha], axis=2)
    else:
        raise ValueError(f"image_msg: unsupported encoding {encoding!r}; supported: "
                         f"{', '.join(_ENC_BYTES)}")
    if px.ndim == 3 and px.shape[2] * px.dtype.itemsize != _ENC_BYTES[encoding] or \
            px.ndim == 2 and px.dtype.itemsize != _ENC_BYTES[encoding]:
        raise ValueError(f"array {a.shape} {a.dtype} does not fit encoding {encoding}")
    h, w = px.shape[:2]
    row = np.ascontiguousarray(px).reshape(h, -1).view(np.uint8)
    if row_padding:
        padded = np.full((h, row.shape[1] + int(row_padding)), 0xAB, np.uint8)
        padded[:, :row.shape[1]] = row
        row = padded
    msg = Image()
    msg.header = header_msg(frame_id, stamp)
    msg.height, msg.width = int(h), int(w)
    msg.encoding = encoding
    msg.is_bigendian = 1 if (big_endian and px.dtype.itemsize > 1) else 0
    msg.step = int(row.shape[1])
    data = array.array("B")
    data.frombytes(row.tobytes())
    msg.data = data
    return msg


def camera_info_msg(intrinsics: CameraIntrinsics, frame_id: str = "", stamp=0.0, *,
                    binning: Tuple[int, int] = (0, 0), distortion_model: str = "plumb_bob"):
    """``sensor_msgs/CameraInfo`` of an undistorted pinhole camera (D zeros, R identity,
    P = [K | 0])."""
    from sensor_msgs.msg import CameraInfo
    i = intrinsics
    msg = CameraInfo()
    msg.header = header_msg(frame_id, stamp)
    msg.width, msg.height = i.width, i.height
    msg.distortion_model = distortion_model
    d = array.array("d")
    d.frombytes(np.zeros(5).tobytes())
    msg.d = d
    msg.k = [i.fx, 0.0, i.cx, 0.0, i.fy, i.cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [i.fx, 0.0, i.cx, 0.0, 0.0, i.fy, i.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    msg.binning_x, msg.binning_y = int(binning[0]), int(binning[1])
    return msg
