"""Pure-numpy decoding of ``sensor_msgs/Image``, ``sensor_msgs/CameraInfo`` and pose messages.

One implementation shared by the bag reader (:mod:`neural_mapping.datasets.rosbag`, messages
from the ``rosbags`` type store) and the ROS node (:mod:`neural_mapping.ros.conversions`,
``rclpy`` messages).  Duck-typed: any object with the message's fields works, so the core
never imports ``rclpy`` or a ``*_msgs`` package.

* Image: ``height, width, encoding, is_bigendian, step, data`` (``data``: ``bytes``,
  ``array.array``, ``memoryview`` or a numpy array, as the message libraries give it).
* CameraInfo: ``k`` (or ROS 1 style ``K``), ``width, height, binning_x, binning_y, roi``
  (``x_offset, y_offset, width, height``) and, for :func:`has_distortion`, ``d`` (or ``D``).
* Poses: ``geometry_msgs/PoseStamped``, ``nav_msgs/Odometry``, ``geometry_msgs/TransformStamped``
  (``header.stamp.sec/nanosec``, the position / translation and orientation / rotation fields).

Decoders:

* :func:`depth_from_msg` -- depth to (H, W) float32 metres per REP-118: ``16UC1``/``mono16``
  in millimetres (0 = invalid), ``32FC1`` in metres (NaN/Inf = invalid); invalid and
  negative become 0.  :func:`depth_raw_from_msg` is the zero-copy view before conversion.
* :func:`color_from_msg` -- ``rgb8, bgr8, rgba8, bgra8, mono8`` to (H, W, 3) uint8 RGB.
* :func:`intrinsics_from_camera_info` -- ``K`` with ``roi`` and ``binning_x/y`` applied.
* :func:`pose_sample_from_msg` -- a pose message to a :class:`PoseSample` (stamp, ``t``, ``q``
  as received); non-finite values and an all-zero quaternion are rejected (``bad_pose``).

Images are read through ``np.ndarray(buffer=...)`` with the row ``step`` as stride and the
byte order given by ``is_bigendian``: no copy until the one conversion to the output array.
Every rejected input raises :class:`DecodeError`, whose ``reason`` is a short, stable key
(the node counts drops per reason).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from neural_mapping.types import CameraIntrinsics

# Stable reason keys (the node's drop counters).
DEPTH_ENCODING = "depth_encoding"
COLOR_ENCODING = "color_encoding"
SIZE_MISMATCH = "size_mismatch"
BAD_CAMERA_INFO = "bad_camera_info"
BAD_POSE = "bad_pose"

POSE_TYPES = ("PoseStamped", "Odometry", "TransformStamped")

# encoding -> (numpy dtype of one pixel, scale to metres)
DEPTH_ENCODINGS = {"16UC1": ("u2", 1e-3), "mono16": ("u2", 1e-3), "32FC1": ("f4", 1.0)}
# encoding -> (channels, channel order to pick for R, G, B)
COLOR_ENCODINGS = {"rgb8": (3, (0, 1, 2)), "bgr8": (3, (2, 1, 0)), "rgba8": (4, (0, 1, 2)),
                   "bgra8": (4, (2, 1, 0)), "mono8": (1, (0, 0, 0))}


class DecodeError(ValueError):
    """A message that cannot be decoded.  ``reason`` is a stable drop-counter key,
    ``message`` the explanation; ``str()`` is ``"[reason] message"``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason

    @property
    def message(self) -> str:
        return self.args[0]

    def __str__(self) -> str:
        return f"[{self.reason}] {self.args[0]}"


# ------------------------------------------------------------------------------ images
def data_bytes(data) -> np.ndarray:
    """``msg.data`` as a flat uint8 array over the same memory (no copy for a contiguous buffer)."""
    if isinstance(data, np.ndarray):  # rosbags: a uint8 array (a copy only if non-contiguous)
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, np.uint8)  # rclpy: array.array('B'); also bytes, memoryview
    except TypeError:
        raise TypeError(f"image data must be a bytes-like buffer or a numpy array, got "
                        f"{type(data).__name__}") from None


def _image_view(msg, dtype: str, channels: int, what: str) -> np.ndarray:
    """Zero-copy (H, W[, C]) view of ``msg.data`` honouring ``step`` and ``is_bigendian``."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    item = np.dtype(dtype).itemsize
    bpp = item * channels
    if h <= 0 or w <= 0:
        raise DecodeError(SIZE_MISMATCH, f"{what} image is {w}x{h}: width and height must be > 0")
    if step < w * bpp:
        raise DecodeError(SIZE_MISMATCH, f"{what} image step {step} B is smaller than width {w} x "
                          f"{bpp} B/pixel ({msg.encoding}) = {w * bpp} B")
    buf = data_bytes(msg.data)
    # the last row only needs w * bpp bytes, but REP-118 says data is step * height
    if buf.nbytes < step * h:
        raise DecodeError(SIZE_MISMATCH, f"{what} image data has {buf.nbytes} B, expected step "
                          f"{step} x height {h} = {step * h} B")
    dt = np.dtype(dtype)
    if item > 1:
        dt = dt.newbyteorder(">" if msg.is_bigendian else "<")
    if channels == 1:
        return np.ndarray((h, w), dt, buf, 0, (step, item))
    return np.ndarray((h, w, channels), dt, buf, 0, (step, bpp, item))


def depth_raw_from_msg(msg) -> Tuple[np.ndarray, float]:
    """Zero-copy view of a depth image in its own units and the scale to metres
    (``uint16`` mm and 1e-3, or ``float32`` m and 1.0); byte order as in the message."""
    enc = DEPTH_ENCODINGS.get(msg.encoding)
    if enc is None:
        raise DecodeError(DEPTH_ENCODING, f"depth encoding {msg.encoding!r} is not supported; "
                          f"supported (REP-118): {', '.join(DEPTH_ENCODINGS)}")
    return _image_view(msg, enc[0], 1, "depth"), enc[1]


def depth_from_msg(msg) -> np.ndarray:
    """(H, W) float32 metres, C-contiguous, a new array (never a view of ``msg.data``);
    invalid = 0 (REP-118: 0 mm for integer depth, NaN/Inf for float; negative too)."""
    raw, scale = depth_raw_from_msg(msg)
    if raw.dtype.kind == "u":
        return np.multiply(raw, np.float32(scale), dtype=np.float32)
    d = raw.astype(np.float32)  # native order, contiguous, a copy (never write into msg.data)
    bad = ~np.isfinite(d)
    bad |= d < 0
    d[bad] = 0.0
    return d


def color_from_msg(msg, copy: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 RGB, C-contiguous.  With ``copy=False``, ``rgb8`` without row padding
    is a zero-copy view of ``msg.data`` (read-only when the data is); ``copy=True`` always
    returns a new, writable array."""
    enc = COLOR_ENCODINGS.get(msg.encoding)
    if enc is None:
        raise DecodeError(COLOR_ENCODING, f"color encoding {msg.encoding!r} is not supported; "
                          f"supported: {', '.join(COLOR_ENCODINGS)}")
    ch, order = enc
    img = _image_view(msg, "u1", ch, "color")
    if ch == 1:
        return np.repeat(img[:, :, None], 3, axis=2)
    if order == (0, 1, 2):
        img = img[:, :, :3]
    else:
        img = img[:, :, 2::-1]  # bgr8 / bgra8: B, G, R -> R, G, B
    if copy:
        return np.array(img, dtype=np.uint8, order="C")
    return np.ascontiguousarray(img)


# ------------------------------------------------------------------------ camera info
def _camera_matrix(msg) -> np.ndarray:
    k = getattr(msg, "k", None)
    if k is None:
        k = getattr(msg, "K", None)
    if k is None:
        raise DecodeError(BAD_CAMERA_INFO, "camera_info has no K (field 'k', or 'K')")
    try:
        K = np.asarray(k, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DecodeError(BAD_CAMERA_INFO, "camera_info K is not numeric") from None
    if K.size != 9:
        raise DecodeError(BAD_CAMERA_INFO, f"camera_info K must have 9 values, got {K.size}")
    if not np.all(np.isfinite(K)):
        raise DecodeError(BAD_CAMERA_INFO, f"camera_info K has non-finite values: {K.tolist()}")
    if K[0] <= 0 or K[4] <= 0:
        raise DecodeError(BAD_CAMERA_INFO, f"camera_info K has fx={K[0]}, fy={K[4]}: the camera is "
                          "uncalibrated (K[0] == 0) or K is malformed")
    return K


def intrinsics_from_camera_info(msg, image_size: Optional[Tuple[int, int]] = None) -> CameraIntrinsics:
    """Intrinsics of the image the camera_info describes.

    ``K`` (row-major 3x3) is for the full-resolution sensor; as in ``image_geometry``, a
    ``roi`` (used when ``roi.width > 0``) shifts the principal point by its offset and sets
    the size, then ``binning_x/y`` (0 or 1 = none) divide focal lengths, principal point and
    size.  ``image_size = (width, height)`` of the image it comes with, when given, must
    match the result (else ``DecodeError('size_mismatch')``); everything else wrong with the
    message is ``DecodeError('bad_camera_info')``.
    """
    K = _camera_matrix(msg)
    width, height = int(msg.width), int(msg.height)
    fx, fy, cx, cy = float(K[0]), float(K[4]), float(K[2]), float(K[5])
    roi = msg.roi
    if roi.width > 0 or roi.height > 0:
        if roi.width == 0 or roi.height == 0:
            raise DecodeError(BAD_CAMERA_INFO, f"camera_info roi is {roi.width}x{roi.height}")
        if width and height and (roi.x_offset + roi.width > width or roi.y_offset + roi.height > height):
            raise DecodeError(BAD_CAMERA_INFO, f"camera_info roi ({roi.x_offset}, {roi.y_offset}, "
                              f"{roi.width}x{roi.height}) exceeds the {width}x{height} sensor")
        cx -= roi.x_offset
        cy -= roi.y_offset
        width, height = int(roi.width), int(roi.height)
    bx = max(int(msg.binning_x), 1)
    by = max(int(msg.binning_y), 1)
    if bx > 1:
        fx, cx, width = fx / bx, cx / bx, width // bx
    if by > 1:
        fy, cy, height = fy / by, cy / by, height // by
    if width <= 0 or height <= 0:
        raise DecodeError(BAD_CAMERA_INFO, f"camera_info size is {width}x{height} (after roi/binning)")
    if image_size is not None and (int(image_size[0]), int(image_size[1])) != (width, height):
        raise DecodeError(SIZE_MISMATCH, f"image is {image_size[0]}x{image_size[1]} but its "
                          f"camera_info describes {width}x{height} (binning {bx}x{by}, roi "
                          f"{roi.width}x{roi.height}+{roi.x_offset}+{roi.y_offset})")
    try:
        return CameraIntrinsics(width, height, fx, fy, cx, cy)
    except ValueError as exc:
        raise DecodeError(BAD_CAMERA_INFO, f"camera_info: {exc}") from None


def has_distortion(msg, tol: float = 1e-9) -> bool:
    """True when the camera_info declares non-zero distortion ``d`` (or ``D``); the core
    assumes a pinhole camera (rectified images)."""
    d = getattr(msg, "d", None)
    if d is None:
        d = getattr(msg, "D", ())
    return any(abs(float(v)) > tol for v in np.asarray(d, dtype=np.float64).reshape(-1))


# ------------------------------------------------------------------------------ poses
def stamp_to_sec(stamp) -> float:
    """``builtin_interfaces/Time`` (or a Header) to float seconds."""
    if hasattr(stamp, "stamp"):
        stamp = stamp.stamp
    return stamp.sec + stamp.nanosec * 1e-9


def stamp_to_ns(stamp) -> int:
    """``builtin_interfaces/Time`` (or a Header) to integer nanoseconds (exact)."""
    if hasattr(stamp, "stamp"):
        stamp = stamp.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class PoseSample:
    """A decoded pose message: ``stamp`` (s), ``stamp_ns`` (exact), translation ``t`` (3),
    quaternion ``q`` ``(x, y, z, w)`` *as received* (not normalised), ``frame_id``,
    ``child_frame_id``."""

    __slots__ = ("stamp", "stamp_ns", "t", "q", "frame_id", "child_frame_id")

    def __init__(self, stamp_ns, t, q, frame_id, child_frame_id):
        self.stamp_ns = int(stamp_ns)
        sec, nsec = divmod(self.stamp_ns, 1_000_000_000)
        self.stamp = sec + nsec * 1e-9
        self.t, self.q = t, q
        self.frame_id, self.child_frame_id = frame_id, child_frame_id

    @property
    def tq(self) -> Tuple[np.ndarray, np.ndarray]:
        """``(t, q)`` as ``PoseBuffer.add(stamp, (t, q))`` takes it."""
        return self.t, self.q

    @property
    def quat_norm(self) -> float:
        return float(np.linalg.norm(self.q))

    @property
    def T(self) -> np.ndarray:
        """The 4x4 pose (quaternion normalised to make a rotation)."""
        from neural_mapping.geometry import pose_from_tq  # numpy; the module imports torch too
        return pose_from_tq(self.t, self.q)

    def __repr__(self) -> str:
        return (f"PoseSample(stamp={self.stamp!r}, t={self.t.tolist()}, q={self.q.tolist()}, "
                f"frame_id={self.frame_id!r}, child_frame_id={self.child_frame_id!r})")


def pose_kind(msg) -> str:
    """``PoseStamped`` / ``Odometry`` / ``TransformStamped`` of a message object (rclpy classes
    are named so; the rosbags type store names them ``geometry_msgs__msg__PoseStamped``)."""
    name = type(msg).__name__.rsplit("__", 1)[-1]
    if name in POSE_TYPES:
        return name
    raise DecodeError(BAD_POSE, f"unsupported pose message type {type(msg).__module__}."
                      f"{type(msg).__name__}; supported: {', '.join(POSE_TYPES)}")


def pose_sample_from_msg(msg, kind: Optional[str] = None,
                         quat_norm_tol: Optional[float] = None) -> PoseSample:
    """Decode PoseStamped / Odometry / TransformStamped (``kind`` as in the node parameter
    ``pose_topic_type``; default: from the message type).  Rejects with
    ``DecodeError('bad_pose')``: non-finite values, an all-zero quaternion and, with
    ``quat_norm_tol``, a quaternion whose norm is further than that from 1.  Otherwise the
    quaternion is returned as received: normalising (and, for live poses, the norm tolerance)
    is the PoseBuffer's job (feed it ``sample.tq``)."""
    actual = pose_kind(msg)
    if kind is not None and kind != actual:
        raise DecodeError(BAD_POSE, f"expected a {kind} message, got {actual}")
    if actual == "PoseStamped":
        p, o, child = msg.pose.position, msg.pose.orientation, ""
    elif actual == "Odometry":
        p, o, child = msg.pose.pose.position, msg.pose.pose.orientation, msg.child_frame_id
    else:
        p, o, child = msg.transform.translation, msg.transform.rotation, msg.child_frame_id
    t = np.array([p.x, p.y, p.z], dtype=np.float64)
    q = np.array([o.x, o.y, o.z, o.w], dtype=np.float64)
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(q))):
        raise DecodeError(BAD_POSE, f"{actual} has non-finite values: t={t.tolist()}, q={q.tolist()}")
    if not np.any(q):
        raise DecodeError(BAD_POSE, f"{actual} has an all-zero quaternion")
    n = float(np.linalg.norm(q))
    if quat_norm_tol is not None and abs(n - 1.0) > quat_norm_tol:
        raise DecodeError(BAD_POSE, f"{actual} quaternion norm {n:.4f} is further than "
                          f"{quat_norm_tol} from 1")
    return PoseSample(stamp_to_ns(msg.header.stamp), t, q, msg.header.frame_id, child)
