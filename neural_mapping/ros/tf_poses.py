"""The node's image transports and robot poses (kept out of :mod:`.inputs` and :mod:`.node`):

* :func:`image_input`: message type, topic and decoder of the depth / color input for its
  ``*_transport`` parameter (``raw`` | ``compressed`` | ``compressedDepth``, the
  ``image_transport`` names): ``depth/image`` (after remapping) + ``/compressedDepth``, ...;
* :class:`PoseMount`: a pose message of the base (Odometry of ``base_link``) composed with
  ``camera_mount_xyz_m_qxyzw``, checked against ``child_frame_id``;
* :class:`TfPoses`: ``pose_input: tf``: the depth frame in ``odom_frame`` at each depth stamp
  from ``tf2_ros`` (imported lazily: not on PyPI; when missing the node says so once, and
  what to use instead), looked up from a timer until the transform exists or
  ``pose_wait_timeout_s`` passes (tf2 never extrapolates).
"""

from __future__ import annotations

import collections
import threading
from typing import Callable, Tuple

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from neural_mapping.io import compressed
from neural_mapping.io.tf_tree import parse_mount
from neural_mapping.ros import conversions as conv

POSE_FRAME_MISMATCH = "pose_frame_mismatch"
TF_PENDING = 64         # depth stamps waiting for their transform
TF_POLL_S = 0.01
QUAT_NORM_TOL = 0.1     # PoseBuffer's default quat_norm_tol


def image_input(node, base: str, transport: str, depth: bool) -> Tuple[type, str, Callable]:
    """``(message type, topic, decode)`` of an image input (``base``: ``depth/image`` or
    ``color/image``)."""
    if transport == "raw":
        return Image, base, conv.depth_from_msg if depth else conv.color_from_msg
    topic = node.resolve_topic_name(base) + "/" + transport  # image_transport: remapped base + suffix
    return CompressedImage, topic, compressed.depth_from_compressed if depth else compressed.color_from_compressed


class PoseMount:
    """``T_odom_cam = T_odom_base @ T_base_cam`` for pose messages of the base frame."""

    def __init__(self, ncfg, warn: Callable[[str], None]):
        self.M = parse_mount(ncfg.camera_mount_xyz_m_qxyzw)
        self.frame = ncfg.camera_mount_frame.lstrip("/")
        self._warn, self._warned = warn, False

    def apply(self, sample, camera_frame: str):
        """The camera pose for ``sample`` (a 4x4, or ``(t, q)`` as received when no mount);
        raises ``DecodeError(pose_frame_mismatch)`` when the message is of another frame."""
        child = (sample.child_frame_id or "").lstrip("/")
        if self.M is None:
            if child and camera_frame and child != camera_frame.lstrip("/") and not self._warned:
                self._warned = True
                self._warn(f"the pose input is of frame {child!r} but the depth images are in "
                           f"{camera_frame!r}: the map is off by the camera mount. Set "
                           "camera_mount_xyz_m_qxyzw (and camera_mount_frame), or pose_input: tf")
            return sample.tq
        if self.frame and child and child != self.frame:
            raise conv.DecodeError(POSE_FRAME_MISMATCH, f"pose message of {child!r}, but the camera "
                                   f"mount is from {self.frame!r} (camera_mount_frame)")
        if abs(sample.quat_norm - 1.0) > QUAT_NORM_TOL:  # as the pose buffer would (it gets a matrix)
            raise conv.DecodeError(conv.BAD_POSE, f"quaternion norm {sample.quat_norm:.4f} is further "
                                   f"than {QUAT_NORM_TOL} from 1")
        return sample.T @ self.M


class TfPoses:
    """Poses of the depth frame from tf2 (``pose_input: tf``); ``available`` False without tf2_ros."""

    def __init__(self, node, submit_pose: Callable[[float, tuple], bool],
                 drop: Callable[[str, str], None], timeout_s: float):
        self.node, self._submit, self._drop, self.timeout_s = node, submit_pose, drop, float(timeout_s)
        self.target = node.ncfg.odom_frame
        self._pending = collections.deque(maxlen=TF_PENDING)
        self._lock = threading.Lock()
        self.available = False
        try:
            import tf2_ros  # not on PyPI: a ROS 2 install
        except ImportError:
            node.get_logger().error(
                "pose_input: tf needs tf2_ros, which is not importable here (it comes with a ROS 2 "
                "install: source /opt/ros/<distro>/setup.bash). No poses will come. Instead use "
                "pose_input: topic with your odometry remapped to 'pose' (pose_topic_type: Odometry) "
                "and camera_mount_xyz_m_qxyzw: 'x y z qx qy qz qw' (the depth optical frame in the "
                "base frame, from `ros2 run tf2_ros tf2_echo base_link <optical frame>`).")
            return
        self._tf2 = tf2_ros
        self.buffer = tf2_ros.Buffer()
        self.listener = tf2_ros.TransformListener(self.buffer, node)
        self.available = True
        node.create_timer(TF_POLL_S, self._poll)

    def request(self, header) -> None:
        """A depth image arrived: look its frame up in ``odom_frame`` at its stamp."""
        if self.available:
            with self._lock:
                self._pending.append((header.stamp, header.frame_id, self.node.get_clock().now()))

    def _poll(self) -> None:
        from rclpy.time import Time
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
        keep = []
        for stamp, frame, asked in items:
            try:
                ts = self.buffer.lookup_transform(self.target, frame, Time.from_msg(stamp))
            except (self._tf2.ExtrapolationException, self._tf2.LookupException,
                    self._tf2.ConnectivityException) as exc:
                waited = (self.node.get_clock().now() - asked).nanoseconds * 1e-9
                if waited < self.timeout_s:
                    keep.append((stamp, frame, asked))
                else:
                    self._drop("tf_lookup", f"no transform {self.target} <- {frame} at "
                                           f"{conv.stamp_to_sec(stamp):.3f} s: {exc}")
                continue
            tr, ro = ts.transform.translation, ts.transform.rotation
            self._submit(conv.stamp_to_sec(stamp),
                         (np.array([tr.x, tr.y, tr.z]), np.array([ro.x, ro.y, ro.z, ro.w])))
        if keep:
            with self._lock:
                self._pending.extendleft(reversed(keep))
