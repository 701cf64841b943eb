"""The per-frame algorithm, without threads: decide the pose, integrate, prepare the next model view.

:class:`Mapper` is what :class:`~neural_mapping.system.mapping_system.MappingSystem` runs: its
tracking thread calls :meth:`Mapper.estimate_pose`, its mapping thread
:meth:`Mapper.integrate`; :meth:`Mapper.register_frame` is the two in one call (tests, simple
offline loops)::

    mapper = Mapper(config)
    for frame in frames:
        result = mapper.register_frame(frame, T_external=frame.pose)
"""

from __future__ import annotations

import collections
import dataclasses
import time
from dataclasses import dataclass
from typing import Deque, Dict, Optional, Tuple

import numpy as np
import torch

from neural_mapping.backends import MapBackend, get_backend
from neural_mapping.config import MappingConfig
from neural_mapping.grid.voxel_grid import CapacityError
from neural_mapping.system.map_bounds import MapBounds
from neural_mapping.system.pose_policy import PosePolicy, PoseResult
from neural_mapping.types import RGBDFrame


# what may change while the system runs (besides every TrackingConfig field: the tracker is
# rebuilt); the map's structure, the threads and the queues are fixed at start-up
RUNTIME_FIELDS = frozenset({"depth_min_m", "depth_max_m", "max_weight", "integrate_color",
                            "pose_wait_timeout_s", "lost_after_failures"})


def runtime_changes(config: MappingConfig, values: Dict[str, object]) -> Tuple[MappingConfig, Dict[str, object]]:
    """``(new config, {name: value} that differ)`` for run-time changes ``values`` (flat names),
    validated as a whole; ``ValueError`` with the reason (fields that cannot change included)."""
    tracking = {f.name for f in dataclasses.fields(config.tracking)}
    fixed = sorted(set(values) - RUNTIME_FIELDS - tracking)
    if fixed:
        raise ValueError(f"{fixed} cannot change while the system runs")
    new = MappingConfig.from_flat(dict(values), base=config)
    old = config.to_flat()
    return new, {k: v for k, v in new.to_flat().items() if old[k] != v}


@dataclass
class ModelPrediction:
    """The tracker's model view of the map after ``frames_integrated`` frames (map ``version``),
    seen from ``T_world_cam`` (the pose of the frame integrated last)."""

    frames_integrated: int
    version: int
    T_world_cam: np.ndarray
    view: object  # tracking.ModelView


class Mapper:
    """One map backend, the pose policy (with its tracker) and the mesh cache's dirty marks."""

    def __init__(self, config: MappingConfig, backend: Optional[MapBackend] = None):
        from neural_mapping.products.meshing import MeshCache
        self.config = config
        self.backend = backend if backend is not None else get_backend(config)
        self.tracker = None
        if config.run.pose_source in ("track", "external+refine"):
            from neural_mapping.tracking.tracker import Tracker
            self.tracker = Tracker.from_config(config, device=self.backend.device)
        self.policy = PosePolicy(config, self.tracker)
        self.mesh_cache = MeshCache()  # blocks changed by integration, re-meshed on demand
        self.bounds = MapBounds(config.grid)  # map_radius_m / map_max_blocks eviction
        # more consumers of the same dirty marks (the web view adds its own cache), and callbacks
        # ``fn(frame, T_world_cam, version)`` after each integration (mapping thread: never block)
        self.mesh_caches = [self.mesh_cache]
        self.integrated_listeners: list = []
        self.version = 0
        self.frames_integrated = 0
        self.model: Optional[ModelPrediction] = None
        # compute time per stage (seconds), the last 100k frames
        self.timings: Dict[str, Deque[float]] = {
            k: collections.deque(maxlen=100_000) for k in ("track", "integrate", "predict")}

    # ------------------------------------------------------------------ the step
    def register_frame(self, frame: RGBDFrame, T_external: Optional[np.ndarray] = None) -> PoseResult:
        """Pose, then (if the pose is good) integrate and prepare the next model view."""
        result = self.estimate_pose(frame, T_external, self.model)
        if result.ok:
            self.integrate(frame, result.T_world_cam)
        return result

    def estimate_pose(self, frame: RGBDFrame, T_external: Optional[np.ndarray],
                      model: Optional[ModelPrediction]) -> PoseResult:
        result = self.policy.estimate(frame, T_external, None if model is None else model.view)
        if self.policy.track_time_s:
            self.timings["track"].append(self.policy.track_time_s)
        return result

    def integrate(self, frame: RGBDFrame, T_world_cam: np.ndarray) -> ModelPrediction:
        """Fuse ``frame`` at ``T_world_cam``, mark the changed blocks for meshing, and render
        the model view the tracker aligns the next frame to."""
        t0 = time.perf_counter()
        try:
            stats = self.backend.integrate(frame, T_world_cam)
        except CapacityError:  # the map is unchanged: make room (logged once, counted), retry
            b = self.bounds
            b.shrink_to(self.backend, int(min(0.75 * b.capacity, 0.9 * b.budget)), T_world_cam,
                        self.mesh_caches, self.version + 1, "capacity")
            stats = self.backend.integrate(frame, T_world_cam)
        for cache in self.mesh_caches:
            cache.mark_dirty(self.backend.grid, stats.get("slots"), self.version + 1)
        self.bounds.touched(self.backend.grid, stats.get("frame_slots", stats.get("slots")))
        self.bounds.after_integrate(self.backend, T_world_cam, self.mesh_caches, self.version + 1)
        self._sync()
        t1 = time.perf_counter()
        self.timings["integrate"].append(t1 - t0)  # eviction included
        self.version += 1
        self.frames_integrated += 1
        view = None
        if self.tracker is not None:
            view = self.tracker.predict(self.backend, frame.intrinsics, T_world_cam, frame.depth)
            self._sync()
            self.timings["predict"].append(time.perf_counter() - t1)
        self.model = ModelPrediction(self.frames_integrated, self.version, T_world_cam, view)
        for fn in self.integrated_listeners:
            fn(frame, T_world_cam, self.version)
        return self.model

    # ------------------------------------------------------------------ map changes
    def replace_map(self, state: Optional[dict] = None) -> None:
        """Reset the map (``state=None``) or load a backend state; every cached view of the old
        map is dropped."""
        if state is None:
            self.backend.reset()
            self.frames_integrated = 0
            self.policy.reset()
        else:
            self.backend.load_state_dict(state)
        self.bounds.reset()  # every block of the new map counts as just seen
        self.version += 1
        for cache in self.mesh_caches:
            cache.invalidate(self.backend.grid, self.version)
        self.model = None

    def reconfigure(self, config: MappingConfig, changed: Dict[str, object]) -> None:
        """Apply validated runtime changes (``changed``: flat names -> values of ``config``)."""
        self.config = config
        self.backend.configure(changed)
        if self.tracker is not None:
            from neural_mapping.tracking.tracker import Tracker
            self.tracker = Tracker.from_config(config, device=self.backend.device)
            self.policy.tracker = self.tracker
        self.policy.tracking_config = config.tracking
        self.policy.system_config = config.system

    def _sync(self) -> None:
        if self.backend.device.type == "cuda":  # honest timings on GPU
            torch.cuda.synchronize(self.backend.device)
