"""The mapping system: a tracking thread and a mapping thread around one map.

::

    submit(frame) ──► [frame queue] ──► tracking thread ──► [map queue] ──► mapping thread
    submit_pose(stamp, T) ─► PoseBuffer ─┘      │ pose results                 │ integrate, version++,
                                               ▼ on_pose(PoseResult)          ▼ model prediction (raycast)
                                                                                 for the tracker

* The mapping thread is the map's only writer.  Readers (``mesh()``,
  ``save()``, ``read_map()``) hold ``map_lock`` while they read, so they see a
  consistent map between two integrations; writers other than integration
  (``reset()``, ``load()``) are executed *by* the mapping thread.
* Queues are bounded.  ``sync_mode='realtime'``: full queues drop their oldest
  item and the tracker always takes the newest frame (drops counted by reason).
  ``sync_mode='strict'``: nothing is dropped, ``submit`` blocks, frame k+1 is
  tracked against the model that includes frame k (deterministic).
* All waiting is on conditions/queues; no sleep-polling.
* An exception in a worker is kept and re-raised by ``submit``/``close``/``flush``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional

import numpy as np
import torch

from neural_mapping.config import MappingConfig
from neural_mapping.geometry import interpolate_pose, inv_pose
from neural_mapping.system.pose_buffer import PoseBuffer
from neural_mapping.system.queues import Closed, DropOldestQueue
from neural_mapping.types import RGBDFrame, check_pose

log = logging.getLogger(__name__)


class WorkerError(RuntimeError):
    """A tracking or mapping worker died; the original exception is ``__cause__``."""


@dataclass
class PoseResult:
    index: int
    stamp: float
    T_world_cam: np.ndarray
    status: str  # external | tracked | refined | initial | failed | lost
    ok: bool
    T_correction: Optional[np.ndarray] = None  # refined @ inv(external) (map->odom for refine)
    latency_s: float = 0.0
    info: dict = field(default_factory=dict)


@dataclass
class MapSnapshot:
    """A private copy of the map (``MappingSystem.snapshot()``) at map ``version``."""

    version: int
    frames_integrated: int
    grid: object  # grid.VoxelBlockGrid, owned by the reader

    def mesh(self):
        from neural_mapping.products.meshing import extract_mesh
        return extract_mesh(self.grid)


@dataclass
class ModelPrediction:
    """A raycast of the map at ``T_world_cam`` after ``frames_integrated`` frames."""

    frames_integrated: int
    version: int
    T_world_cam: np.ndarray
    raycast: object  # raycast.RaycastResult at the tracker's working resolution
    intrinsics: object


class MappingSystem:
    """Core mapping API: ``submit(frame)``, ``submit_pose``, ``latest_pose``, ``mesh``,
    ``snapshot``, ``save``/``load``, ``reset``, ``close``.  Usable as a context manager."""

    def __init__(self, config: Optional[MappingConfig] = None,
                 on_pose: Optional[Callable[[PoseResult], None]] = None,
                 on_integrated: Optional[Callable[[int, int], None]] = None):
        from neural_mapping.products.mesh_cache import MeshCache
        from neural_mapping.backends.tsdf.volume import TSDFVolume  # local: keeps import of the package light

        self.config = config or MappingConfig()
        self.config.validate()
        cfg = self.config
        if cfg.system.torch_threads > 0:  # process-wide (torch has no per-thread setting)
            torch.set_num_threads(cfg.system.torch_threads)
        self.strict = cfg.system.sync_mode == "strict"
        self.pose_source = cfg.run.pose_source
        self.volume = TSDFVolume.from_config(cfg)
        self.device = self.volume.grid.device
        # blocks changed by integration, re-meshed by mesh_update() (see mesh_cache.py)
        self.mesh_cache = MeshCache()
        self.on_pose = on_pose
        self.on_integrated = on_integrated
        self.pose_buffer = PoseBuffer(max_age_s=cfg.system.pose_buffer_s)
        self.tracker = None
        if self.pose_source in ("track", "external+refine"):
            from neural_mapping.tracking.tracker import Tracker
            self.tracker = Tracker.from_config(cfg, device=self.device)

        self.map_lock = threading.RLock()
        self.version = 0
        self.frames_integrated = 0
        self._frames_to_map = 0  # frames handed to the mapping thread (strict-mode sync)
        self._pending = 0  # submitted frames not yet integrated or dropped (flush)
        self._model: Optional[ModelPrediction] = None
        # strict mode with model_lag_frames: the last few predictions, by frames_integrated
        self._models: Deque[ModelPrediction] = collections.deque(maxlen=cfg.system.model_lag_frames + 1)
        self._model_cond = threading.Condition()
        self._pose_cond = threading.Condition()
        self._stats_lock = threading.Lock()
        self.counters: Dict[str, int] = collections.Counter()
        self.latencies: Dict[str, Deque[float]] = {
            "pose": collections.deque(maxlen=1000), "integrate": collections.deque(maxlen=1000)}
        # compute time per stage (seconds), the last 100k frames
        self.timings: Dict[str, Deque[float]] = {
            k: collections.deque(maxlen=100_000) for k in ("track", "integrate", "predict")}
        self.trajectory: List[PoseResult] = []
        self._latest: Optional[PoseResult] = None
        self._last_T: Optional[np.ndarray] = None
        self._prev_T: Optional[np.ndarray] = None
        self._correction = np.eye(4)
        self._refine_stamp: Optional[float] = None
        self._consecutive_failures = 0
        self._error: Optional[BaseException] = None
        self._closed = False

        block = self.strict
        self._frame_q = DropOldestQueue(cfg.system.frame_queue_size, block_when_full=block,
                                        name="frames", on_drop=self._on_frame_drop)
        self._map_q = DropOldestQueue(cfg.system.map_queue_size, block_when_full=block,
                                      name="map", on_drop=self._on_map_drop)
        self._threads = [threading.Thread(target=self._guard, args=(self._tracking_loop,),
                                          name="nm-tracking", daemon=True),
                         threading.Thread(target=self._guard, args=(self._mapping_loop,),
                                          name="nm-mapping", daemon=True)]
        for t in self._threads:
            t.start()

    # ================================================================ public API
    def submit(self, frame: RGBDFrame, timeout: Optional[float] = None) -> bool:
        """Hand a frame to the tracking thread. In strict mode blocks while the queue is full."""
        self._raise_if_failed()
        if not isinstance(frame, RGBDFrame):
            raise TypeError(f"submit() takes an RGBDFrame, got {type(frame).__name__}")
        frame.meta.setdefault("t_submit", time.monotonic())
        self._count("received")
        self._settle(+1)
        if not self._frame_q.put(frame, timeout=timeout):
            self._settle(-1)
            return False
        return True

    def submit_pose(self, stamp: float, T_world_cam) -> bool:
        """External pose (camera-to-world) at ``stamp`` seconds. Bad poses are dropped and counted."""
        ok = self.pose_buffer.add(stamp, T_world_cam)
        if not ok:
            self._count("dropped_bad_pose")
        with self._pose_cond:
            self._pose_cond.notify_all()
        return ok

    def latest_pose(self) -> Optional[PoseResult]:
        return self._latest

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every submitted frame is integrated or dropped. False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._model_cond:
            while self._pending > 0 and self._error is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._model_cond.wait(remaining)
        self._raise_if_failed()
        return True

    def read_map(self):
        """Context manager: ``with system.read_map() as volume:`` (consistent between integrations)."""
        return _Locked(self.map_lock, self.volume)

    def mesh(self):
        """Full mesh of the current map (numpy arrays, see ``meshing.Mesh``)."""
        from neural_mapping.products.meshing import extract_mesh
        with self.map_lock:
            return extract_mesh(self.volume.grid)

    def mesh_update(self, max_blocks: Optional[int] = None):
        """Re-mesh the blocks integration changed since the last call (the ``max_blocks``
        oldest if given): a :class:`~neural_mapping.products.mesh_cache.MeshUpdate` with the changed
        and emptied blocks.  After ``reset()``/``load()`` it reports every block meshed
        before as emptied and re-meshes the whole new map."""
        with self.map_lock:
            return self.mesh_cache.update(self.volume.grid, max_blocks)

    def snapshot(self) -> "MapSnapshot":
        """The map as of now, as the reader's own copy: meshing, querying or saving it never
        blocks the mapping thread (only the copy is made under ``map_lock``)."""
        from neural_mapping.grid.voxel_grid import VoxelBlockGrid
        with self.map_lock:
            state, version, frames = self._grid_state_copy(), self.version, self.frames_integrated
        grid = VoxelBlockGrid.from_state_dict(state, device=self.device,
                                              max_capacity=self.config.grid.max_capacity_blocks)
        return MapSnapshot(version, frames, grid)

    def _grid_state_copy(self) -> dict:
        """``grid.state_dict()`` with copied tensors (on CPU it holds views of the live pool,
        which the mapping thread keeps writing once the lock is released).  Hold map_lock."""
        state = self.volume.grid.state_dict()
        state["block_coords"] = state["block_coords"].clone()
        state["attrs"] = {k: v.clone() for k, v in state["attrs"].items()}
        return state

    def save(self, path) -> None:
        """Save the map, its config and the trajectory (torch.save; the map is copied under the
        lock and written after it, so a save never stalls mapping for the disk)."""
        with self.map_lock:
            state = {"format": "neural_mapping.map/1", "config": self.config.to_flat(),
                     "grid": self._grid_state_copy(), "version": self.version,
                     "trajectory": [(p.stamp, p.T_world_cam, p.status) for p in self.trajectory]}
        torch.save(state, str(path))

    def load(self, path, timeout: Optional[float] = 30.0) -> None:
        """Replace the map by a saved one (executed by the mapping thread)."""
        from neural_mapping.grid.voxel_grid import VoxelBlockGrid
        state = torch.load(str(path), map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or state.get("format") != "neural_mapping.map/1":
            raise ValueError(f"{path} is not a neural_mapping map file")
        grid = VoxelBlockGrid.from_state_dict(state["grid"], device=self.device,
                                              max_capacity=self.config.grid.max_capacity_blocks)
        if abs(grid.voxel_size_m - self.volume.grid.voxel_size_m) > 1e-12:
            raise ValueError(f"map voxel size {grid.voxel_size_m} m differs from the configured "
                             f"{self.volume.grid.voxel_size_m} m")

        def swap():
            self.volume.grid = grid
            self.version += 1
            self.mesh_cache.invalidate(grid, self.version)
            with self._model_cond:
                self._model = None
                self._models.clear()
        self._request(swap).result(timeout)

    def reset(self, timeout: Optional[float] = 30.0) -> None:
        """Clear the map and the trajectory (executed by the mapping thread)."""
        def do_reset():
            self.volume.grid.reset()
            self.version += 1
            self.mesh_cache.invalidate(self.volume.grid, self.version)
            self.frames_integrated = 0
            with self._model_cond:
                self._model = None
                self._models.clear()
                self._frames_to_map = 0
            self.trajectory.clear()
            self._last_T = self._prev_T = None
            self._correction = np.eye(4)
            self._refine_stamp = None
            self._consecutive_failures = 0
        self._request(do_reset).result(timeout)

    def stats(self) -> Dict[str, object]:
        with self._stats_lock:
            out: Dict[str, object] = dict(self.counters)
        out["frames_integrated"] = self.frames_integrated
        out["map_version"] = self.version
        out["blocks"] = self.volume.grid.num_blocks
        out["queue_frames"] = len(self._frame_q)
        out["queue_map"] = len(self._map_q)
        out.update(self.pose_buffer.drops_prefixed() if hasattr(self.pose_buffer, "drops_prefixed") else {})
        for k, v in self.latencies.items():
            if v:
                arr = np.asarray(v)
                out[f"latency_{k}_p50_ms"] = float(np.percentile(arr, 50) * 1e3)
                out[f"latency_{k}_p95_ms"] = float(np.percentile(arr, 95) * 1e3)
        return out

    def close(self, timeout: float = 10.0) -> None:
        """Stop intake, let the threads finish what they hold, join them (within ``timeout``)."""
        if self._closed:
            return
        self._closed = True
        self._frame_q.close()
        deadline = time.monotonic() + timeout
        self._threads[0].join(max(0.0, deadline - time.monotonic()))
        self._map_q.close()
        self._threads[1].join(max(0.0, deadline - time.monotonic()))
        with self._pose_cond:
            self._pose_cond.notify_all()
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise TimeoutError(f"threads {alive} did not stop within {timeout} s")
        self._raise_if_failed()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ============================================================ worker plumbing
    def _guard(self, loop):
        try:
            loop()
        except Closed:
            pass
        except BaseException as e:  # surfaced to the caller, never swallowed
            log.exception("worker %s failed", threading.current_thread().name)
            self._error = e
            self._frame_q.close()
            self._map_q.close()
            with self._model_cond:
                self._model_cond.notify_all()

    def _sync(self) -> None:
        if self.device.type == "cuda":  # honest timings on GPU
            torch.cuda.synchronize(self.device)

    def _raise_if_failed(self):
        if self._error is not None:
            raise WorkerError(f"a mapping worker failed: {self._error!r}") from self._error

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.counters[key] += n

    def _settle(self, delta: int) -> None:
        with self._model_cond:
            self._pending += delta
            if self._pending <= 0:
                self._model_cond.notify_all()

    def _on_frame_drop(self, frame) -> None:
        self._count("dropped_tracking_behind")
        self._settle(-1)

    def _on_map_drop(self, item) -> None:
        if item[0] != "request":
            self._count("dropped_mapping_behind")
            with self._model_cond:
                self._frames_to_map -= 1
                self._model_cond.notify_all()
            self._settle(-1)

    def _request(self, fn: Callable[[], object]) -> Future:
        fut: Future = Future()
        if self._threads[1].is_alive():
            self._map_q.put_urgent(("request", fn, fut))
        else:  # no mapping thread any more: we are the only writer
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)
        return fut

    # ============================================================ tracking thread
    def _tracking_loop(self):
        while True:
            # Tracking is expensive: in realtime mode it skips to the newest frame. External
            # poses are cheap, and a frame may briefly wait for its pose: keep the order then
            # (the bounded queue still drops the oldest under overload).
            frame = self._frame_q.get(newest=not self.strict and self.pose_source != "external")
            result = self._estimate_pose(frame)
            if result is not None:
                self._publish_pose(frame, result)
            if result is None or not result.ok:
                self._settle(-1)
                continue
            with self._model_cond:
                self._frames_to_map += 1
            self._map_q.put((frame, result.T_world_cam))

    def _wait_external(self, frame: RGBDFrame) -> Optional[np.ndarray]:
        """External pose at the frame's stamp: waits (never extrapolates), else expires (counted)."""
        deadline = time.monotonic() + self.config.system.pose_wait_timeout_s
        with self._pose_cond:
            while True:
                status, T = self.pose_buffer.query(frame.timestamp)
                if status == "ok":
                    return T
                if status != "wait":
                    self._count(f"dropped_pose_{status}")
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    self._count("dropped_pose_expired")
                    return None
                self._pose_cond.wait(remaining)

    def _model_for_tracking(self) -> Optional[ModelPrediction]:
        with self._model_cond:
            if not self.strict or self._frames_to_map == 0:
                return self._model
            # Deterministic: exactly the model holding the frames handed over so far minus the
            # configured lag (never fewer than one), whatever the mapping thread has done since.
            target = max(1, self._frames_to_map - self.config.system.model_lag_frames)
            while not any(m.frames_integrated == target for m in self._models) \
                    and self._error is None and not (self._map_q.closed and len(self._map_q) == 0
                                                     and not self._threads[1].is_alive()):
                self._model_cond.wait()
            for m in self._models:
                if m.frames_integrated == target:
                    return m
            return self._model

    def _estimate_pose(self, frame: RGBDFrame) -> Optional[PoseResult]:
        src = self.pose_source
        T_ext = None
        if src in ("external", "external+refine"):
            T_ext = self._wait_external(frame)
            if T_ext is None:
                return None
            if src == "external":
                return PoseResult(frame.index, frame.timestamp, T_ext, "external", True)
        model = self._model_for_tracking()
        if model is None:  # empty map: the first frame defines (or takes) the pose
            T0 = T_ext if T_ext is not None else (self._last_T if self._last_T is not None else np.eye(4))
            return PoseResult(frame.index, frame.timestamp, T0, "initial", True,
                              T_correction=np.eye(4) if T_ext is not None else None)
        if T_ext is not None:
            T_init = self._correction @ T_ext
        elif self._last_T is not None and self._prev_T is not None:
            T_init = self._last_T @ (np.linalg.inv(self._prev_T) @ self._last_T)  # constant velocity
        else:
            T_init = self._last_T if self._last_T is not None else model.T_world_cam
        t0 = time.perf_counter()
        tr = self.tracker.track(frame, model.raycast, T_init)
        self.timings["track"].append(time.perf_counter() - t0)
        if tr.ok:
            self._consecutive_failures = 0
            if T_ext is None:
                return PoseResult(frame.index, frame.timestamp, tr.T_world_cam, "tracked", True,
                                  info=tr.info())
            corr = self._filter_correction(tr.T_world_cam @ inv_pose(T_ext), frame.timestamp)
            return PoseResult(frame.index, frame.timestamp, corr @ T_ext, "refined", True,
                              T_correction=corr, info=tr.info())
        self._consecutive_failures += 1
        self._count("track_failures")
        lost = self._consecutive_failures >= self.config.system.lost_after_failures
        if lost and self._consecutive_failures == self.config.system.lost_after_failures:
            log.warning("tracking lost after %d consecutive failures (last: %s)",
                        self._consecutive_failures, tr.reason)
        fallback = T_ext if T_ext is not None else (self._last_T if self._last_T is not None else T_init)
        return PoseResult(frame.index, frame.timestamp, fallback, "lost" if lost else "failed", False,
                          info=tr.info())

    def _filter_correction(self, corr_tracked: np.ndarray, stamp: float) -> np.ndarray:
        """external+refine: move the map->odom correction towards the tracked one by
        ``dt / refine_time_constant_s`` (first-order low-pass on SE(3))."""
        tau = self.config.tracking.refine_time_constant_s
        last, self._refine_stamp = self._refine_stamp, stamp
        if tau <= 0 or last is None:
            return corr_tracked
        alpha = min(1.0, max(0.0, (stamp - last) / tau))
        return interpolate_pose(self._correction, corr_tracked, alpha)

    def _publish_pose(self, frame: RGBDFrame, result: PoseResult) -> None:
        result.latency_s = time.monotonic() - frame.meta.get("t_submit", time.monotonic())
        self.latencies["pose"].append(result.latency_s)
        if result.ok:
            if result.status == "refined" and result.T_correction is not None:
                self._correction = result.T_correction
            self._prev_T, self._last_T = self._last_T, result.T_world_cam
        self.trajectory.append(result)
        self._latest = result
        self._count("poses")
        if self.on_pose is not None:
            self.on_pose(result)

    # ============================================================= mapping thread
    def _mapping_loop(self):
        while True:
            item = self._map_q.get()
            if item[0] == "request":
                _, fn, fut = item
                try:
                    with self.map_lock:
                        fut.set_result(fn())
                except BaseException as e:
                    fut.set_exception(e)
                continue
            frame, T = item
            with self.map_lock:
                t0 = time.perf_counter()
                stats = self.volume.integrate(frame.depth, frame.intrinsics, T, frame.color)
                self._sync()
                t1 = time.perf_counter()
                self.version += 1
                self.mesh_cache.mark_dirty(self.volume.grid, stats.get("slots"), self.version)
                self.frames_integrated += 1
                prediction = None
                if self.tracker is not None:
                    prediction = self.tracker.predict(self.volume, frame.intrinsics, T, frame.depth)
                    self._sync()
                    self.timings["predict"].append(time.perf_counter() - t1)
                self.timings["integrate"].append(t1 - t0)
            now = time.monotonic()
            self.latencies["integrate"].append(now - frame.meta.get("t_submit", now))
            self._count("integrated")
            with self._model_cond:
                self._model = ModelPrediction(self.frames_integrated, self.version, T, prediction,
                                              frame.intrinsics)
                self._models.append(self._model)
                self._model_cond.notify_all()
            self._settle(-1)
            if self.on_integrated is not None:
                self.on_integrated(frame.index, self.version)


class _Locked:
    def __init__(self, lock, value):
        self._lock, self._value = lock, value

    def __enter__(self):
        self._lock.acquire()
        return self._value

    def __exit__(self, *exc):
        self._lock.release()
