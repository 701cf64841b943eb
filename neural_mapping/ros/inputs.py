"""The node's inputs: subscriptions to ``depth/image``, ``depth/camera_info``, ``color/image``
(optional) and ``pose`` (type from ``pose_topic_type``; not with ``pose_source: track``).

Callbacks decode, pair depth with color by stamp (``color_sync_tolerance_s``; depth goes on
alone when its partner will not come or color is silent) and hand frames to
``system.submit`` (realtime mode: never blocks).  A message that never becomes a frame is
counted per reason (``drops``, reported as ``input_dropped_<reason>`` in diagnostics) and
logged once per reason.  The depth stamp of every submitted frame is kept until the node
pops it (stamp-based latency).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Deque, Dict, Optional, Tuple

import numpy as np
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import CameraInfo, Image

from neural_mapping.ros import conversions as conv
from neural_mapping.ros.tf_poses import PoseMount, TfPoses, image_input
from neural_mapping.system.clock_guard import JUMP, STALE, ClockGuard
from neural_mapping.system.mapping_system import WorkerError
from neural_mapping.system.stage_times import StageTimes
from neural_mapping.types import CameraIntrinsics, RGBDFrame

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
STAMPS_KEPT = 1000     # submitted frames whose stamp waits for pop_stamp (x4 at most)


def _stamped(decode, msg: Image) -> Tuple[float, np.ndarray]:
    return conv.stamp_to_sec(msg.header.stamp), decode(msg)


class FrameInputs:
    """Subscriptions, decoding, depth/color pairing and input drop counts of ``node`` (which
    provides ``ncfg``, ``cfg`` and logging), frames into ``system``."""

    def __init__(self, node, system):
        self.node, self.system = node, system
        self.drops: Dict[str, int] = collections.Counter()
        self._drop_logged: set = set()
        self._lock = threading.Lock()
        self._intrinsics: Optional[CameraIntrinsics] = None
        self._depths: Deque = collections.deque()
        self._colors: Deque = collections.deque()
        self._last_color_wall = 0.0
        self._frame_index = 0
        self.camera_frame = node.ncfg.camera_frame  # else the depth header's frame_id
        # frame index -> depth stamp (s) until the frame is integrated (or known dropped)
        self._stamps: Dict[int, float] = {}
        # before submit (diagnostics stage_*): depth stamp -> depth callback (transport, on the
        # node's clock), decoding in the callbacks, depth callback -> submit (decode + pairing)
        self.times = StageTimes(("transport", "decode_depth", "decode_color", "receive_to_submit"))
        ncfg = node.ncfg
        # frames into the map in stamp order; backward clock jumps (system/clock_guard.py)
        self.frame_clock = ClockGuard(ncfg.clock_jump_threshold_s)
        self.pose_clock = ClockGuard(ncfg.clock_jump_threshold_s, strict_order=False)
        in_qos = qos_profile_sensor_data if ncfg.input_qos == "sensor_data" else RELIABLE_INPUT_QOS
        # raw or compressed (depth_transport / color_transport): ros/tf_poses.py
        dtype, dtopic, self._depth_decode = image_input(node, "depth/image", ncfg.depth_transport, True)
        ctype, ctopic, self._color_decode = image_input(node, "color/image", ncfg.color_transport, False)
        node.create_subscription(dtype, dtopic, self._on_depth, in_qos)
        node.create_subscription(CameraInfo, "depth/camera_info", self._on_camera_info, in_qos)
        node.create_subscription(ctype, ctopic, self._on_color, in_qos)
        self.mount = PoseMount(ncfg, node.get_logger().warning)
        self.tf_poses = None
        if node.cfg.run.pose_source != "track" and ncfg.pose_input == "tf":
            self.tf_poses = TfPoses(node, system.submit_pose, self._drop,
                                    node.cfg.system.pose_wait_timeout_s)
        elif node.cfg.run.pose_source != "track":
            node.create_subscription(conv.pose_msg_type(ncfg.pose_topic_type), "pose",
                                     self._on_pose_msg, POSE_INPUT_QOS)

    def drop_counts(self) -> Dict[str, int]:
        with self._lock:
            return dict(self.drops)

    def pop_stamp(self, index: int) -> Optional[float]:
        """The depth stamp of submitted frame ``index`` (once), None if unknown."""
        with self._lock:
            return self._stamps.pop(index, None)

    # ------------------------------------------------------------------ drops
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
        self.node.get_logger().warning(f"dropping input ({reason}): {message} [logged once per "
                                       f"reason; counts in /diagnostics as input_dropped_{reason}]")

    def _decode(self, decode, *args):
        """``decode(*args)``, or None after counting the drop if the message does not decode."""
        try:
            return decode(*args)
        except conv.DecodeError as e:
            self._drop(e.reason, str(e))
            return None

    # ------------------------------------------------------------------ callbacks
    def _on_camera_info(self, msg: CameraInfo) -> None:
        intr = self._decode(conv.intrinsics_from_camera_info, msg)
        if intr is None:
            return
        self._intrinsics = intr
        if not self.camera_frame and msg.header.frame_id:
            self.camera_frame = msg.header.frame_id
        self._pair()  # depth images may be waiting for their first camera_info

    def _on_depth(self, msg: Image) -> None:
        t_recv = time.monotonic()
        decoded = self._decode(_stamped, self._depth_decode, msg)
        if decoded is None:
            return
        self.times.add("decode_depth", time.monotonic() - t_recv)
        self.times.add("transport", self.node.get_clock().now().nanoseconds * 1e-9 - decoded[0])
        decoded = (*decoded, t_recv)
        if self.tf_poses is not None:
            self.tf_poses.request(msg.header)
        if not self.camera_frame and msg.header.frame_id:
            self.camera_frame = msg.header.frame_id
        first = None
        with self._lock:
            self._depths.append(decoded)
            while len(self._depths) > PENDING_DEPTH:
                self._depths.popleft()
                reason = "no_camera_info" if self._intrinsics is None else "depth_unpaired"
                if self._count_drop(reason):
                    first = reason
        if first == "no_camera_info":
            self._log_drop(first, f"no valid message on {self.node.resolve_topic_name('depth/camera_info')} "
                           f"yet: depth images wait for it ({PENDING_DEPTH} at most)")
        elif first is not None:
            self._log_drop(first, f"more than {PENDING_DEPTH} depth images wait for a color "
                           "image with a matching stamp (color_sync_tolerance_s)")
        self._pair()

    def _on_color(self, msg: Image) -> None:
        t0 = time.monotonic()
        decoded = self._decode(_stamped, self._color_decode, msg)
        if decoded is None:
            return
        self.times.add("decode_color", time.monotonic() - t0)
        with self._lock:
            self._last_color_wall = time.monotonic()
            self._colors.append(decoded)
            while len(self._colors) > PENDING_COLOR:
                self._colors.popleft()
                self.drops["color_unpaired"] += 1  # no depth came for it (counted, not logged)
        self._pair()

    def _pair(self) -> None:
        """Pair depth with color by stamp (within color_sync_tolerance_s) and submit."""
        tol = self.node.ncfg.color_sync_tolerance_s
        ready = []
        intr = self._intrinsics
        if intr is None:  # depth waits (bounded) for the first camera_info
            return
        with self._lock:
            color_alive = time.monotonic() - self._last_color_wall < COLOR_SILENCE_S
            while self._depths:
                stamp, depth, t_recv = self._depths[0]
                best = None
                for k, (cs, _) in enumerate(self._colors):
                    if abs(cs - stamp) <= tol and (best is None or abs(cs - stamp) < abs(self._colors[best][0] - stamp)):
                        best = k
                if best is not None:
                    color = self._colors[best][1]
                    for _ in range(best):  # older colors can no longer match newer depth
                        self._colors.popleft()
                        self.drops["color_unpaired"] += 1
                    self._colors.popleft()
                    self._depths.popleft()
                    ready.append((stamp, depth, intr, color, t_recv))
                    continue
                newest_color = self._colors[-1][0] if self._colors else -np.inf
                if not color_alive or newest_color > stamp + tol:
                    self._depths.popleft()  # its partner will not come: depth alone
                    if color_alive:
                        self.drops["color_unmatched_depth_used_alone"] += 1
                    ready.append((stamp, depth, intr, None, t_recv))
                    continue
                break
        for stamp, depth, intr, color, t_recv in ready:
            self._submit(stamp, depth, intr, color, t_recv)

    def _submit(self, stamp, depth, intr, color, t_recv: float) -> None:
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
        verdict = self.frame_clock.check(stamp)
        if verdict == STALE:
            self._drop("stale_stamp", f"frame stamp {stamp:.6f} s is not newer than the last "
                       "mapped frame's: out of order or repeated")
            return
        if verdict == JUMP:
            on_clock_jump(self, stamp)
        try:
            frame = RGBDFrame(depth, intr, color=color, timestamp=stamp, index=self._frame_index)
        except (TypeError, ValueError) as e:
            self._drop("bad_frame", str(e))
            return
        with self._lock:
            self._stamps[self._frame_index] = stamp
            if len(self._stamps) > 4 * STAMPS_KEPT:  # frames dropped inside the core
                for k in sorted(self._stamps)[:len(self._stamps) - 2 * STAMPS_KEPT]:
                    del self._stamps[k]
        self._frame_index += 1
        self.times.add("receive_to_submit", time.monotonic() - t_recv)
        try:
            self.system.submit(frame)  # realtime mode: never blocks, drops oldest
        except WorkerError:  # reported by ros/faults.py; the callback must not raise
            self._drop("worker_failed", "the mapping workers failed (see /diagnostics): not mapped")

    def _on_pose_msg(self, msg) -> None:
        sample = self._decode(conv.pose_sample_from_msg, msg, self.node.ncfg.pose_topic_type)
        if sample is None:
            return
        if self.pose_clock.check(sample.stamp) == JUMP:  # the old clock's poses are useless
            self.system.external_poses.buffer.clear()
            self.node.get_logger().warning(f"pose stamps jumped back to {sample.stamp:.3f} s: "
                                           "pose history cleared")
        # (t, q) as received (the pose buffer checks the quaternion norm), or with the camera mount
        pose = self._decode(self.mount.apply, sample, self.camera_frame)
        if pose is None:
            return
        if not self.system.submit_pose(sample.stamp, pose):
            self._drop(conv.BAD_POSE, "pose rejected by the pose buffer (non-finite, bad quaternion, "
                                      "non-rigid or older than the kept window)")


def on_clock_jump(inputs: FrameInputs, stamp: float) -> None:
    """A frame's stamp jumped back (``clock_jump_threshold_s``): what waits from before the jump
    is dropped (counted ``clock_jump_cleared``), the frames already queued finish (flush, at most
    2 s), the map is reset if ``clock_jump_reset_map``; ``stamp`` starts the new epoch."""
    node = inputs.node
    thr = float(node.ncfg.clock_jump_threshold_s)
    with inputs._lock:
        n0 = len(inputs._depths) + len(inputs._colors)
        for q in (inputs._depths, inputs._colors):
            keep = [x for x in q if x[0] <= stamp + thr]
            q.clear()
            q.extend(keep)
        cleared = n0 - len(inputs._depths) - len(inputs._colors)
        if cleared:
            inputs.drops["clock_jump_cleared"] += cleared
    poses = inputs.system.external_poses.buffer.drop_newer_than(stamp + thr)
    inputs.system.flush(timeout=2.0)
    if node.ncfg.clock_jump_reset_map:
        from std_srvs.srv import Trigger
        node._srv_reset(Trigger.Request(), Trigger.Response())  # map, trajectory, outputs
    node.get_logger().warning(
        f"clock jumped back to {stamp:.3f} s (frame #{inputs.frame_clock.jumps}): {cleared} pending "
        f"images and {poses} poses from before it dropped, map "
        f"{'reset' if node.ncfg.clock_jump_reset_map else 'kept'}")
