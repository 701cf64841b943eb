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


@dataclass
class NodeConfig:
    """Settings of the ROS node that are not part of the mapping core."""

    map_frame: str = param("map", "Fixed frame of the map and of every map output (REP-105); "
                           "its z axis is up.")
    odom_frame: str = param("odom", "Odometry frame (REP-105). The node broadcasts map->odom; "
                            "empty: it broadcasts map->camera frame instead.")
    camera_frame: str = param("", "Camera optical frame; empty: the frame_id of the depth image "
                              "header.")
    publish_tf: bool = param(True, "Broadcast the map->odom (or map->camera) transform "
                             "(needs tf2_ros).")
    input_qos: str = param("reliable", "QoS of the image/camera_info subscriptions: reliable "
                           "(matches reliable publishers only; no loss over loopback) or "
                           "sensor_data (best effort, matches every publisher; large images can "
                           "be lost without transport tuning).", choices=INPUT_QOS)
    pose_topic_type: str = param("PoseStamped", "Message type on the 'pose' input.",
                                 choices=POSE_TOPIC_TYPES)
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
    web_view_port: int = param(0, "Serve a live 3D view (Rerun web viewer, offline) at "
                               "http://127.0.0.1:PORT from the node process, gRPC on PORT + 1 "
                               "(0 = off; needs pip install neural_mapping[view]).", unit="port",
                               lo=0, hi=65533)

    def to_flat(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            check_value(f, getattr(self, f.name))

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
