"""``mapping_node``: the ROS 2 front of :class:`neural_mapping.system.mapping_system.MappingSystem`.

Thin by design: callbacks decode and enqueue (``system.submit``); the tracking
and mapping threads do the work; publishers run on timers at their own rate
and only while someone is subscribed.

Inputs (relative, remappable; :mod:`.inputs`): ``depth/image``, ``depth/camera_info``,
``color/image`` (optional), ``pose`` (type from ``pose_topic_type``; unused when
``pose_source`` is ``track``).  Outputs (private): ``~/pose``, ``~/odometry``,
``~/path``, ``/diagnostics``; the map outputs of :mod:`.outputs` (``~/mesh``,
``~/occupancy``, ``~/costmap``, ``~/esdf_slice``, ``~/occupied_voxels``); TF
``map -> odom`` (REP-105), or ``map ->`` the top of the camera's TF tree when ``odom_frame``
is empty, if tf2_ros is importable (:mod:`.tf_out`: no frame gets a second parent).
Services (std_srvs/Trigger): ``~/save_mesh``,
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

Runtime parameters (``ros2 param set``; the writable ones are ``params.RUNTIME_TUNABLE``):
a change is validated with the whole config (ranges, choices, ``depth_min_m < depth_max_m``)
and rejected with the reason if invalid; accepted core values go to
``system.reconfigure`` (applied by the mapping thread before the next integration), node
values to the timers, the mesh byte budget and TF.

Shutdown (SIGINT / ExternalShutdownException): intake stops, the tracking and mapping
threads are joined (with a timeout), optional save, then "stopped: threads joined" is
logged and the process exits 0 (1 if a thread did not stop or a worker failed).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry, Path as PathMsg
from geometry_msgs.msg import PoseStamped
from rclpy.event_handler import PublisherEventCallbacks
from rclpy.node import Node
from std_srvs.srv import Trigger

from neural_mapping.system.mapping_system import MappingSystem, PoseResult
from neural_mapping.system.paths import output_path
from neural_mapping.system.stage_times import StageTimes
from neural_mapping.ros import conversions as conv
from neural_mapping.config import MappingConfig
from neural_mapping.ros.faults import WorkerWatch
from neural_mapping.ros.inputs import FrameInputs
from neural_mapping.ros.outputs import MAP_QOS, MapOutputs, RateTimer
from neural_mapping.ros.tf_out import TfOutput
from neural_mapping.ros.params import (NODE_NAME, NodeConfig, config_from_node,
                                       declare_config_parameters, format_effective_config,
                                       install_parameter_validation, node_config_from_node)

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

        self._lock = threading.Lock()  # path and latency samples
        self._path = PathMsg()
        self._path.header.frame_id = self.ncfg.map_frame
        self._last_path_pub = 0.0
        self._path_dirty = False
        self._closing = False
        self._lat_stamp = StageTimes(("pose", "integrate"), LATENCY_WINDOW)
        self._publish_times = StageTimes(("publish_pose",), LATENCY_WINDOW)  # on the tracking thread

        self.system = MappingSystem(self.cfg, on_pose=self._on_pose,
                                    on_integrated=self._on_integrated)

        # ---- publishers (private names)
        self.pub_pose = self.create_publisher(PoseStamped, "~/pose", 10)
        self.pub_odom = self.create_publisher(Odometry, "~/odometry", 10)
        self.pub_path = self.create_publisher(PathMsg, "~/path", MAP_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # ---- subscriptions (relative names): decode, pair, submit
        self.inputs = FrameInputs(self, self.system)
        # TF without a second parent for any frame (rule in ros/tf_out.py, said once here)
        self.tf_out = TfOutput(self, getattr(self.inputs.tf_poses, "buffer", None))

        # ---- services
        self.create_service(Trigger, "~/save_mesh", self._srv_save_mesh)
        self.create_service(Trigger, "~/save_map", self._srv_save_map)
        self.create_service(Trigger, "~/load_map", self._srv_load_map)
        self.create_service(Trigger, "~/reset", self._srv_reset)

        # ---- timers for heavy outputs
        self.create_timer(PATH_PERIOD_S, self._on_path_timer)
        # mesh, occupancy, costmap, ESDF slice, occupied voxels (own timers, only when subscribed)
        self.outputs = MapOutputs(self, self.system, self.cfg, self.ncfg, self.output_dir)
        self.faults = WorkerWatch(self)  # a dead worker: ERROR on /diagnostics, exit or restart
        self.diagnostics_timer = RateTimer(self, self._publish_diagnostics,
                                           self.ncfg.diagnostics_rate_hz)
        # live 3D view in the browser (web_view_port > 0): its own thread, never the executor's
        from neural_mapping.view.session import open_node_view
        self.web_view = open_node_view(self.ncfg.web_view_port, self.cfg, self.system,
                                       self.get_logger().info, self.get_logger().warning)
        # runtime changes of RUNTIME_TUNABLE parameters: validated as a whole, core values
        # applied by the mapping thread (system.reconfigure), node values here
        install_parameter_validation(self, self._apply_parameters)
        self.get_logger().info(
            f"mapping on {self.system.device} with pose_source={self.cfg.run.pose_source}, "
            f"voxel_size_m={self.cfg.grid.voxel_size_m}, input_qos={self.ncfg.input_qos}")

    def create_publisher(self, *args, **kwargs):
        """Every output (TF and rclpy's own included) without rclpy's default QoS-event
        handlers: each publisher added two waitables that the executor walks in Python on
        every wake-up (several per frame; per-spin cost halved without them, measured with
        this node's 10 publishers).  An incompatible subscriber still warns on its side; the
        inputs keep their handlers (a camera whose QoS does not match is reported here)."""
        kwargs.setdefault("event_callbacks", PublisherEventCallbacks(use_default_callbacks=False))
        return super().create_publisher(*args, **kwargs)

    def _apply_parameters(self, cfg: MappingConfig, ncfg: NodeConfig, names) -> None:
        """Apply a validated runtime parameter change (raising rejects it, with the reason)."""
        if not names:  # rclpy's own parameters (use_sim_time)
            return
        core = {k: v for k, v in cfg.to_flat().items() if k in names}
        if core:
            # ValueError: rejected; else queued for the mapping thread, which applies it before
            # the next frame (the executor does not wait for an integration)
            self.system.reconfigure(core, wait=False)
            self.cfg = self.outputs.cfg = cfg
        if set(names) - set(core):
            self.ncfg = ncfg
            self.outputs.apply_node_config(ncfg)
            self.diagnostics_timer.set_rate(ncfg.diagnostics_rate_hz)
            self.tf_out.enable(ncfg.publish_tf)
        self.get_logger().info("parameters changed: " + ", ".join(
            f"{k}={v!r}" for k, v in {**cfg.to_flat(), **ncfg.to_flat()}.items() if k in names))

    # ============================================================ outputs
    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_integrated(self, index: int, version: int) -> None:
        """Called by the mapping thread after each integration."""
        stamp = self.inputs.pop_stamp(index)
        if stamp is not None:
            self._lat_stamp.add("integrate", self._now_s() - stamp)

    def _on_pose(self, result: PoseResult) -> None:
        """Called by the tracking thread for every frame's pose."""
        if not result.ok:
            self.inputs.pop_stamp(result.index)  # it will not be integrated
            return
        if self._closing or not self.context.ok():
            return  # shutting down: the publishers may already be invalid
        t0 = time.monotonic()
        try:
            self._publish_pose(result)
        except Exception:  # noqa: BLE001 - a pose output never kills the tracking thread
            if self._closing or not self.context.ok():
                return
            raise
        self._publish_times.add("publish_pose", time.monotonic() - t0)
        self._lat_stamp.add("pose", self._now_s() - result.stamp)

    def _publish_pose(self, result: PoseResult) -> None:
        stamp = conv.sec_to_stamp(result.stamp)
        T = result.T_world_cam
        ps = conv.pose_stamped_msg(T, stamp, self.ncfg.map_frame)  # ~/path keeps it too
        if self.pub_pose.get_subscription_count() > 0:  # this runs on the tracking thread
            self.pub_pose.publish(ps)
        if self.pub_odom.get_subscription_count() > 0:
            self.pub_odom.publish(conv.odometry_msg(T, stamp, self.ncfg.map_frame,
                                                    self.inputs.camera_frame or "camera"))
        with self._lock:
            conv.path_append(self._path, ps, self.ncfg.path_max_poses)
            self._path_dirty = True
            if time.monotonic() - self._last_path_pub > PATH_PERIOD_S:
                self._publish_path_locked()
        self.tf_out.on_pose(result, stamp, self.inputs.camera_frame)

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
            stats.update({f"input_dropped_{k}": v for k, v in self.inputs.drop_counts().items()})
            stats.update({f"output_{k}": v for k, v in self.outputs.stats.items()})
            stats["clock_jumps"] = self.inputs.frame_clock.jumps + self.inputs.pose_clock.jumps
            stats.update(worker_failures=self.faults.failures, worker_restarts=self.faults.restarts)
            stats.update(self.tf_out.stats)
            stats.update(self.inputs.times.percentiles("stage_"))  # before submit
            stats.update(self._publish_times.percentiles("stage_"))
            stats.update(self._lat_stamp.percentiles("latency_stamp_"))
        status = DiagnosticStatus()
        status.name = f"{self.get_name()}: mapping"
        status.hardware_id = str(self.system.device)
        latest = self.system.latest_pose()
        fault = self.faults.status()
        if fault is not None:
            status.level, status.message = (DiagnosticStatus.ERROR if fault[0] == 2 else
                                            DiagnosticStatus.WARN), fault[1]
        elif latest is not None and latest.status == "lost":
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
        path = output_path(self.output_dir, "mesh.ply")
        mesh = self.system.mesh()
        write_ply(mesh, path)
        return f"wrote {path} ({len(mesh.vertices)} vertices, {len(mesh.triangles)} triangles)"

    def _srv_save_mesh(self, request, response):
        return self._service(response, self._save_mesh)

    def _srv_save_map(self, request, response):
        def do():
            path = output_path(self.output_dir, "map.pt")
            self.system.save(path, frame_id=self.ncfg.map_frame)
            return f"wrote {path}"
        return self._service(response, do)

    def _srv_load_map(self, request, response):
        def do():
            path = output_path(self.output_dir, "map.pt")
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist (save_map writes it)")
            self.system.load(path, frame_id=self.ncfg.map_frame)
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
        if getattr(self, "web_view", None) is not None:
            self.web_view.close()
        t0 = time.monotonic()
        try:
            self.system.close(timeout=timeout)
            self._log_late("info", f"stopped: threads joined in {time.monotonic() - t0:.3f} s "
                           f"({self.system.frames_integrated} "
                           f"frames in the map, {self.system.stats().get('received', 0)} received)")
        finally:
            if self.ncfg.save_on_shutdown:
                try:
                    self._log_late("info", self._save_mesh())
                    self.system.save(output_path(self.output_dir, "map.pt"), frame_id=self.ncfg.map_frame)
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
