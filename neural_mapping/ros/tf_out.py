"""What the node broadcasts on TF, so that no frame gets a second parent (REP-105: each frame
has one parent; the camera driver and the robot own everything below ``odom``).

The rule (:func:`tf_plan`, said once at startup):

* ``publish_tf: false``, or ``tf2_ros`` not importable (it is not on PyPI): nothing.
* ``odom_frame`` set, ``pose_source`` external / external+refine: ``map -> odom`` = the map->odom
  correction (identity with ``external``): the pose input is already in ``odom``.
* ``odom_frame`` set, ``pose_source: track``: ``map -> odom`` = ``T_map_cam(t) inv(T_odom_cam(t))``
  (:func:`~neural_mapping.io.tf_tree.map_to_odom`), ``T_odom_cam`` looked up in tf2 at the
  frame's stamp (never extrapolated; retried until ``pose_wait_timeout_s``, then counted as
  ``tf_lookup_failed``).  A hand-held camera whose driver publishes ``camera_link -> optical``
  and no odometry: ``odom_frame: camera_link`` (or empty, below).
* ``odom_frame`` empty: ``map -> R`` where ``R`` is the top of the camera frame's TF tree as the
  tf2 buffer knows it (:func:`~neural_mapping.io.tf_tree.tf_root_below`: ``camera_link`` under
  a RealSense driver, the camera frame itself when nothing parents it), with
  ``T_map_R = T_map_cam inv(T_R_cam)``.

Counters (``tf_published``, ``tf_lookup_failed``) go to /diagnostics.
"""

from __future__ import annotations

import collections
import threading
from typing import Dict, Optional

import numpy as np

from neural_mapping.io.tf_tree import map_to_odom, tf_root_below
from neural_mapping.ros import conversions as conv

TF_POLL_S = 0.02
PENDING = 16


def tf_plan(pose_source: str, odom_frame: str, map_frame: str, camera_frame: str = "") -> str:
    """What is broadcast, in words (``camera_frame`` empty: the depth header's frame_id)."""
    cam = camera_frame or "<depth frame_id>"
    if odom_frame and pose_source != "track":
        return f"{map_frame} -> {odom_frame} (the map->odom correction; the pose input is in {odom_frame})"
    if odom_frame:
        return (f"{map_frame} -> {odom_frame} = T_{map_frame}_camera * inverse of the TF lookup "
                f"{odom_frame} -> {cam} at each frame's stamp")
    return (f"{map_frame} -> the top of {cam}'s TF tree (the camera frame itself if nothing "
            "parents it), through a TF lookup at each frame's stamp")


class TfOutput:
    """The node's TF broadcaster (see the module docstring); ``on_pose`` from the tracking thread."""

    def __init__(self, node, buffer=None):
        self.node = node
        self.stats: Dict[str, int] = collections.Counter(tf_published=0, tf_lookup_failed=0)
        self._pending = collections.deque(maxlen=PENDING)
        self._lock = threading.Lock()
        self._logged = set()
        self.broadcaster = self.buffer = self._tf2 = None
        self._shared_buffer = buffer
        self.correction = bool(node.ncfg.odom_frame) and node.cfg.run.pose_source != "track"
        self.plan = tf_plan(node.cfg.run.pose_source, node.ncfg.odom_frame, node.ncfg.map_frame,
                            node.ncfg.camera_frame)
        if not self.enable(node.ncfg.publish_tf):
            why = "publish_tf is false" if not node.ncfg.publish_tf else \
                "tf2_ros is not importable (it comes with a ROS 2 install)"
            node.get_logger().warning(f"TF: nothing is broadcast: {why}; it would be {self.plan}. "
                                      "Poses are still published on ~/pose, ~/odometry and ~/path")
        else:
            node.get_logger().info(f"TF: broadcasting {self.plan}")

    def enable(self, on: bool) -> bool:
        """Create the broadcaster (and the tf2 buffer a lookup needs) when ``on``; True if TF goes out."""
        if not on or self.broadcaster is not None:
            return self.broadcaster is not None
        try:
            import tf2_ros  # not on PyPI: optional
        except ImportError:
            return False
        self._tf2 = tf2_ros
        self.broadcaster = tf2_ros.TransformBroadcaster(self.node)
        if not self.correction:
            self.buffer = self._shared_buffer
            if self.buffer is None:
                self.buffer = tf2_ros.Buffer()
                self._listener = tf2_ros.TransformListener(self.buffer, self.node)
            self.node.create_timer(TF_POLL_S, self._poll)
        return True

    def on_pose(self, result, stamp, camera_frame: str) -> None:
        """A frame's pose (tracking thread): broadcast now (correction) or after the lookup."""
        if self.broadcaster is None or not self.node.ncfg.publish_tf:
            return
        ncfg = self.node.ncfg
        if self.correction:
            corr = result.T_correction if result.T_correction is not None else np.eye(4)
            self._send(corr, stamp, ncfg.odom_frame)
            return
        with self._lock:
            self._pending.append((stamp, result.T_world_cam, camera_frame or "camera",
                                  self.node.get_clock().now()))

    def _send(self, T, stamp, child: str) -> None:
        self.broadcaster.sendTransform(conv.transform_stamped_msg(T, stamp, self.node.ncfg.map_frame, child))
        self.stats["tf_published"] += 1

    def _target(self, camera_frame: str) -> str:
        if self.node.ncfg.odom_frame:
            return self.node.ncfg.odom_frame
        import yaml
        frames = yaml.safe_load(self.buffer.all_frames_as_yaml() or "{}") or {}
        parents = {f: str(v.get("parent", "")) for f, v in frames.items() if isinstance(v, dict)}
        return tf_root_below(parents, camera_frame, self.node.ncfg.map_frame)

    def _poll(self) -> None:
        from rclpy.time import Time
        with self._lock:
            items = list(self._pending)
        now, timeout = self.node.get_clock().now(), float(self.node.cfg.system.pose_wait_timeout_s)
        done, expired = None, []
        for k in range(len(items) - 1, -1, -1):  # newest first: older ones are superseded
            stamp, T_map_cam, cam, asked = items[k]
            target = self._target(cam)
            try:
                ts = self.buffer.lookup_transform(target, cam, Time.from_msg(stamp))
            except (self._tf2.LookupException, self._tf2.ConnectivityException,
                    self._tf2.ExtrapolationException) as exc:
                if (now - asked).nanoseconds * 1e-9 >= timeout:
                    expired.append(items[k])
                    self._log_once("lookup", f"TF: no transform {target} -> {cam} at "
                                   f"{conv.stamp_to_sec(stamp):.3f} s within pose_wait_timeout_s "
                                   f"({exc}); nothing broadcast for it (counted: tf_lookup_failed)")
                continue
            tr, ro = ts.transform.translation, ts.transform.rotation
            from neural_mapping.geometry import pose_from_tq
            T_target_cam = pose_from_tq((tr.x, tr.y, tr.z), (ro.x, ro.y, ro.z, ro.w))
            self._send(map_to_odom(T_map_cam, T_target_cam), stamp, target)
            done = k
            break
        # drop the expired ones, and the published one with everything older (items are
        # compared by identity: they hold arrays)
        gone = {id(it) for it in expired} | {id(it) for it in items[:done + 1]} if done is not None \
            else {id(it) for it in expired}
        with self._lock:
            self.stats["tf_lookup_failed"] += sum(1 for it in self._pending if id(it) in {id(e) for e in expired})
            keep = [it for it in self._pending if id(it) not in gone]
            self._pending.clear()
            self._pending.extend(keep)

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            self.node.get_logger().warning(message)
