"""rosbag2 recordings (mcap or sqlite3) as a :class:`~neural_mapping.datasets.base.Dataset`.

``RosbagDataset(path)`` reads a bag folder (with ``metadata.yaml``) or a single
``.mcap`` / ``.db3`` file with `rosbags <https://pypi.org/project/rosbags/>`_ (pure
Python, its own type store): no ROS installation, no ``rclpy``, no ``*_msgs``
packages.  ``neural-mapping replay BAG`` maps it with the offline pipeline, and
``neural-mapping make-bag`` (:mod:`neural_mapping.io.bags`) writes such bags from the
dataset folders.

Topics (defaults are the ones ``make-bag`` writes; all configurable):

===========================  =====================================================
``/camera/depth/image_raw``  sensor_msgs/Image, REP-118: ``16UC1`` / ``mono16`` mm
                             (0 invalid), ``32FC1`` m (NaN/Inf invalid); ``step``
                             (row padding) and ``is_bigendian`` honoured
``/camera/color/image_raw``  sensor_msgs/Image ``rgb8, bgr8, rgba8, bgra8, mono8``
                             (optional; registered to depth: same size)
``/camera/depth/camera_info``  sensor_msgs/CameraInfo: ``K`` with ``roi`` and
                             ``binning_x/y`` applied (as ``image_geometry``)
``/camera/pose``             geometry_msgs/PoseStamped, nav_msgs/Odometry or
                             geometry_msgs/TransformStamped: ``T_world_cam`` of the
                             depth camera's optical frame (optional: ground truth /
                             external poses)
===========================  =====================================================

Images may also be ``sensor_msgs/CompressedImage`` (colour JPEG/PNG, depth ``compressedDepth``
PNG/RVL: :mod:`neural_mapping.io.compressed`), detected from the topic's type.  Poses may come
from ``/tf`` + ``/tf_static`` instead of a pose topic (``pose_from_tf``), and a pose topic of
another frame than the depth image's (Odometry of ``base_link``) is composed with the camera
mount (``camera_mount`` or the bag's TF): :mod:`neural_mapping.datasets.rosbag_topics`, which
also chooses the topics when ``replay`` is given none.

Frames are driven by the depth stream, ordered by header stamp.  Each depth image
is paired with the colour image nearest in stamp within ``sync_tolerance_s``
(depth images without one are dropped and counted in ``dropped_no_color``); the
pose is the pose topic interpolated to the depth stamp (translation lerp,
rotation slerp, :func:`~neural_mapping.geometry.pose_at_stamp`) between the
two bracketing samples, the sample itself at an equal stamp, and ``None``
outside the pose span or across a gap longer than ``max_pose_gap_s`` -- never
extrapolated.  Timestamps are the header stamps in seconds (ROS time).

Lazy: opening reads the bag once to build the index (header stamps of the image
messages are read from the first CDR bytes, camera_info and pose messages are
small and decoded); ``ds[i]`` then fetches the two image messages of frame ``i``
by their record time.  Memory stays small whatever the bag size.

Images, camera_info and poses are decoded by :mod:`neural_mapping.io.msg_decode`, the same
pure-numpy code the ROS node uses (through :mod:`neural_mapping.ros.conversions`),
written against the plain message fields so the core never imports ROS.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from neural_mapping.io import msg_decode
from neural_mapping.io import compressed
from neural_mapping.io.bag_format import (CAMERA_INFO_TYPE, COLOR_INFO_TOPIC, COLOR_TOPIC,  # noqa: F401 (API)
                                          DEPTH_INFO_TOPIC, DEPTH_TOPIC, IMAGE_TYPE, POSE_MSG_TYPES,
                                          POSE_TOPIC, TF_STATIC_TOPIC, TF_TOPIC, TF_TYPE,
                                          header_stamp_ns_from_cdr, is_rosbag, typestore)
from neural_mapping.datasets.rosbag_topics import IMAGE_TYPES, BagPoses
from neural_mapping.types import CameraIntrinsics, RGBDFrame
from neural_mapping.datasets.base import Dataset, DatasetError, select_indices, stack_poses
from neural_mapping.datasets.tum import associate

log = logging.getLogger(__name__)

DEPTH_ENCODINGS = msg_decode.DEPTH_ENCODINGS
COLOR_ENCODINGS = msg_decode.COLOR_ENCODINGS
QUAT_NORM_TOL = 0.1  # as the PoseBuffer: further from 1 is a broken message, closer is normalised

LAYOUT_HELP = ("  rosbag2        a rosbag2 folder (metadata.yaml + .mcap or .db3), or a single .mcap / "
               ".db3 file:\n                 depth Image (16UC1/mono16 mm, 32FC1 m), CameraInfo, "
               "optional colour\n                 Image and PoseStamped/Odometry/TransformStamped "
               "pose topic (see `replay`)")


# ------------------------------------------------------------------------- decoding
# The decoding itself is neural_mapping.io.msg_decode (shared with the ROS node); these wrap its
# DecodeError into the DatasetError the dataset API raises (same message, without the reason).
@contextmanager
def _as_dataset_error():
    try:
        yield
    except msg_decode.DecodeError as exc:
        raise DatasetError(exc.message) from None


def decode_depth(msg) -> np.ndarray:
    """sensor_msgs/Image (REP-118) or CompressedImage (compressedDepth) depth -> (H, W)
    float32 metres, invalid = 0."""
    with _as_dataset_error():
        if compressed.is_compressed(msg):
            return compressed.depth_from_compressed(msg)
        return msg_decode.depth_from_msg(msg)


def decode_color(msg) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage (jpeg/png) colour -> (H, W, 3) uint8 RGB (a
    writable copy)."""
    with _as_dataset_error():
        if compressed.is_compressed(msg):
            return compressed.color_from_compressed(msg)
        return msg_decode.color_from_msg(msg, copy=True)


def intrinsics_from_camera_info(msg) -> CameraIntrinsics:
    """Intrinsics of the image a sensor_msgs/CameraInfo describes: ``K`` of the full sensor,
    then ``roi`` (when ``roi.width > 0``: principal point shifted, size set), then
    ``binning_x/y`` (0 or 1 = none) divide focal lengths, principal point and size."""
    with _as_dataset_error():
        return msg_decode.intrinsics_from_camera_info(msg)


def _rosbag_error_types():
    from rosbags.rosbag2 import ReaderError
    from rosbags.serde import SerdeError
    return ReaderError, SerdeError


# -------------------------------------------------------------------------- dataset
class RosbagDataset(Dataset):
    """A rosbag2 recording (see the module docstring).

    ``depth_topic``, ``camera_info_topic`` are required; ``color_topic`` and ``pose_topic``
    may be ``None`` (not used).  A topic that is not in the bag raises :class:`DatasetError`
    listing the bag's topics and types, except for the kinds named in ``optional``
    (``"color"``, ``"pose"``), which are then silently not used.
    ``sync_tolerance_s``: largest depth-colour stamp difference of a pair.
    ``max_pose_gap_s``: poses further apart than this are not interpolated across.
    Images may be raw or compressed (``CompressedImage``; see :mod:`neural_mapping.io.compressed`).
    ``pose_from_tf``: poses from ``/tf`` + ``/tf_static`` (the depth frame in ``pose_frame``, ""
    = the root of its tree) instead of a pose topic.  ``camera_mount`` (``"x y z qx qy qz qw"``,
    checked against ``child_frame_id`` when ``camera_mount_frame`` is set): the depth frame in
    the pose topic's frame; empty: the bag's TF chain when the pose is of another frame.
    """

    def __init__(self, path, max_frames: Optional[int] = None, stride: int = 1, *,
                 depth_topic: str = DEPTH_TOPIC, color_topic: Optional[str] = COLOR_TOPIC,
                 camera_info_topic: str = DEPTH_INFO_TOPIC, pose_topic: Optional[str] = POSE_TOPIC,
                 optional: Sequence[str] = ("color", "pose"), sync_tolerance_s: float = 0.02,
                 max_pose_gap_s: float = 0.5, load_color: bool = True, pose_from_tf: bool = False,
                 pose_frame: str = "", camera_mount: str = "", camera_mount_frame: str = ""):
        from rosbags.rosbag2 import Reader

        self.path = Path(path)
        if not self.path.exists():
            raise DatasetError(f"bag {str(self.path)!r} does not exist")
        if not is_rosbag(self.path):
            raise DatasetError(f"{self.path} is not a rosbag2 (a folder with metadata.yaml, or a "
                               ".mcap / .db3 file)")
        for name in optional:
            if name not in ("color", "pose"):
                raise ValueError(f"optional may name 'color' and 'pose', got {name!r}")
        if not (sync_tolerance_s >= 0):
            raise ValueError(f"sync_tolerance_s must be >= 0, got {sync_tolerance_s}")
        if not (max_pose_gap_s > 0):
            raise ValueError(f"max_pose_gap_s must be > 0, got {max_pose_gap_s}")
        self.name = f"rosbag:{self.path.name}"
        self.sync_tolerance_s = float(sync_tolerance_s)
        self.max_pose_gap_s = float(max_pose_gap_s)
        self._lock = threading.Lock()
        self._store = typestore()
        ReaderError, SerdeError = _rosbag_error_types()
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except (ReaderError, OSError, KeyError, ValueError) as exc:
            raise DatasetError(f"cannot open bag {self.path}: {exc}") from None
        try:
            self._index(depth_topic, color_topic if load_color else None, camera_info_topic,
                        pose_topic, tuple(optional))
            sel = select_indices(len(self._depth), max_frames, stride)
            if len(sel) == 0:
                raise DatasetError(f"{self.path}: no frames selected (max_frames={max_frames}, "
                                   f"stride={stride})")
            self._sel = sel
            self._stamps_ns = np.array([self._depth[k][0] for k in sel], dtype=np.int64)
            sec, nsec = np.divmod(self._stamps_ns, 1_000_000_000)
            self.timestamps = sec.astype(np.float64) + nsec * 1e-9  # ROS time, seconds
            self.depth_frame = self._fetch(self._depth[int(sel[0])]).header.frame_id.lstrip("/")
            if pose_from_tf:
                self._poses = self._bag_poses.from_tf(self._stamps_ns, self.depth_frame, pose_frame)
                self.pose_topic, self.pose_type = f"TF:{self._bag_poses.frame}", "tf"
            elif self.pose_topic is not None:
                self._poses = self._bag_poses.from_topic(self._stamps_ns, self.depth_frame,
                                                         camera_mount, camera_mount_frame)
            else:
                self._poses = [None] * len(sel)
            self.no_ground_truth = sum(p is None for p in self._poses)
            self.has_ground_truth = self.pose_topic is not None and self.no_ground_truth < len(sel)
            self._check_first_frame()
        except (ReaderError, SerdeError) as exc:
            self.close()
            raise DatasetError(f"{self.path}: cannot read the bag: {exc}") from None
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- index
    def topics(self) -> Dict[str, Tuple[str, int]]:
        """``{topic: (type, message count)}`` of the bag."""
        out: Dict[str, Tuple[str, int]] = {}
        for name, info in self._reader.topics.items():
            out[name] = (info.msgtype or "(several types)", int(info.msgcount))
        return out

    def _missing(self, what: str, topic: str, expected: str) -> DatasetError:
        listing = "\n".join(f"  {name}  [{typ}]  {count} messages"
                            for name, (typ, count) in sorted(self.topics().items())) or "  (none)"
        hint = {"depth": "--depth-topic", "camera_info": "--camera-info-topic",
                "color": "--color-topic ('' to map without colour)",
                "pose": "--pose-topic ('' for none; then use --pose-source track)"}[what]
        return DatasetError(f"{self.path}: {what} topic {topic!r} ({expected}) is not in the bag; "
                            f"choose one with {hint}. Topics in the bag:\n{listing}")

    def _conns(self, what: str, topic: Optional[str], types: Sequence[str], optional: bool):
        if not topic:
            return None, []
        conns = [c for c in self._reader.connections if c.topic == topic]
        if not conns:
            if optional:
                log.info("%s: no %s topic %r in the bag; not used", self.path, what, topic)
                return None, []
            raise self._missing(what, topic, " or ".join(types))
        bad = sorted({c.msgtype for c in conns if c.msgtype not in types})
        if bad:
            raise DatasetError(f"{self.path}: {what} topic {topic!r} has type {', '.join(bad)}; "
                               f"expected {' or '.join(types)}")
        return topic, conns

    def _index(self, depth_topic, color_topic, info_topic, pose_topic, optional) -> None:
        self.depth_topic, dconns = self._conns("depth", depth_topic, IMAGE_TYPES, False)
        if not depth_topic:
            raise DatasetError("a depth topic is required")
        self.camera_info_topic, iconns = self._conns("camera_info", info_topic, [CAMERA_INFO_TYPE], False)
        if not info_topic:
            raise DatasetError("a camera_info topic is required")
        self.color_topic, cconns = self._conns("color", color_topic, IMAGE_TYPES, "color" in optional)
        self.pose_topic, pconns = self._conns("pose", pose_topic, list(POSE_MSG_TYPES),
                                              "pose" in optional)
        self.pose_type = POSE_MSG_TYPES[pconns[0].msgtype] if pconns else None
        if len({c.msgtype for c in pconns}) > 1:
            raise DatasetError(f"{self.path}: pose topic {pose_topic!r} has several types")

        # one pass over the bag: image header stamps + where to fetch them; small messages decoded
        depth: List[Tuple[int, object, int, int]] = []   # (stamp_ns, connection, record ns, ordinal)
        color: List[Tuple[int, object, int, int]] = []
        infos: List[Tuple[int, CameraIntrinsics, bool]] = []
        self._bag_poses = bp = BagPoses(self.path, self.max_pose_gap_s * 1e9)
        tconns = [c for c in self._reader.connections if c.topic in (TF_TOPIC, TF_STATIC_TOPIC)
                  and c.msgtype == TF_TYPE]
        self.dropped_messages = Counter()
        seen: Dict[Tuple[int, int], int] = {}
        dset, cset = {id(c) for c in dconns}, {id(c) for c in cconns}
        iset, pset = {id(c) for c in iconns}, {id(c) for c in pconns}
        for conn, t_rec, raw in self._reader.messages(connections=dconns + cconns + iconns + pconns
                                                      + tconns):
            key = (conn.id, t_rec)
            ordinal = seen.get(key, 0)
            seen[key] = ordinal + 1
            if id(conn) in dset or id(conn) in cset:
                st = header_stamp_ns_from_cdr(raw)
                if st is None:
                    st = msg_decode.stamp_to_ns(self._store.deserialize_cdr(raw, conn.msgtype).header)
                (depth if id(conn) in dset else color).append((st, conn, t_rec, ordinal))
            elif id(conn) in iset:
                msg = self._store.deserialize_cdr(raw, conn.msgtype)
                try:
                    K = intrinsics_from_camera_info(msg)
                except DatasetError as exc:
                    self.dropped_messages["bad_camera_info"] += 1
                    log.warning("%s: camera_info dropped: %s", self.path, exc)
                    continue
                distorted = msg_decode.has_distortion(msg)
                infos.append((msg_decode.stamp_to_ns(msg.header), K, distorted))
            elif id(conn) in pset:
                msg = self._store.deserialize_cdr(raw, conn.msgtype)
                try:
                    sample = msg_decode.pose_sample_from_msg(msg, self.pose_type, QUAT_NORM_TOL)
                except msg_decode.DecodeError as exc:
                    self.dropped_messages[exc.reason] += 1
                    log.debug("%s: pose dropped: %s", self.path, exc)
                    continue
                bp.add_sample(sample)
            else:
                bp.add_tf(conn.topic, self._store.deserialize_cdr(raw, conn.msgtype))
        if self.dropped_messages:
            log.warning("%s: dropped pose/camera_info messages: %s", self.path, dict(self.dropped_messages))

        if not depth:
            raise DatasetError(f"{self.path}: depth topic {self.depth_topic!r} has no messages")
        if not infos:
            raise DatasetError(f"{self.path}: camera_info topic {self.camera_info_topic!r} has no "
                               "valid message")
        self.intrinsics = infos[0][1]
        if any(k != self.intrinsics for _, k, _ in infos):
            log.warning("%s: camera_info changes during the bag; using the first one (%s)",
                        self.path, self.intrinsics)
        if infos[0][2]:
            log.warning("%s: camera_info declares lens distortion; the map assumes a pinhole camera "
                        "(rectified images)", self.path)
        depth.sort(key=lambda e: (e[0], e[2], e[3]))
        color.sort(key=lambda e: (e[0], e[2], e[3]))
        self.num_depth_images, self.num_color_images = len(depth), len(color)
        if self.color_topic is not None:
            base = depth[0][0]
            d_s = (np.array([e[0] for e in depth], dtype=np.int64) - base) * 1e-9
            c_s = (np.array([e[0] for e in color], dtype=np.int64) - base) * 1e-9
            match = associate(d_s, c_s, self.sync_tolerance_s)
            keep = np.nonzero(match >= 0)[0]
            self.dropped_no_color = int(len(depth) - len(keep))
            if len(keep) == 0:
                raise DatasetError(f"{self.path}: no depth image on {self.depth_topic!r} has a colour "
                                   f"image on {self.color_topic!r} within {self.sync_tolerance_s * 1e3:g} "
                                   "ms (--sync-tolerance-s, or --color-topic '' for depth only)")
            self._depth = [depth[k] for k in keep]
            self._color = [color[match[k]] for k in keep]
        else:
            self.dropped_no_color = 0
            self._depth, self._color = depth, [None] * len(depth)

    # ---------------------------------------------------------------- frames
    def _fetch(self, entry):
        _, conn, t_rec, ordinal = entry
        with self._lock:
            if self._reader is None:
                raise DatasetError(f"{self.path}: the bag is closed")
            gen = self._reader.messages(connections=[conn], start=t_rec, stop=t_rec + 1)
            try:
                for k, (_, _, raw) in enumerate(gen):
                    if k == ordinal:
                        return self._store.deserialize_cdr(raw, conn.msgtype)
            finally:
                gen.close()
        raise DatasetError(f"{self.path}: message at {t_rec} ns on {conn.topic} vanished")

    def _decode(self, i: int):
        k = int(self._sel[i])
        dmsg = self._fetch(self._depth[k])
        depth = decode_depth(dmsg)
        W, H = self.intrinsics.width, self.intrinsics.height
        if depth.shape != (H, W):
            raise DatasetError(f"{self.path}: depth image on {self.depth_topic!r} is {depth.shape[1]}x"
                               f"{depth.shape[0]} but {self.camera_info_topic!r} describes {W}x{H}")
        color = None
        if self._color[k] is not None:
            cmsg = self._fetch(self._color[k])
            color = decode_color(cmsg)
            if color.shape[:2] != depth.shape:
                raise DatasetError(
                    f"{self.path}: depth ({self.depth_topic}) is {W}x{H} but colour ({self.color_topic}) "
                    f"is {color.shape[1]}x{color.shape[0]}: depth and colour must be registered (same "
                    "size and intrinsics); use the depth topic registered to the colour camera (e.g. "
                    "aligned_depth_to_color) or --color-topic '' to map without colour")
        return depth, color, dmsg

    def _check_first_frame(self) -> None:
        self._decode(0)  # fail at open on a wrong encoding / size, not in the middle of a run

    def _load(self, i: int) -> RGBDFrame:
        depth, color, dmsg = self._decode(i)
        k = int(self._sel[i])
        pose = self._poses[i]
        return RGBDFrame(depth=depth, intrinsics=self.intrinsics, color=color,
                         timestamp=float(self.timestamps[i]),
                         pose=None if pose is None else pose.copy(), index=i,
                         meta={"source_index": k, "dataset": self.name,
                               "depth_stamp_ns": int(self._depth[k][0]),
                               "color_stamp_ns": None if self._color[k] is None else int(self._color[k][0]),
                               "frame_id": dmsg.header.frame_id})

    def gt_poses(self) -> np.ndarray:
        return stack_poses(self._poses)

    def describe(self) -> str:
        return (super().describe() + f"; depth {self.depth_topic}, colour {self.color_topic or '-'}, "
                f"pose {self.pose_topic or '-'}" + (f" ({self.pose_type})" if self.pose_type else ""))

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        reader = getattr(self, "_reader", None)
        lock = getattr(self, "_lock", None)
        if reader is None or lock is None:
            return
        with lock:
            self._reader = None
            try:
                reader.close()
            except Exception:  # noqa: BLE001 - closing a half-open reader
                pass

    def __enter__(self) -> "RosbagDataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
