"""Write rosbag2 recordings of datasets: ``neural-mapping make-bag DATASET OUT``.

Any input :func:`~neural_mapping.datasets.open_dataset` understands (7-Scenes, TUM
RGB-D, ``synthetic``) becomes a rosbag2 folder (mcap by default, or sqlite3) with
the standard topics of an RGB-D camera driver, written with `rosbags` (pure Python,
no ROS installation):

===============================  ===========================================  ==========
topic                            type                                         per frame
===============================  ===========================================  ==========
``/camera/depth/camera_info``    sensor_msgs/CameraInfo (K, P = [K|0], D = 0)  1
``/camera/color/camera_info``    sensor_msgs/CameraInfo (same: registered)     1 (colour)
``/camera/depth/image_raw``      sensor_msgs/Image ``16UC1`` mm, 0 = invalid   1
                                 (``--depth-encoding 32FC1``: metres, NaN
                                 invalid, lossless)
``/camera/color/image_raw``      sensor_msgs/Image ``rgb8``                    1 (colour)
``/camera/pose``                 geometry_msgs/PoseStamped, ground truth       1 (pose)
                                 ``T_map_optical`` in frame ``map``
``/tf_static``                   tf2_msgs/TFMessage ``camera_link`` ->          once
                                 ``camera_color_optical_frame`` (REP-103
                                 optical rotation), QoS transient_local
===============================  ===========================================  ==========

Images carry ``frame_id = camera_color_optical_frame`` (depth is registered to
colour, as RealSense's ``aligned_depth_to_color``).  Header stamps and record
times are equal: the dataset timestamp plus ``time_offset_s``.  By default,
datasets whose clock starts near zero (7-Scenes and synthetic: frame / 30 s) are
shifted to ``EPOCH_OFFSET_S`` (2023-11-14T22:13:20Z) -- ROS treats time 0 as
"unset" (sim time, tf2's "latest") -- and wall-clock datasets (TUM) keep their
stamps; the offset used is stored in the bag's ``custom_data``
(``neural_mapping.time_offset_s``).  No ``/tf`` ground truth is written: the
mapping node publishes ``map -> camera`` itself, and a second source would fight it.

Realistic layout (what a robot records; ``--color-transport compressed``, ``--depth-transport
compressedDepth``, ``--poses tf``): colour as ``sensor_msgs/CompressedImage`` JPEG on
``/camera/color/image_raw/compressed``, depth as ``compressedDepth`` PNG (lossless, the
12-byte header of ``compressed_depth_image_transport``) on
``/camera/depth/image_raw/compressedDepth``, and instead of ``/camera/pose`` the robot's
``odom -> base_link`` on ``/tf`` at every frame (``--poses odom``: as ``nav_msgs/Odometry``
on ``/odom`` instead, child ``base_link``) plus the static mount ``base_link ->
camera_link`` (``MOUNT_XYZ_M``, pitched ``MOUNT_PITCH_DEG`` down) on ``/tf_static``: the
chain ``odom -> base_link -> camera_link -> camera_color_optical_frame`` is the dataset's
camera pose.

16UC1 depth is rounded to millimetres (7-Scenes is stored in mm, so it is exact
there; TUM's 0.2 mm units are rounded).  ``PoseStamped`` stores a quaternion, so the
pose is the nearest rotation of the dataset's matrix (7-Scenes matrices are off
from orthonormal by up to ~4e-4; the mapping's pose buffer orthonormalises them the
same way).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from neural_mapping.datasets import Dataset, DatasetError, open_dataset
from neural_mapping.io.bag_format import (COLOR_INFO_TOPIC, COLOR_TOPIC, DEPTH_INFO_TOPIC, DEPTH_TOPIC,
                                          POSE_TOPIC, TF_STATIC_TOPIC, TF_TOPIC, typestore)
from neural_mapping.geometry import inv_pose, pose_from_tq, rot_to_quat
from neural_mapping.io import compressed
from neural_mapping.types import CameraIntrinsics

log = logging.getLogger(__name__)

MAP_FRAME = "map"
CAMERA_FRAME = "camera_link"
OPTICAL_FRAME = "camera_color_optical_frame"
# camera_link (x forward, y left, z up) -> optical (z forward, x right, y down), REP-103
OPTICAL_ROTATION_XYZW = (-0.5, 0.5, -0.5, 0.5)
EPOCH_OFFSET_S = 1_700_000_000.0
STORAGES = ("mcap", "sqlite3")
COMPRESSED = "sensor_msgs/msg/CompressedImage"
DEPTH_ENCODINGS = ("16UC1", "32FC1")
ODOM_FRAME, BASE_FRAME = "odom", "base_link"
ODOM_TOPIC = "/odom"
MOUNT_XYZ_M = (0.20, 0.0, 0.35)      # base_link -> camera_link: 20 cm forward, 35 cm up
MOUNT_PITCH_DEG = 10.0               # looking 10 degrees down
COLOR_TRANSPORTS, DEPTH_TRANSPORTS, POSE_LAYOUTS = ("raw", "compressed"), ("raw", "compressedDepth"), ("topic", "tf", "odom")


def mount_transform() -> np.ndarray:
    """``T_base_link_camera_link`` of the realistic layout."""
    a = math.radians(MOUNT_PITCH_DEG) / 2
    return pose_from_tq(MOUNT_XYZ_M, (0.0, math.sin(a), 0.0, math.cos(a)))


def optical_transform() -> np.ndarray:
    """``T_camera_link_optical`` (REP-103 optical rotation)."""
    return pose_from_tq((0.0, 0.0, 0.0), OPTICAL_ROTATION_XYZW)


@dataclass
class BagSummary:
    path: Path
    storage: str
    frames: int
    messages: Dict[str, int] = field(default_factory=dict)
    time_offset_s: float = 0.0
    start_s: float = 0.0
    duration_s: float = 0.0
    wall_s: float = 0.0
    size_bytes: int = 0


# ------------------------------------------------------------------ messages
class _Msgs:
    """Builders of the rosbags message objects (typestore classes)."""

    def __init__(self, store):
        self.store = store
        T = store.types
        self.Time = T["builtin_interfaces/msg/Time"]
        self.Header = T["std_msgs/msg/Header"]
        self.Image = T["sensor_msgs/msg/Image"]
        self.CompressedImage = T["sensor_msgs/msg/CompressedImage"]
        self.CameraInfo = T["sensor_msgs/msg/CameraInfo"]
        self.RegionOfInterest = T["sensor_msgs/msg/RegionOfInterest"]
        self.PoseStamped = T["geometry_msgs/msg/PoseStamped"]
        self.Pose = T["geometry_msgs/msg/Pose"]
        self.Point = T["geometry_msgs/msg/Point"]
        self.Quaternion = T["geometry_msgs/msg/Quaternion"]
        self.Vector3 = T["geometry_msgs/msg/Vector3"]
        self.Transform = T["geometry_msgs/msg/Transform"]
        self.TransformStamped = T["geometry_msgs/msg/TransformStamped"]
        self.TFMessage = T["tf2_msgs/msg/TFMessage"]

    def header(self, ns: int, frame_id: str):
        return self.Header(stamp=self.Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000)),
                           frame_id=frame_id)

    def image(self, ns: int, frame_id: str, pixels: np.ndarray, encoding: str, big_endian: bool = False):
        h, w = pixels.shape[:2]
        row = np.ascontiguousarray(pixels).reshape(h, -1).view(np.uint8)
        return self.Image(header=self.header(ns, frame_id), height=int(h), width=int(w),
                          encoding=encoding, is_bigendian=int(big_endian), step=int(row.shape[1]),
                          data=row.reshape(-1))

    def camera_info(self, ns: int, frame_id: str, K: CameraIntrinsics):
        return self.CameraInfo(
            header=self.header(ns, frame_id), height=K.height, width=K.width,
            distortion_model="plumb_bob", d=np.zeros(5),
            k=np.array([K.fx, 0.0, K.cx, 0.0, K.fy, K.cy, 0.0, 0.0, 1.0]),
            r=np.eye(3).reshape(-1),
            p=np.array([K.fx, 0.0, K.cx, 0.0, 0.0, K.fy, K.cy, 0.0, 0.0, 0.0, 1.0, 0.0]),
            binning_x=0, binning_y=0,
            roi=self.RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))

    def compressed(self, ns: int, frame_id: str, fmt: str, data: bytes):
        return self.CompressedImage(header=self.header(ns, frame_id), format=fmt,
                                    data=np.frombuffer(data, np.uint8).copy())

    def transform(self, ns: int, parent: str, child: str, T: np.ndarray):
        return self.transform_stamped(ns, parent, child, T[:3, 3], rot_to_quat(T[:3, :3]))

    def odometry(self, ns: int, T: np.ndarray):
        T_ = self.store.types
        ps = self.pose_stamped(ns, ODOM_FRAME, T)
        zero = self.Vector3(x=0.0, y=0.0, z=0.0)
        return T_["nav_msgs/msg/Odometry"](
            header=ps.header, child_frame_id=BASE_FRAME,
            pose=T_["geometry_msgs/msg/PoseWithCovariance"](pose=ps.pose, covariance=np.zeros(36)),
            twist=T_["geometry_msgs/msg/TwistWithCovariance"](
                twist=T_["geometry_msgs/msg/Twist"](linear=zero, angular=zero), covariance=np.zeros(36)))

    def pose_stamped(self, ns: int, frame_id: str, T: np.ndarray):
        x, y, z = (float(v) for v in T[:3, 3])
        qx, qy, qz, qw = (float(v) for v in rot_to_quat(T[:3, :3]))
        return self.PoseStamped(header=self.header(ns, frame_id),
                                pose=self.Pose(position=self.Point(x=x, y=y, z=z),
                                               orientation=self.Quaternion(x=qx, y=qy, z=qz, w=qw)))

    def transform_stamped(self, ns: int, parent: str, child: str, t, q_xyzw):
        return self.TransformStamped(
            header=self.header(ns, parent), child_frame_id=child,
            transform=self.Transform(
                translation=self.Vector3(x=float(t[0]), y=float(t[1]), z=float(t[2])),
                rotation=self.Quaternion(x=float(q_xyzw[0]), y=float(q_xyzw[1]), z=float(q_xyzw[2]),
                                         w=float(q_xyzw[3]))))


def depth_pixels(depth: np.ndarray, encoding: str) -> np.ndarray:
    """float32 metres (0 / NaN invalid) -> ``16UC1`` uint16 mm (rounded, invalid 0) or
    ``32FC1`` float32 metres (invalid NaN), little endian."""
    d = np.asarray(depth)
    ok = np.isfinite(d) & (d > 0)
    if encoding == "16UC1":
        mm = np.rint(d.astype(np.float64) * 1000.0)
        return np.where(ok, np.clip(mm, 0, 65535), 0).astype("<u2")
    if encoding == "32FC1":
        return np.where(ok, d, np.nan).astype("<f4")
    raise ValueError(f"depth encoding {encoding!r} is not one of {DEPTH_ENCODINGS}")


def _qos(transient_local: bool = False, depth: int = 10):
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability,
                                    QosTime)
    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, depth, QosReliability.RELIABLE,
               QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
               zero, zero, QosLiveliness.AUTOMATIC, zero, False)


def _to_ns(t: float) -> int:
    """Seconds to integer nanoseconds, exact to the nanosecond for epoch-sized values (the
    fraction is rounded on its own, not ``t * 1e9`` with its ~256 ns float64 spacing)."""
    sec = math.floor(t)
    return int(sec) * 1_000_000_000 + int(round((t - sec) * 1e9))


def default_time_offset(ds: Dataset) -> float:
    """``EPOCH_OFFSET_S`` for datasets whose clock starts near zero, else 0."""
    ts = np.asarray(ds.timestamps, dtype=np.float64)
    return EPOCH_OFFSET_S if len(ts) and float(ts.min()) < 1e8 else 0.0


# ---------------------------------------------------------------------- writer
def make_bag(dataset: Union[str, Path, Dataset], out: Union[str, Path], *, storage: str = "mcap",
             max_frames: Optional[int] = None, stride: int = 1, depth_encoding: str = "16UC1",
             time_offset_s: Optional[float] = None, with_color: bool = True,
             dataset_kwargs: Optional[dict] = None, progress: bool = False,
             color_transport: str = "raw", depth_transport: str = "raw", poses: str = "topic",
             jpeg_quality: int = 90) -> BagSummary:
    """Write ``dataset`` (a path/name for :func:`open_dataset`, or an opened Dataset) as a
    rosbag2 folder ``out`` (must not exist).  See the module docstring for the topics;
    ``color_transport`` raw | compressed (JPEG, ``jpeg_quality``), ``depth_transport`` raw |
    compressedDepth (PNG), ``poses`` topic (``/camera/pose``) | tf (odom -> base_link + mount) |
    odom (``/odom`` Odometry of base_link + mount)."""
    from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    if depth_encoding not in DEPTH_ENCODINGS:
        raise ValueError(f"depth encoding must be one of {DEPTH_ENCODINGS}, got {depth_encoding!r}")
    for name, value, ok in (("color_transport", color_transport, COLOR_TRANSPORTS),
                            ("depth_transport", depth_transport, DEPTH_TRANSPORTS), ("poses", poses, POSE_LAYOUTS)):
        if value not in ok:
            raise ValueError(f"{name} must be one of {ok}, got {value!r}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists already; rosbag2 output must be a new folder")
    ds = dataset if isinstance(dataset, Dataset) else open_dataset(
        dataset, max_frames=max_frames or None, stride=stride, **(dataset_kwargs or {}))
    n = len(ds) if not (isinstance(dataset, Dataset) and max_frames) else min(len(ds), int(max_frames))
    offset = default_time_offset(ds) if time_offset_s is None else float(time_offset_s)
    if not math.isfinite(offset):
        raise ValueError(f"time_offset_s must be finite, got {offset}")

    store = typestore()
    m = _Msgs(store)
    t_start = time.perf_counter()
    writer = Writer(out, version=Writer.VERSION_LATEST,
                    storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
    writer.set_custom_data("neural_mapping.source", str(ds.name))
    writer.set_custom_data("neural_mapping.time_offset_s", repr(offset))
    writer.set_custom_data("neural_mapping.depth_encoding", depth_encoding)
    writer.set_custom_data("neural_mapping.layout", f"color {color_transport}, depth {depth_transport}, "
                           f"poses {poses}")
    counts: Dict[str, int] = {}
    first_ns = last_ns = None
    writer.open()
    try:
        conns = {}

        def conn(topic, msgtype, transient_local=False):
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=store,
                                                     offered_qos_profiles=[_qos(transient_local)])
            return conns[topic]

        def write(topic, msgtype, ns, msg, transient_local=False):
            writer.write(conn(topic, msgtype, transient_local), ns,
                         store.serialize_cdr(msg, msgtype))
            counts[topic] = counts.get(topic, 0) + 1

        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=n, unit="frame", desc=f"writing {out.name}", dynamic_ncols=True)
        K = ds.intrinsics
        prev_ns = -1
        offset_ns = _to_ns(offset)
        for i in range(n):
            f = ds[i]
            ns = _to_ns(f.timestamp) + offset_ns
            if ns < 0:
                raise ValueError(f"frame {i}: stamp {f.timestamp + offset:.9f} s is negative; pass a "
                                 "time offset")
            if ns <= prev_ns:
                raise ValueError(f"frame {i}: stamp {ns} ns does not increase (previous {prev_ns} ns)")
            prev_ns = ns
            if first_ns is None:
                first_ns = ns
                static = [m.transform(ns, CAMERA_FRAME, OPTICAL_FRAME, optical_transform())]
                if poses != "topic":
                    static.insert(0, m.transform(ns, BASE_FRAME, CAMERA_FRAME, mount_transform()))
                tf = m.TFMessage(transforms=static)
                write(TF_STATIC_TOPIC, "tf2_msgs/msg/TFMessage", ns, tf, transient_local=True)
            last_ns = ns
            write(DEPTH_INFO_TOPIC, "sensor_msgs/msg/CameraInfo", ns, m.camera_info(ns, OPTICAL_FRAME, K))
            px = depth_pixels(f.depth, depth_encoding)
            if depth_transport == "raw":
                write(DEPTH_TOPIC, "sensor_msgs/msg/Image", ns, m.image(ns, OPTICAL_FRAME, px, depth_encoding))
            else:
                write(DEPTH_TOPIC + "/compressedDepth", COMPRESSED, ns,
                      m.compressed(ns, OPTICAL_FRAME, *compressed.compress_depth(px, "png")))
            if with_color and f.color is not None:
                write(COLOR_INFO_TOPIC, "sensor_msgs/msg/CameraInfo", ns, m.camera_info(ns, OPTICAL_FRAME, K))
                if color_transport == "raw":
                    write(COLOR_TOPIC, "sensor_msgs/msg/Image", ns, m.image(ns, OPTICAL_FRAME, f.color, "rgb8"))
                else:
                    write(COLOR_TOPIC + "/compressed", COMPRESSED, ns, m.compressed(
                        ns, OPTICAL_FRAME, *compressed.compress_color(f.color, "jpeg", jpeg_quality)))
            if f.pose is not None and poses == "topic":
                write(POSE_TOPIC, "geometry_msgs/msg/PoseStamped", ns, m.pose_stamped(ns, MAP_FRAME, f.pose))
            elif f.pose is not None:  # odom -> base_link such that the chain is the camera pose
                # (the rotation as PoseStamped stores it: the quaternion of the dataset's matrix)
                T_cam = pose_from_tq(f.pose[:3, 3], rot_to_quat(f.pose[:3, :3]))
                T_odom_base = T_cam @ inv_pose(mount_transform() @ optical_transform())
                if poses == "tf":
                    write(TF_TOPIC, "tf2_msgs/msg/TFMessage", ns,
                          m.TFMessage(transforms=[m.transform(ns, ODOM_FRAME, BASE_FRAME, T_odom_base)]))
                else:
                    write(ODOM_TOPIC, "nav_msgs/msg/Odometry", ns, m.odometry(ns, T_odom_base))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    except BaseException:
        try:
            writer.abort()
        except (WriterError, OSError):
            pass
        raise
    writer.close()
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return BagSummary(path=out, storage=storage, frames=n, messages=counts, time_offset_s=offset,
                      start_s=(first_ns or 0) * 1e-9, duration_s=((last_ns or 0) - (first_ns or 0)) * 1e-9,
                      wall_s=time.perf_counter() - t_start, size_bytes=size)


def bag_topics(path) -> Dict[str, tuple]:
    """``{topic: (type, message count)}`` of a rosbag2 folder or file."""
    from rosbags.rosbag2 import Reader

    with Reader(Path(path)) as r:
        return {name: (info.msgtype, int(info.msgcount)) for name, info in r.topics.items()}


__all__ = ["make_bag", "BagSummary", "bag_topics", "depth_pixels", "default_time_offset", "DatasetError",
           "MAP_FRAME", "CAMERA_FRAME", "OPTICAL_FRAME", "EPOCH_OFFSET_S"]
