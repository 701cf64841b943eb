"""Settings of the ROS node itself (:class:`NodeConfig`: frames, QoS, pose message type,
output rates), the core defaults the node starts from (:func:`node_core_defaults`) and the
parameters that may change at run time (:data:`RUNTIME_TUNABLE`).  No ROS import: usable
offline (launch file checks, YAML presets).  :mod:`.params` turns these into ROS parameters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional

from neural_mapping.config import MappingConfig, check_value, coerce, param

POSE_TOPIC_TYPES = ("PoseStamped", "Odometry", "TransformStamped")
INPUT_QOS = ("reliable", "sensor_data")
POSE_INPUTS = ("topic", "tf")
DEPTH_TRANSPORTS = ("raw", "compressed", "compressedDepth")  # image_transport names
COLOR_TRANSPORTS = ("raw", "compressed")


@dataclass
class NodeConfig:
    """Settings of the ROS node that are not part of the mapping core."""

    map_frame: str = param("map", "Fixed frame of the map and of every map output (REP-105); "
                           "its z axis is up.")
    odom_frame: str = param(
        "odom", "Odometry frame (REP-105): the node broadcasts map->odom only (pose_source track: "
        "from the TF lookup odom->camera at each stamp; a hand-held camera whose driver publishes "
        "camera_link->optical: camera_link). Empty: map-> the top of the camera frame's TF tree "
        "(the camera frame if nothing parents it). No frame gets a second parent.")
    camera_frame: str = param("", "Camera optical frame; empty: the frame_id of the depth image "
                              "header.")
    publish_tf: bool = param(True, "Broadcast the map->odom transform (see odom_frame; needs "
                             "tf2_ros).")
    input_qos: str = param("reliable", "QoS of the image/camera_info subscriptions: reliable "
                           "(matches reliable publishers only; no loss over loopback) or "
                           "sensor_data (best effort, matches every publisher; large images can "
                           "be lost without transport tuning).", choices=INPUT_QOS)
    pose_topic_type: str = param("PoseStamped", "Message type on the 'pose' input.",
                                 choices=POSE_TOPIC_TYPES)
    pose_input: str = param(
        "topic", "Where external poses come from: topic (the 'pose' input, of type pose_topic_type) "
        "or tf (the depth image's frame in odom_frame at the depth stamp, through tf2_ros: a ROS 2 "
        "install; never extrapolated).", choices=POSE_INPUTS)
    camera_mount_xyz_m_qxyzw: str = param(
        "", "Pose of the depth optical frame in the frame the 'pose' input is of (e.g. base_link of "
        "nav_msgs/Odometry): 'x y z qx qy qz qw' (m, unit quaternion; static_transform_publisher "
        "order). Empty: the pose input is the depth frame's own pose.")
    camera_mount_frame: str = param(
        "", "Frame camera_mount_xyz_m_qxyzw is relative to (e.g. base_link); a pose message whose "
        "child_frame_id differs is dropped (pose_frame_mismatch). Empty: not checked.")
    depth_transport: str = param(
        "raw", "image_transport of the depth input: raw (Image on depth/image), compressedDepth or "
        "compressed (CompressedImage on depth/image/<transport>).", choices=DEPTH_TRANSPORTS)
    color_transport: str = param(
        "raw", "image_transport of the color input: raw (Image on color/image) or compressed "
        "(JPEG/PNG CompressedImage on color/image/compressed).", choices=COLOR_TRANSPORTS)
    color_sync_tolerance_s: float = param(
        0.02, "Largest |depth stamp - color stamp| for a depth and a color image to be paired.",
        unit="s", lo=0.0, hi=1.0)
    mesh_rate_hz: float = param(1.0, "Rate of ~/mesh updates (only while subscribed; 0 = off).",
                                unit="Hz", lo=0.0, hi=100.0)
    mesh_max_mbytes_per_update: float = param(
        8.0, "Byte budget of one ~/mesh update (dirty blocks beyond it wait for the next one, "
        "oldest first).", unit="MB", lo=0.01, hi=1000.0)
    occupancy_rate_hz: float = param(1.0, "Rate of ~/occupancy updates (only while subscribed; "
                                     "0 = off).", unit="Hz", lo=0.0, hi=100.0)
    occupied_voxels_rate_hz: float = param(0.5, "Rate of ~/occupied_voxels updates (only while "
                                           "subscribed; 0 = off).", unit="Hz", lo=0.0, hi=100.0)
    diagnostics_rate_hz: float = param(1.0, "Rate of diagnostics (counters, drops per reason, "
                                       "latency); 0 = off.", unit="Hz", lo=0.0, hi=100.0)
    path_max_poses: int = param(10000, "Poses kept in ~/path (oldest dropped; 0 = unbounded).",
                                unit="poses", lo=0, hi=10_000_000)
    save_on_shutdown: bool = param(False, "Save mesh and map to output_dir on a clean shutdown.")
    clock_jump_threshold_s: float = param(
        1.0, "A frame or pose stamp this much older than the last one is a backward clock jump "
        "(a bag replayed with --loop, sim time reset): pending inputs and pre-jump poses are "
        "cleared, the map kept or reset (clock_jump_reset_map), counted (clock_jumps). Smaller "
        "steps back are out-of-order input: dropped, counted (input_dropped_stale_stamp).",
        unit="s", lo=0.0, hi=1e9)
    worker_failure: str = param(
        "exit", "When the tracking or mapping thread dies (reported on /diagnostics as ERROR and "
        "logged either way): exit (the process exits 1, for a supervisor to restart) or restart "
        "(new threads on the same map).", choices=("exit", "restart"))
    clock_jump_reset_map: bool = param(False, "On a backward clock jump clear the map (else "
                                       "keep mapping into it).")
    web_view_port: int = param(0, "Serve a live 3D view (Rerun web viewer, offline) at "
                               "http://127.0.0.1:PORT from the node process, gRPC on PORT + 1 "
                               "(0 = off; needs pip install neural_mapping[view]).", unit="port",
                               lo=0, hi=65533)

    def to_flat(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            check_value(f, getattr(self, f.name))
        from neural_mapping.io.tf_tree import parse_mount
        parse_mount(self.camera_mount_xyz_m_qxyzw)  # ValueError with the reason
        if not self.map_frame:
            raise ValueError("map_frame must not be empty")
        for name in ("odom_frame", "camera_frame"):  # map -> map: a loop in TF
            if getattr(self, name).lstrip("/") == self.map_frame.lstrip("/"):
                raise ValueError(f"{name} {getattr(self, name)!r} is map_frame: the node broadcasts "
                                 f"map_frame -> odom_frame, which must be two frames")
        # map -> camera would give the camera frame a second parent (its robot's TF has one)
        if not self.odom_frame and (self.pose_input == "tf" or self.camera_mount_xyz_m_qxyzw):
            raise ValueError("pose_input tf and camera_mount_xyz_m_qxyzw need odom_frame (the frame "
                             "the robot's poses are in): the node then broadcasts map -> odom only")

    @classmethod
    def from_flat(cls, values: Dict[str, Any], base: Optional["NodeConfig"] = None) -> "NodeConfig":
        index = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise ValueError(f"unknown node parameter(s) {unknown}; known: {sorted(index)}")
        cfg = dataclasses.replace(base) if base is not None else cls()
        for name, value in values.items():
            setattr(cfg, name, coerce(index[name], value))
        cfg.validate()
        return cfg


# The node maps a live stream: realtime sync (callbacks never block, full queues drop their
# oldest item, the trajectory is bounded).  Every other core default is the core's own.
NODE_CORE_DEFAULTS = {"sync_mode": "realtime"}


def node_core_defaults() -> MappingConfig:
    """The core config the node starts from: :class:`MappingConfig` defaults with
    :data:`NODE_CORE_DEFAULTS` (what ``config/default.yaml`` lists)."""
    return MappingConfig.from_flat(dict(NODE_CORE_DEFAULTS))


# Parameters that may change while the node runs; every other one is declared read_only
# (structure of the map, threads, topics and frames are fixed at start-up).
RUNTIME_TUNABLE = frozenset({
    "depth_min_m", "depth_max_m", "max_weight", "integrate_color", "pose_wait_timeout_s",
    "color_sync_tolerance_s", "mesh_rate_hz", "mesh_max_mbytes_per_update", "occupancy_rate_hz",
    "occupied_voxels_rate_hz", "diagnostics_rate_hz", "path_max_poses", "save_on_shutdown",
    "publish_tf",
})
