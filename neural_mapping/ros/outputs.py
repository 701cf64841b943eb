"""Map outputs of the node for RViz and planners, each on its own timer, only while subscribed.

* ``~/mesh`` (visualization_msgs/MarkerArray): incremental, one TRIANGLE_LIST marker per
  block with a stable id; only re-meshed (dirty) blocks are sent, DELETE for blocks that
  became empty, a byte budget per update (``mesh_max_mbytes_per_update``, oldest dirty
  first); the full set (after a DELETEALL) for a new subscriber and on ``~/republish_mesh``.
  Serialized with numpy (``fast_cdr``) and published as bytes.  QoS: reliable, volatile,
  keep last 100 — incremental messages must all arrive; late joiners get the full set.
* ``~/occupancy`` (nav_msgs/OccupancyGrid): the height band ``[occupancy_min_z_m,
  occupancy_max_z_m]`` of the gravity-aligned map frame; the grid keeps its origin/size and
  grows in large steps (Nav2 resizes its costmap on every change).
* ``~/costmap`` (OccupancyGrid, Nav2 inflation-layer costs) and ``~/esdf_slice``
  (PointCloud2 x, y, z, distance) at the occupancy rate.
* ``~/occupied_voxels`` (PointCloud2 x, y, z, rgb).
* Map outputs except the mesh: reliable + transient_local, depth 1 (REP-2003).
* ``~/save_occupancy`` (std_srvs/Trigger): ``occupancy.pgm`` + ``occupancy.yaml`` for
  ``nav2_map_server`` in ``output_dir``.

Occupancy, costmap, ESDF slice and occupied voxels are computed from ``system.snapshot()``
(a private copy of the map: only the copy holds the map lock, never the computation), and
only when the map version changed since the last one.  The mesh reads the system's mesh
cache (``system.mesh_update()``: only the dirty blocks, under the lock).

The map frame: ``map_transform_from_config`` (``map_up_source``, ``map_origin``) with the
first integrated camera pose when the config asks for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from nav_msgs.msg import OccupancyGrid
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from neural_mapping.products import occupancy as occ
from neural_mapping.system.paths import output_path
from neural_mapping.ros import conversions as conv
from neural_mapping.ros import fast_cdr
from neural_mapping.ros.mesh_publisher import MeshPublisherState, mbytes_budget

MAP_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
MESH_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)


class RateTimer:
    """A node timer calling ``fn`` at ``rate_hz`` (0: off) whose rate can change at runtime."""

    def __init__(self, node, fn, rate_hz: float):
        self.node, self.fn = node, fn
        self.rate_hz = None
        self.timer = None
        self.set_rate(rate_hz)

    def set_rate(self, rate_hz: float) -> None:
        rate_hz = float(rate_hz)
        if rate_hz == self.rate_hz:
            return
        if self.timer is not None:
            self.node.destroy_timer(self.timer)
            self.timer = None
        if rate_hz > 0:
            self.timer = self.node.create_timer(1.0 / rate_hz, self.fn)
        self.rate_hz = rate_hz


class MapOutputs:
    """Publishers, timers and services of the map outputs (heavy ones read map snapshots)."""

    def __init__(self, node, system, cfg, ncfg, output_dir: Path):
        self.node, self.system, self.cfg, self.ncfg = node, system, cfg, ncfg
        self.output_dir = Path(output_dir)
        frame = ncfg.map_frame
        self.pub_mesh = node.create_publisher(MarkerArray, "~/mesh", MESH_QOS)
        self.pub_occupancy = node.create_publisher(OccupancyGrid, "~/occupancy", MAP_QOS)
        self.pub_costmap = node.create_publisher(OccupancyGrid, "~/costmap", MAP_QOS)
        self.pub_esdf = node.create_publisher(PointCloud2, "~/esdf_slice", MAP_QOS)
        self.pub_voxels = node.create_publisher(PointCloud2, "~/occupied_voxels", MAP_QOS)
        self.mesh_state = MeshPublisherState.from_mbytes(frame, "mesh", ncfg.mesh_max_mbytes_per_update)
        self._mesh_subs = 0
        self._mesh_full_requested = False
        self.occupancy_map: Optional[occ.OccupancyMap2D] = None
        self._T_world_map: Optional[np.ndarray] = None
        self._occupancy_version = -1
        self._voxels_version = -1
        self.stats = {"mesh_messages": 0, "mesh_bytes": 0, "occupancy_updates": 0, "occupancy_resizes": 0}
        self.timers = {"mesh": RateTimer(node, self.publish_mesh, ncfg.mesh_rate_hz),
                       "occupancy": RateTimer(node, self.publish_occupancy, ncfg.occupancy_rate_hz),
                       "occupied_voxels": RateTimer(node, self.publish_occupied_voxels,
                                                    ncfg.occupied_voxels_rate_hz)}
        node.create_service(Trigger, "~/republish_mesh", self._srv_republish_mesh)
        node.create_service(Trigger, "~/save_occupancy", self._srv_save_occupancy)

    def apply_node_config(self, ncfg) -> None:
        """Take runtime changes of the node parameters (rates, mesh byte budget)."""
        self.ncfg = ncfg
        self.mesh_state.max_bytes_per_update = mbytes_budget(ncfg.mesh_max_mbytes_per_update)
        self.timers["mesh"].set_rate(ncfg.mesh_rate_hz)
        self.timers["occupancy"].set_rate(ncfg.occupancy_rate_hz)
        self.timers["occupied_voxels"].set_rate(ncfg.occupied_voxels_rate_hz)

    # ------------------------------------------------------------------ mesh
    def publish_mesh(self) -> None:
        subs = self.pub_mesh.get_subscription_count()
        new_subscriber, self._mesh_subs = subs > self._mesh_subs, subs
        if subs == 0:
            return  # dirty blocks wait in the system's mesh cache
        self.mesh_state.apply(self.system.mesh_update())
        stamp = self.node.get_clock().now().to_msg()
        if new_subscriber or self._mesh_full_requested:
            self._mesh_full_requested = False
            messages = self.mesh_state.full(stamp, max_bytes=self.mesh_state.max_bytes_per_update)
        else:
            msg = self.mesh_state.next_message(stamp)
            messages = [msg] if msg is not None else []
        for data in messages:
            self.pub_mesh.publish(data)
            self.stats["mesh_messages"] += 1
            self.stats["mesh_bytes"] += len(data)

    def _srv_republish_mesh(self, request, response):
        self._mesh_full_requested = True
        response.success = True
        response.message = "the full mesh goes out with the next mesh update"
        return response

    # ------------------------------------------------------------- occupancy
    def _map_transform(self) -> Optional[np.ndarray]:
        """The map frame, fixed once known (until ``reset``): the trajectory of a live
        system is bounded, so its first pose does not stay the first."""
        if self._T_world_map is None:
            first = next(iter(self.system.trajectory), None)
            try:
                self._T_world_map = occ.map_transform_from_config(
                    self.cfg, first.T_world_cam if first is not None and first.ok else None)
            except ValueError:
                return None  # needs the first camera pose: not there yet
        return self._T_world_map

    def update_occupancy(self, snapshot=None) -> Optional[occ.OccupancyGrid2D]:
        """Re-project the occupancy grid from ``snapshot`` (a fresh one if None)."""
        if self.occupancy_map is None:
            T = self._map_transform()
            if T is None:
                return None
            self.occupancy_map = occ.OccupancyMap2D(self.cfg, T, frame_id=self.ncfg.map_frame)
        snapshot = snapshot if snapshot is not None else self.system.snapshot()
        grid = self.occupancy_map.update(snapshot.field)
        if grid is not None:
            self.stats["occupancy_updates"] += 1
            self.stats["occupancy_resizes"] = self.occupancy_map.num_resizes
        return grid

    def publish_occupancy(self) -> None:
        wanted = (self.pub_occupancy.get_subscription_count() + self.pub_costmap.get_subscription_count()
                  + self.pub_esdf.get_subscription_count())
        if wanted == 0 or self.system.version == self._occupancy_version:
            return  # nobody listens, or the map did not change: no copy, no work
        snapshot = self.system.snapshot()
        self._occupancy_version = snapshot.version
        grid = self.update_occupancy(snapshot)
        if grid is None:
            return
        stamp = self.node.get_clock().now().to_msg()
        frame = self.ncfg.map_frame
        if self.pub_occupancy.get_subscription_count():
            self.pub_occupancy.publish(conv.occupancy_grid_msg(grid.data, grid.resolution_m,
                                                               grid.origin_xy, frame, stamp))
        if self.pub_costmap.get_subscription_count():
            cost = occ.inflated_costmap(grid, self.cfg)
            self.pub_costmap.publish(conv.occupancy_grid_msg(cost.data, cost.resolution_m,
                                                             cost.origin_xy, frame, stamp))
        if self.pub_esdf.get_subscription_count():
            xyz, dist = occ.esdf_slice(grid, self.cfg)
            self.pub_esdf.publish(fast_cdr.pointcloud2_bytes(xyz, fields={"distance": dist},
                                                             frame_id=frame, stamp=stamp))

    def publish_occupied_voxels(self) -> None:
        if self.pub_voxels.get_subscription_count() == 0 or self.system.version == self._voxels_version:
            return
        T = self._map_transform()
        if T is None:
            return
        snapshot = self.system.snapshot()
        self._voxels_version = snapshot.version
        xyz, rgb = occ.occupied_voxels(snapshot.field, self.cfg, T)
        self.pub_voxels.publish(fast_cdr.pointcloud2_bytes(
            xyz, rgb=rgb, frame_id=self.ncfg.map_frame, stamp=self.node.get_clock().now().to_msg()))

    def _srv_save_occupancy(self, request, response):
        try:
            grid = self.update_occupancy()
            if grid is None:
                raise RuntimeError("the map is empty: no occupancy yet")
            for name in ("occupancy.pgm", "occupancy.yaml"):  # no link out of output_dir
                output_path(self.output_dir, name)
            pgm, yml = occ.save_nav2_map(grid, self.output_dir / "occupancy")
            response.success = True
            response.message = f"wrote {yml} and {pgm} ({grid.width}x{grid.height} cells of " \
                               f"{grid.resolution_m} m)"
        except Exception as e:  # a service never kills the node
            response.success = False
            response.message = f"{type(e).__name__}: {e}"
            self.node.get_logger().error(response.message)
        return response

    def reset(self) -> None:
        """After ``reset``/``load_map``: a new map frame may apply; the mesh cache invalidates itself."""
        self.occupancy_map = None
        self._T_world_map = None
        self._occupancy_version = self._voxels_version = -1
