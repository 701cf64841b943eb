"""The rosbag2 side of the bag files: topic names and message types ``make-bag`` writes and
``replay`` reads by default, the `rosbags <https://pypi.org/project/rosbags/>`_ type store both
use (pure Python: no ROS installation), and what tells a bag apart.  The writer is
:mod:`neural_mapping.io.bags`, the reader :class:`neural_mapping.datasets.rosbag.RosbagDataset`.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Optional

# Topic names written by ``neural-mapping make-bag`` (and the node's 'dataset' sensor preset).
DEPTH_TOPIC = "/camera/depth/image_raw"
COLOR_TOPIC = "/camera/color/image_raw"
DEPTH_INFO_TOPIC = "/camera/depth/camera_info"
COLOR_INFO_TOPIC = "/camera/color/camera_info"
POSE_TOPIC = "/camera/pose"
TF_STATIC_TOPIC = "/tf_static"
TF_TOPIC = "/tf"

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
TF_TYPE = "tf2_msgs/msg/TFMessage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
POSE_MSG_TYPES = {"geometry_msgs/msg/PoseStamped": "PoseStamped",
                  "nav_msgs/msg/Odometry": "Odometry",
                  "geometry_msgs/msg/TransformStamped": "TransformStamped"}


def typestore():
    """The rosbags type store used to read and write bags (ROS 2 Jazzy message definitions;
    the sensor/geometry/nav/tf2 messages used here are the same from Humble to Kilted)."""
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_JAZZY)


def is_rosbag(path) -> bool:
    """A rosbag2 folder (``metadata.yaml``) or a ``.mcap`` / ``.db3`` file."""
    p = Path(path)
    if p.is_dir():
        return (p / "metadata.yaml").is_file()
    return p.is_file() and p.suffix.lower() in (".mcap", ".db3")


def header_stamp_ns_from_cdr(raw) -> Optional[int]:
    """Header stamp of a serialized message whose first field is ``std_msgs/Header``
    (Image, CameraInfo, PoseStamped, ...), read from bytes 4..12 of the CDR (plain CDR,
    either byte order); ``None`` for another encapsulation."""
    b = bytes(raw[:12])
    if len(b) < 12 or b[0] != 0:
        return None
    if b[1] == 1:
        sec, nsec = struct.unpack_from("<iI", b, 4)
    elif b[1] == 0:
        sec, nsec = struct.unpack_from(">iI", b, 4)
    else:
        return None
    return sec * 1_000_000_000 + nsec
