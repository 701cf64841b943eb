"""The live view's logging thread, attached to a running
:class:`~neural_mapping.system.mapping_system.MappingSystem`.

The mapping thread only hands over references (``Mapper.integrated_listeners``: the newest
frame and its pose replace the previous ones in a one-slot buffer, the camera position goes to
a bounded deque) and marks changed blocks in the view's own mesh cache
(``Mapper.mesh_caches``: the RViz publisher's cache is not touched).  Everything else runs on
the thread ``nm-view``, at ``view_rate_hz``:

* the newest frame: pose, pinhole, downsampled color and depth; the trajectory; the counters;
* every ``view_mesh_period_s``: ``MeshCache.update`` of at most ``view_mesh_max_blocks`` blocks
  (under the map lock, as the RViz mesh publisher) and the changed / emptied blocks;
* every ``view_occupancy_period_s``, if the map changed: the 2D occupancy grid of a map
  snapshot (only the copy holds the map lock).

Frames that arrive faster than the thread logs them are skipped (counted:
``frames_skipped``); nothing here ever blocks the tracking or mapping thread.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Deque, Optional

import numpy as np

from neural_mapping.config import MappingConfig
from neural_mapping.config.view import ViewConfig
from neural_mapping.view.logger import MapViewLogger

log = logging.getLogger(__name__)

TRAJECTORY_MAX_POINTS = 100_000   # positions kept (bounded memory on a long run)
TRAJECTORY_LOGGED_POINTS = 5_000  # the path is subsampled to about this many points


class LiveView:
    """``attach(system)`` starts logging a system to ``rec``; ``detach()`` logs the final map
    (every dirty block, the occupancy grid) and stops."""

    def __init__(self, rec, cfg: ViewConfig, map_cfg: MappingConfig):
        self.cfg, self.map_cfg = cfg, map_cfg
        self.logger = MapViewLogger(rec, cfg.view_image_width_px)
        self.system = None
        self.cache = None
        self._slot_lock = threading.Lock()
        self._newest = None                 # (frame, T_world_cam) not logged yet
        self._positions: Deque[np.ndarray] = collections.deque(maxlen=TRAJECTORY_MAX_POINTS)
        self._first_pose: Optional[np.ndarray] = None
        self._positions_total = 0          # appended so far (the deque is bounded)
        self._positions_logged = 0
        self._occ_map = None
        self._occ_version = -1
        self._occ_time = 0.0
        self._mesh_time = 0.0
        self.frames_skipped = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ lifecycle
    def attach(self, system, thread: bool = True) -> "LiveView":
        """Hook into ``system``; ``thread=False``: no logging thread (the caller calls ``step``)."""
        from neural_mapping.products.meshing import MeshCache
        self.system = system
        self.cache = MeshCache()
        if self.map_cfg.occupancy.map_up_source == "world_z":
            self.logger.log_world_z_up()
        with system.map_lock:  # the map so far, then every change from here on
            mapper = system.mapper
            self.cache.mark_all_dirty(mapper.backend.grid, mapper.version)
            mapper.mesh_caches.append(self.cache)
            mapper.integrated_listeners.append(self._on_integrated)
        self._stop.clear()
        if thread:
            self._thread = threading.Thread(target=self._loop, name="nm-view", daemon=True)
            self._thread.start()
        return self

    def detach(self, final: bool = True, timeout: float = 30.0) -> None:
        """Stop the thread; with ``final``, log what is left (all dirty blocks, the newest frame,
        the occupancy grid) first.  Then unhook from the system."""
        if self.system is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        mapper = self.system.mapper
        try:
            if final:
                self.step(mesh_blocks=None, occupancy_now=True)
        finally:
            with self.system.map_lock:
                mapper.mesh_caches.remove(self.cache)
                mapper.integrated_listeners.remove(self._on_integrated)
            self.logger.rec.flush()
            self.system = None

    # ------------------------------------------------------------------ mapping thread
    def _on_integrated(self, frame, T_world_cam, version) -> None:
        """Mapping thread: O(1), never blocks on the view."""
        with self._slot_lock:
            if self._newest is not None:
                self.frames_skipped += 1
            self._newest = (frame, T_world_cam)
            self._positions.append(np.asarray(T_world_cam)[:3, 3].astype(np.float32))
            self._positions_total += 1
            if self._first_pose is None:
                self._first_pose = np.array(T_world_cam, dtype=np.float64)

    # ------------------------------------------------------------------ view thread
    def _loop(self) -> None:
        period = 1.0 / self.cfg.view_rate_hz
        while not self._stop.wait(period):
            try:
                self.step()
            except Exception:  # the view never takes the mapping down; logged, counted
                self.errors += 1
                if self.errors == 1:
                    log.exception("live view: a logging step failed (further failures are counted)")

    def step(self, mesh_blocks: Optional[int] = -1, occupancy_now: bool = False) -> None:
        """One logging step (``mesh_blocks``: -1 the configured budget every
        ``view_mesh_period_s``; None every dirty block now; n: n blocks now)."""
        system, lg = self.system, self.logger
        with self._slot_lock:
            newest, self._newest = self._newest, None
            n_pos = self._positions_total
            positions = np.stack(self._positions) if n_pos != self._positions_logged else None
        if newest is not None:
            frame, T = newest
            lg.log_frame(frame, T)
            stats = system.stats()
            stats["view_frames_skipped"] = self.frames_skipped
            lg.log_stats(stats)
        if positions is not None:
            self._positions_logged = n_pos
            step = max(1, len(positions) // TRAJECTORY_LOGGED_POINTS)
            lg.log_trajectory(positions[::step])
        now = time.monotonic()
        if mesh_blocks != -1 or now - self._mesh_time >= self.cfg.view_mesh_period_s:
            self._mesh_time = now
            budget = self.cfg.view_mesh_max_blocks if mesh_blocks == -1 else mesh_blocks
            while True:
                with system.map_lock:
                    update = self.cache.update(system.backend.field(), budget)
                if update.invalidated:  # reset / load: a new trajectory and map frame
                    self._forget_trajectory()
                lg.log_mesh_update(update)
                if budget is not None or update.remaining_dirty == 0:
                    break
        if (occupancy_now or now - self._occ_time >= self.cfg.view_occupancy_period_s) \
                and system.version != self._occ_version and self._first_pose is not None:
            self._occ_time = now
            self._log_occupancy()

    def _forget_trajectory(self) -> None:
        with self._slot_lock:
            self._positions.clear()
            self._first_pose = None
            self._positions_logged = self._positions_total
        self._occ_map = None
        self._occ_version = -1
        self.logger.clear_trajectory_and_occupancy()

    def _log_occupancy(self) -> None:
        from neural_mapping.products import occupancy as occ
        if self._occ_map is None:
            T = occ.map_transform_from_config(self.map_cfg, self._first_pose)
            self._occ_map = occ.OccupancyMap2D(self.map_cfg, T)
        snapshot = self.system.snapshot()
        self._occ_version = snapshot.version
        self.logger.log_occupancy(self._occ_map.update(snapshot.field))
