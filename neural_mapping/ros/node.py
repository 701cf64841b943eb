"""``mapping_node``: the ROS 2 front of :class:`neural_mapping.system.mapping_system.MappingSystem`.

Thin by design: callbacks decode and enqueue (``system.submit``); the tracking
and mapping threads do the work; publishers run on timers at their own rate
and only while someone is subscribed.

Inputs (relative, remappable): ``depth/image``, ``depth/camera_info``,
``color/image`` (optional), ``pose`` (type from ``pose_topic_type``; unused when
``pose_source`` is ``track``).  Outputs (private): ``~/pose``, ``~/odometry``,
``~/path``, ``/diagnostics``; the map outputs of :mod:`.outputs` (``~/mesh``,
``~/occupancy``, ``~/costmap``, ``~/esdf_slice``, ``~/occupied_voxels``); TF
``map -> odom`` (REP-105) or ``map -> camera`` when ``odom_frame`` is empty, if
tf2_ros is importable.  Services (std_srvs/Trigger): ``~/save_mesh``,
``~/save_map``, ``~/load_map``, ``~/reset``, ``~/save_occupancy``,
``~/republish_mesh``; file paths come from ``output_dir``, never from the request.

Diagnostics (``/diagnostics``, one status with key/values): the core's counters
(``received``, ``integrated``, ``poses``, ``dropped_<reason>``, ``pose_*`` of the pose
buffer, ``latency_{pose,integrate}_p50/p95_ms`` measured from submit), the node's input
drops ``input_dropped_<reason>`` (a message that never became a frame: decode errors, bad
camera_info, bad pose messages, pairing), and ``latency_stamp_{pose,integrate}_p50/p95_ms``:
from the depth header stamp to the pose publish / the end of integration on the node's
clock (includes transport and decoding; meaningful when the stamps come from the same
clock, e.g. a live camera, or a bag with ``use_sim_time``).
Each drop reason is logged once (warning); the counts are in the diagnostics.

Shutdown (SIGINT / ExternalShutdownException): intake stops, the tracking and mapping
threads are joined (with a timeout), optional save, then "stopped: threads joined" is
logged and the process exits 0 (1 if a thread did not stop or a worker failed).
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
from pathlib import Path
from typing import Deque, Dict, Optional, Tuple

import numpy as np

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry, Path as PathMsg
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger

from neural_mapping.system.mapping_system import MappingSystem, PoseResult
from neural_mapping.types import CameraIntrinsics, RGBDFrame
from neural_mapping.ros import conversions as conv
from neural_mapping.config import MappingConfig
from neural_mapping.ros.outputs import MapOutputs, RateTimer
from neural_mapping.ros.params import (NODE_NAME, NodeConfig, config_from_node,
                                       declare_config_parameters, format_effective_config,
                                       install_parameter_validation, node_config_from_node)

MAP_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
RELIABLE_INPUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)
# Poses are tiny and each one matters for interpolation: a deep reliable queue so a busy
# executor does not overwrite them in the reader history.  Measured with Fast DDS's default
# transports (bench/bench_ros.py node): next to 30 Hz images, a lost pose datagram is
# repaired only after the writer's next heartbeat and the reliable reader holds back every
# newer pose meanwhile, so poses arrive 0.3-3 s late and frames expire waiting for them
# (pose_wait_timeout_s).  Best effort does not help (the lost poses are then gone, and
# tests sending one frame at a time lose it).  The fix is the transport:
# config/fastdds_shm.xml (shared memory, 16 MB segments) on both ends.
POSE_INPUT_QOS = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)
PENDING_DEPTH = 8      # depth images waiting for their color partner
PENDING_COLOR = 8
COLOR_SILENCE_S = 1.0  # no color for this long (wall clock): depth goes on alone
PATH_PERIOD_S = 0.5    # ~/path: at most one message per period (the last change always goes out)
LATENCY_WINDOW = 1000  # samples kept for the stamp-based latency percentiles


class MappingNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        declare_config_parameters(self)
        self.cfg = config_from_node(self)
        self.ncfg = node_config_from_node(self)
        self.get_logger().info("effective configuration:\n" + format_effective_config(self.cfg, self.ncfg))
        self.output_dir = Path(self.cfg.run.output_dir)

        self.drops: Dict[str, int] = collections.Counter()
        self._drop_logged: set = set()
        self._lock = threading.Lock()
        self._intrinsics: Optional[CameraIntrinsics] = None
        self._intrinsics_size: Optional[Tuple[int, int]] = None
        self._depths: Deque = collections.deque()
        self._colors: Deque = collections.deque()
        self._last_color_wall = 0.0
        self._frame_index = 0
        self._camera_frame = self.ncfg.camera_frame
        self._path = PathMsg()
        self._path.header.frame_id = self.ncfg.map_frame
        self._last_path_pub = 0.0
        self._path_dirty = False
        self._closing = False
        # frame index -> depth stamp (s) until the frame is integrated (or known dropped)
        self._stamps: Dict[int, float] = {}
        self._lat_stamp: Dict[str, Deque[float]] = {
            "pose": collections.deque(maxlen=LATENCY_WINDOW),
            "integrate": collections.deque(maxlen=LATENCY_WINDOW)}

        self.system = MappingSystem(self.cfg, on_pose=self._on_pose,
                                    on_integrated=self._on_integrated)

        # ---- publishers (private names)
        self.pub_pose = self.create_publisher(PoseStamped, "~/pose", 10)
        self.pub_odom = self.create_publisher(Odometry, "~/odometry", 10)
        self.pub_path = self.create_publisher(PathMsg, "~/path", MAP_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.tf_broadcaster = None
        self._tf_unavailable = False
        self._ensure_tf_broadcaster()

        # ---- subscriptions (relative names)
        in_qos = qos_profile_sensor_data if self.ncfg.input_qos == "sensor_data" else RELIABLE_INPUT_QOS
        self.create_subscription(Image, "depth/image", self._on_depth, in_qos)
        self.create_subscription(CameraInfo, "depth/camera_info", self._on_camera_info, in_qos)
        self.create_subscription(Image, "color/image", self._on_color, in_qos)
        if self.cfg.run.pose_source != "track":
            self.create_subscription(conv.pose_msg_type(self.ncfg.pose_topic_type), "pose",
                                     self._on_pose_msg, POSE_INPUT_QOS)

        # ---- services
        self.create_service(Trigger, "~/save_mesh", self._srv_save_mesh)
        self.create_service(Trigger, "~/save_map", self._srv_save_map)
        self.create_service(Trigger, "~/load_map", self._srv_load_map)
        self.create_service(Trigger, "~/reset", self._srv_reset)

        # ---- timers for heavy outputs
        self.create_timer(PATH_PERIOD_S, self._on_path_timer)
        # mesh, occupancy, costmap, ESDF slice, occupied voxels (own timers, only when subscribed)
        self.outputs = MapOutputs(self, self.system, self.cfg, self.ncfg, self.output_dir)
        self.diagnostics_timer = RateTimer(self, self._publish_diagnostics,
                                           self.ncfg.diagnostics_rate_hz)
        # runtime changes of RUNTIME_TUNABLE parameters: validated as a whole, core values
        # applied by the mapping thread (system.reconfigure), node values here
        install_parameter_validation(self, self._apply_parameters)
        self.get_logger().info(
            f"mapping on {self.system.device} with pose_source={self.cfg.run.pose_source}, "
            f"voxel_size_m={self.cfg.grid.voxel_size_m}, input_qos={self.ncfg.input_qos}")

    def _ensure_tf_broadcaster(self) -> None:
        if not self.ncfg.publish_tf or self.tf_broadcaster is not None or self._tf_unavailable:
            return
        try:
            from tf2_ros import TransformBroadcaster  # not on PyPI: optional
            self.tf_broadcaster = TransformBroadcaster(self)
        except ImportError:
            self._tf_unavailable = True
            self.get_logger().warning(
                "tf2_ros is not importable: no TF is broadcast (poses are still published on "
                "~/pose, ~/odometry and ~/path)")

    def _apply_parameters(self, cfg: MappingConfig, ncfg: NodeConfig, names) -> None:
        """Apply a validated runtime parameter change (raising rejects it, with the reason)."""
        core = {k: v for k, v in cfg.to_flat().items() if k in names}
        if core:
            self.system.reconfigure(core)  # ValueError: rejected; else the next frame uses it
            self.cfg = self.outputs.cfg = cfg
        if set(names) - set(core):
            self.ncfg = ncfg
            self.outputs.apply_node_config(ncfg)
            self.diagnostics_timer.set_rate(ncfg.diagnostics_rate_hz)
            self._ensure_tf_broadcaster()
        self.get_logger().info("parameters changed: " + ", ".join(
            f"{k}={v!r}" for k, v in {**cfg.to_flat(), **ncfg.to_flat()}.items() if k in names))

    # ================================================================ drops
    def _drop(self, reason: str, message: str) -> None:
        with self._lock:
            first = self._count_drop(reason)
        if first:  # once per reason; the counters are in diagnostics
            self._log_drop(reason, message)

    def _count_drop(self, reason: str) -> bool:
        """Count a drop (caller holds ``_lock``); True the first time for this reason."""
        self.drops[reason] += 1
        first = reason not in self._drop_logged
        self._drop_logged.add(reason)
        return first

    def _log_drop(self, reason: str, message: str) -> None:
        self.get_logger().warning(f"dropping input ({reason}): {message} "
                                  "[logged once per reason; counts in /diagnostics as "
                                  f"input_dropped_{reason}]")

    # ============================================================ callbacks
    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            intr = conv.intrinsics_from_camera_info(msg)
        except conv.DecodeError as e:
            self._drop(e.reason, str(e))
            return
        self._intrinsics = intr
        if not self._camera_frame and msg.header.frame_id:
            self._camera_frame = msg.header.frame_id
        self._pair()  # depth images may be waiting for their first camera_info

    def _decode_image(self, msg: Image, decode) -> Optional[Tuple[float, np.ndarray]]:
        """``(stamp_s, decode(msg))``, or None after counting the drop if it does not decode."""
        try:
            return conv.stamp_to_sec(msg.header.stamp), decode(msg)
        except conv.DecodeError as e:
            self._drop(e.reason, str(e))
            return None

    def _on_depth(self, msg: Image) -> None:
        decoded = self._decode_image(msg, conv.depth_from_msg)
        if decoded is None:
            return
        if not self._camera_frame and msg.header.frame_id:
            self._camera_frame = msg.header.frame_id
        first = None
        with self._lock:
            self._depths.append(decoded)
            while len(self._depths) > PENDING_DEPTH:
                self._depths.popleft()
                reason = "no_camera_info" if self._intrinsics is None else "depth_unpaired"
                if self._count_drop(reason):
                    first = reason
        if first == "no_camera_info":
            self._log_drop(first, f"no valid message on {self.resolve_topic_name('depth/camera_info')} "
                           f"yet: depth images wait for it ({PENDING_DEPTH} at most)")
        elif first is not None:
            self._log_drop(first, f"more than {PENDING_DEPTH} depth images wait for a color "
                           "image with a matching stamp (color_sync_tolerance_s)")
        self._pair()

    def _on_color(self, msg: Image) -> None:
        decoded = self._decode_image(msg, conv.color_from_msg)
        if decoded is None:
            return
        with self._lock:
            self._last_color_wall = time.monotonic()
            self._colors.append(decoded)
            while len(self._colors) > PENDING_COLOR:
                self._colors.popleft()
        self._pair()

    def _pair(self) -> None:
        """Pair depth with color by stamp (within color_sync_tolerance_s) and submit."""
        tol = self.ncfg.color_sync_tolerance_s
        ready = []
        intr = self._intrinsics
        if intr is None:  # depth waits (bounded) for the first camera_info
            return
        with self._lock:
            color_alive = time.monotonic() - self._last_color_wall < COLOR_SILENCE_S
            while self._depths:
                stamp, depth = self._depths[0]
                best = None
                for k, (cs, _) in enumerate(self._colors):
                    if abs(cs - stamp) <= tol and (best is None or abs(cs - stamp) < abs(self._colors[best][0] - stamp)):
                        best = k
                if best is not None:
                    color = self._colors[best][1]
                    for _ in range(best + 1):  # older colors can no longer match newer depth
                        self._colors.popleft()
                    self._depths.popleft()
                    ready.append((stamp, depth, intr, color))
                    continue
                newest_color = self._colors[-1][0] if self._colors else -np.inf
                if not color_alive or newest_color > stamp + tol:
                    self._depths.popleft()  # its partner will not come: depth alone
                    if color_alive:
                        self.drops["color_unmatched_depth_used_alone"] += 1
                    ready.append((stamp, depth, intr, None))
                    continue
                break
        for stamp, depth, intr, color in ready:
            self._submit(stamp, depth, intr, color)

    def _submit(self, stamp, depth, intr, color) -> None:
        if (intr.width, intr.height) != (depth.shape[1], depth.shape[0]):
            self._drop(conv.SIZE_MISMATCH,
                       f"depth image is {depth.shape[1]}x{depth.shape[0]} but depth/camera_info says "
                       f"{intr.width}x{intr.height}")
            return
        if color is not None:
            try:
                conv.check_registered(depth.shape, color.shape)
            except conv.DecodeError as e:
                self._drop(e.reason, str(e))
                color = None
        try:
            frame = RGBDFrame(depth, intr, color=color, timestamp=stamp, index=self._frame_index)
        except (TypeError, ValueError) as e:
            self._drop("bad_frame", str(e))
            return
        with self._lock:
            self._stamps[self._frame_index] = stamp
            if len(self._stamps) > 4 * LATENCY_WINDOW:  # frames dropped inside the core
                for k in sorted(self._stamps)[:len(self._stamps) - 2 * LATENCY_WINDOW]:
                    del self._stamps[k]
        self._frame_index += 1
        self.system.submit(frame)  # realtime mode: never blocks, drops oldest

    def _on_pose_msg(self, msg) -> None:
        try:
            sample = conv.pose_sample_from_msg(msg, self.ncfg.pose_topic_type)
        except conv.DecodeError as e:
            self._drop(e.reason, str(e))
            return
        # (t, q) as received: the pose buffer checks the quaternion norm itself
        if not self.system.submit_pose(sample.stamp, sample.tq):
            self._drop(conv.BAD_POSE, "pose rejected by the pose buffer (non-finite, bad quaternion, "
                                      "non-rigid or older than the kept window)")

    # ============================================================ outputs
    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_integrated(self, index: int, version: int) -> None:
        """Called by the mapping thread after each integration."""
        with self._lock:
            stamp = self._stamps.pop(index, None)
        if stamp is not None:
            self._lat_stamp["integrate"].append(self._now_s() - stamp)

    def _on_pose(self, result: PoseResult) -> None:
        """Called by the tracking thread for every frame's pose."""
        if not result.ok:
            with self._lock:
                self._stamps.pop(result.index, None)  # it will not be integrated
            return
        if self._closing or not self.context.ok():
            return  # shutting down: the publishers may already be invalid
        try:
            self._publish_pose(result)
        except Exception:  # noqa: BLE001 - a pose output never kills the tracking thread
            if self._closing or not self.context.ok():
                return
            raise
        self._lat_stamp["pose"].append(self._now_s() - result.stamp)

    def _publish_pose(self, result: PoseResult) -> None:
        stamp = conv.sec_to_stamp(result.stamp)
        T = result.T_world_cam
        ps = conv.pose_stamped_msg(T, stamp, self.ncfg.map_frame)
        self.pub_pose.publish(ps)
        self.pub_odom.publish(conv.odometry_msg(T, stamp, self.ncfg.map_frame,
                                                self._camera_frame or "camera"))
        with self._lock:
            conv.path_append(self._path, ps, self.ncfg.path_max_poses)
            self._path_dirty = True
            if time.monotonic() - self._last_path_pub > PATH_PERIOD_S:
                self._publish_path_locked()
        if self.tf_broadcaster is not None and self.ncfg.publish_tf:
            if self.ncfg.odom_frame and self.cfg.run.pose_source != "track":
                corr = result.T_correction if result.T_correction is not None else np.eye(4)
                tf = conv.transform_stamped_msg(corr, stamp, self.ncfg.map_frame, self.ncfg.odom_frame)
            else:
                tf = conv.transform_stamped_msg(T, stamp, self.ncfg.map_frame,
                                                self._camera_frame or "camera")
            self.tf_broadcaster.sendTransform(tf)

    def _publish_path_locked(self) -> None:
        """Publish ~/path if it changed (caller holds ``_lock``).  At most every
        PATH_PERIOD_S from the pose callback; the timer sends the last change."""
        self._last_path_pub = time.monotonic()
        if self._path_dirty and self.pub_path.get_subscription_count() > 0:
            self.pub_path.publish(self._path)
            self._path_dirty = False

    def _on_path_timer(self) -> None:
        with self._lock:
            if self._path_dirty and time.monotonic() - self._last_path_pub >= PATH_PERIOD_S:
                self._publish_path_locked()

    def _publish_diagnostics(self) -> None:
        stats = self.system.stats()
        with self._lock:
            # input dropped before it became a frame (decode errors, pairing); the core's own
            # drops are the "dropped_*" keys
            stats.update({f"input_dropped_{k}": v for k, v in self.drops.items()})
            stats.update({f"output_{k}": v for k, v in self.outputs.stats.items()})
            for k, v in self._lat_stamp.items():
                if v:
                    arr = np.asarray(v)
                    stats[f"latency_stamp_{k}_p50_ms"] = float(np.percentile(arr, 50) * 1e3)
                    stats[f"latency_stamp_{k}_p95_ms"] = float(np.percentile(arr, 95) * 1e3)
        status = DiagnosticStatus()
        status.name = f"{self.get_name()}: mapping"
        status.hardware_id = str(self.system.device)
        latest = self.system.latest_pose()
        if latest is not None and latest.status == "lost":
            status.level, status.message = DiagnosticStatus.WARN, "tracking lost"
        else:
            status.level, status.message = DiagnosticStatus.OK, "mapping"
        status.values = [KeyValue(key=str(k), value=f"{v:.3f}" if isinstance(v, float) else str(v))
                         for k, v in sorted(stats.items())]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [status]
        self.pub_diag.publish(arr)

    # ============================================================ services
    def _service(self, response, fn):
        try:
            response.message = fn()
            response.success = True
        except Exception as e:  # a service never kills the node
            response.success = False
            response.message = f"{type(e).__name__}: {e}"
            self.get_logger().error(response.message)
        return response

    def _save_mesh(self) -> str:
        from neural_mapping.products.meshing import write_ply
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / "mesh.ply"
        mesh = self.system.mesh()
        write_ply(mesh, path)
        return f"wrote {path} ({len(mesh.vertices)} vertices, {len(mesh.triangles)} triangles)"

    def _srv_save_mesh(self, request, response):
        return self._service(response, self._save_mesh)

    def _srv_save_map(self, request, response):
        def do():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            path = self.output_dir / "map.pt"
            self.system.save(path)
            return f"wrote {path}"
        return self._service(response, do)

    def _srv_load_map(self, request, response):
        def do():
            path = self.output_dir / "map.pt"
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist (save_map writes it)")
            self.system.load(path)
            self.outputs.reset()
            return f"loaded {path}"
        return self._service(response, do)

    def _srv_reset(self, request, response):
        def do():
            self.system.reset()
            with self._lock:
                self._path.poses.clear()
                self._path_dirty = True
            self.outputs.reset()
            return "map and trajectory cleared"
        return self._service(response, do)

    # ============================================================ shutdown
    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop intake, join the threads (``TimeoutError`` if one does not stop), optionally
        save; logs "stopped: threads joined" on success."""
        self._closing = True
        try:
            self.system.close(timeout=timeout)
            self._log_late("info", f"stopped: threads joined ({self.system.frames_integrated} "
                           f"frames in the map, {self.system.stats().get('received', 0)} received)")
        finally:
            if self.ncfg.save_on_shutdown:
                try:
                    self._log_late("info", self._save_mesh())
                    self.output_dir.mkdir(parents=True, exist_ok=True)
                    self.system.save(self.output_dir / "map.pt")
                except Exception as e:
                    self._log_late("error", f"save on shutdown failed: {e}")

    def _log_late(self, level: str, message: str) -> None:
        """Log during shutdown: after SIGINT the context is shut down and the logger's
        /rosout publisher is invalid (rcl would complain on every message): stderr then."""
        if self.context.ok():
            getattr(self.get_logger(), level)(message)
        else:
            print(f"[{level.upper()}] [{self.get_name()}]: {message}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    rclpy.init(args=argv)
    node = None
    code = 0
    try:
        node = MappingNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as e:  # configuration errors: clear message, non-zero exit
        print(f"mapping_node: {e}", file=sys.stderr)
        code = 1
    finally:
        if node is not None:
            try:
                node.shutdown()
            except Exception as e:
                print(f"mapping_node: shutdown: {e}", file=sys.stderr)
                code = code or 1
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
