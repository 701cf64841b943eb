"""The mapping system: a tracking thread and a mapping thread around one :class:`~neural_mapping.system.step.Mapper`.

::

    submit(frame) ──► [frame queue] ──► tracking thread ──► [map queue] ──► mapping thread
    submit_pose(stamp, T) ─► PoseBuffer ─┘  Mapper.estimate_pose       Mapper.integrate: backend.integrate,
                                               │ PoseResult              version++, mesh dirty marks,
                                               ▼ on_pose                 next model view (backend.render)

* The mapping thread is the map's only writer.  Readers (``mesh()``, ``read_map()``, ``snapshot()``,
  ``save()``) hold ``map_lock`` while they read or copy (a consistent map between two integrations);
  other writers (``reset()``, ``load()``, ``reconfigure()``) are executed *by* the mapping thread.
* Queues are bounded.  ``sync_mode='strict'`` (the default: library and offline use):
  nothing is dropped, ``submit`` blocks, every frame is tracked and integrated in order
  (deterministic).  ``sync_mode='realtime'`` (the ROS node): full queues drop their oldest item, the
  tracker takes the newest frame (drops counted by reason), the trajectory keeps the last
  ``trajectory_max_poses``.
* External poses: :mod:`~neural_mapping.system.external_poses`.  All waiting is on conditions/queues
  (no sleep-polling).  A worker's exception is ``error``, re-raised by ``submit``/``close``/``flush``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Deque, Dict, Iterator, Optional

import numpy as np
import torch

from neural_mapping.config import MappingConfig
from neural_mapping.grid.field import VoxelField
from neural_mapping.system.map_file import (MapSnapshot, copy_tensors, map_document, read_map_document,
                                            write_map_document)
from neural_mapping.system.external_poses import ExternalPoses
from neural_mapping.system.pose_policy import PoseResult
from neural_mapping.system.queues import Closed, DropOldestQueue
from neural_mapping.system.stage_times import StageTimes, keep_freed_memory, lower_thread_priority, percentiles_ms
from neural_mapping.system.step import Mapper, ModelPrediction, runtime_changes
from neural_mapping.types import RGBDFrame

log = logging.getLogger(__name__)

class WorkerError(RuntimeError):
    """A tracking or mapping worker died; the original exception is ``__cause__``."""


@dataclass
class _Job:
    """A submitted frame on its way through the queues (the caller's frame is never modified)."""

    frame: RGBDFrame
    t_submit: float
    T_world_cam: Optional[np.ndarray] = None
    t_tracked: float = 0.0  # when it entered the map queue


class MappingSystem:
    """Core mapping API: ``submit(frame)``, ``submit_pose``, ``latest_pose``, ``mesh``, ``mesh_update``,
    ``snapshot``, ``read_map``, ``save``/``load``, ``reset``, ``reconfigure``, ``flush``, ``close``."""

    def __init__(self, config: Optional[MappingConfig] = None,
                 on_pose: Optional[Callable[[PoseResult], None]] = None,
                 on_integrated: Optional[Callable[[int, int], None]] = None):
        self.config = config or MappingConfig()
        self.config.validate()
        cfg = self.config
        if cfg.system.torch_threads > 0:  # process-wide (torch has no per-thread setting)
            torch.set_num_threads(cfg.system.torch_threads)
        keep_freed_memory(cfg.system.malloc_keep_freed_mb)  # process-wide, like the threads
        self.strict = cfg.system.sync_mode == "strict"
        self.pose_source = cfg.run.pose_source
        self.mapper = Mapper(cfg)
        self.on_pose = on_pose
        self.on_integrated = on_integrated
        self.external_poses = ExternalPoses(cfg.system.pose_buffer_s, self._count)

        self.map_lock = threading.RLock()
        self._frames_to_map = 0  # frames handed to the mapping thread (strict-mode sync)
        self._pending = 0  # submitted frames not yet integrated or dropped (flush)
        self._model: Optional[ModelPrediction] = None
        # strict mode with model_lag_frames: the last few predictions, by frames_integrated
        self._models: Deque[ModelPrediction] = collections.deque(maxlen=cfg.system.model_lag_frames + 1)
        self._model_cond = threading.Condition()
        self._stats_lock = threading.Lock()
        self.counters: Dict[str, int] = collections.Counter()
        self.latencies = StageTimes(("pose", "integrate"))  # from submit
        # time in each queue, and the threads' CPU time per frame (less than the stage's wall
        # time when the thread waits for a core or the GIL)
        self.stage_times = StageTimes(("queue_frames", "queue_map", "track_cpu", "map_cpu"))
        # every pose offline; the last trajectory_max_poses on a live robot
        self.trajectory: Deque[PoseResult] = collections.deque(
            maxlen=None if self.strict else cfg.system.trajectory_max_poses)
        self._latest: Optional[PoseResult] = None
        self._error: Optional[BaseException] = None
        self._closed = False

        block = self.strict
        self._frame_q = DropOldestQueue(cfg.system.frame_queue_size, block_when_full=block,
                                        name="frames", on_drop=self._on_frame_drop)
        self._map_q = DropOldestQueue(cfg.system.map_queue_size, block_when_full=block,
                                      name="map", on_drop=self._on_map_drop)
        self._threads = [threading.Thread(target=self._guard, args=(self._tracking_loop,),
                                          name="nm-tracking", daemon=True),
                         threading.Thread(target=self._guard, args=(self._mapping_loop,
                                                                    cfg.system.mapping_thread_nice),
                                          name="nm-mapping", daemon=True)]
        for t in self._threads:
            t.start()

    # ---------------------------------------------------------------- read-only views
    @property
    def backend(self):
        """The map backend (:class:`~neural_mapping.backends.base.MapBackend`); read it under
        ``map_lock`` (or use ``read_map()`` / ``snapshot()``)."""
        return self.mapper.backend

    @property
    def device(self) -> torch.device:
        return self.mapper.backend.device

    @property
    def version(self) -> int:
        return self.mapper.version

    @property
    def frames_integrated(self) -> int:
        return self.mapper.frames_integrated

    @property
    def timings(self) -> Dict[str, Deque[float]]:
        return self.mapper.timings

    # ================================================================ public API
    def submit(self, frame: RGBDFrame, timeout: Optional[float] = None) -> bool:
        """Hand a frame to the tracking thread. In strict mode blocks while the queue is full."""
        self._raise_if_failed()
        if not isinstance(frame, RGBDFrame):
            raise TypeError(f"submit() takes an RGBDFrame, got {type(frame).__name__}")
        self._count("received")
        self._settle(+1)
        if not self._frame_q.put(_Job(frame, time.monotonic()), timeout=timeout):
            self._settle(-1)
            return False
        return True

    def submit_pose(self, stamp: float, T_world_cam) -> bool:
        """External pose (camera-to-world) at ``stamp`` seconds. Bad poses are dropped and counted."""
        return self.external_poses.add(stamp, T_world_cam)

    def latest_pose(self) -> Optional[PoseResult]:
        return self._latest

    @property
    def error(self) -> Optional[BaseException]:  # the exception a worker died of, None while both run
        return self._error

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

    @contextmanager
    def read_map(self) -> Iterator[VoxelField]:
        """``with system.read_map() as field:`` the live field, under the map lock."""
        with self.map_lock:
            yield self.mapper.backend.field()

    def mesh(self):
        """Full mesh of the current map (numpy arrays, see ``meshing.Mesh``)."""
        from neural_mapping.products.meshing import extract_mesh
        with self.map_lock:
            return extract_mesh(self.mapper.backend.field())

    def mesh_update(self, max_blocks: Optional[int] = None):
        """Re-mesh the blocks integration changed since the last call (the ``max_blocks``
        oldest if given): a :class:`~neural_mapping.products.meshing.MeshUpdate` with the changed
        and emptied blocks.  After ``reset()``/``load()`` it reports every block meshed
        before as emptied and re-meshes the whole new map."""
        with self.map_lock:
            return self.mapper.mesh_cache.update(self.mapper.backend.field(), max_blocks)

    def snapshot(self) -> MapSnapshot:
        """The map as of now, as the reader's own copy: meshing, querying or saving it never
        blocks the mapping thread (only the copy is made under ``map_lock``)."""
        with self.map_lock:
            return MapSnapshot(self.version, self.frames_integrated,
                               self.mapper.backend.field(copy=True))

    def save(self, path, frame_id: str = "") -> None:
        """Save the map, its config and the trajectory (:mod:`~neural_mapping.system.map_file`;
        copied under the lock, written after it, so a save never stalls mapping for the disk)."""
        with self.map_lock:
            backend = self.mapper.backend
            doc = map_document(backend.name, copy_tensors(backend.state_dict()), self.config.to_flat(),
                               self.version, list(self.trajectory), frame_id)
        write_map_document(doc, path)

    def load(self, path, timeout: Optional[float] = 30.0, frame_id: str = "") -> None:
        """Replace the map by a saved one (executed by the mapping thread).  Reading never runs
        code from the file; a foreign or mismatched map raises ``ValueError`` and leaves the
        current map as it was."""
        doc = read_map_document(path, self.mapper.backend.name, self.config.to_flat(), frame_id)
        self._request(lambda: self.mapper.replace_map(doc["map"])).result(timeout)
        with self._model_cond:
            self._model = None
            self._models.clear()

    def reset(self, timeout: Optional[float] = 30.0) -> None:
        """Clear the map and the trajectory (executed by the mapping thread)."""
        def do_reset():
            self.mapper.replace_map(None)
            with self._model_cond:
                self._model = None
                self._models.clear()
                self._frames_to_map = 0
            self.trajectory.clear()
        self._request(do_reset).result(timeout)

    def reconfigure(self, values: Dict[str, object], timeout: Optional[float] = 30.0,
                    wait: bool = True) -> MappingConfig:
        """Change ``step.RUNTIME_FIELDS`` and tracking settings at run time (flat names, e.g.
        ``{"depth_max_m": 2.5}``), validated as a whole (``ValueError``: nothing changes), applied
        by the mapping thread before the next integration; ``wait=False`` returns once queued
        (a ROS callback must not wait for an integration).  Returns the new config."""
        new, changed = runtime_changes(self.config, values)

        def apply():
            self.mapper.reconfigure(new, changed)
            self.config = new
        if changed:
            fut = self._request(apply)
            if wait:
                fut.result(timeout)
            else:  # a failure is logged (validation above already caught the invalid)
                fut.add_done_callback(lambda f: f.exception() and log.error(
                    "runtime config change %s failed: %r", changed, f.exception()))
        return new

    def stats(self) -> Dict[str, object]:
        with self._stats_lock:
            out: Dict[str, object] = dict(self.counters)
        out.update(frames_integrated=self.frames_integrated, map_version=self.version,
                   blocks=self.mapper.backend.grid.num_blocks)
        out["queue_frames"] = len(self._frame_q)
        out["queue_map"] = len(self._map_q)
        out["tracking_lost"] = self.mapper.policy.lost
        out.update(self.external_poses.buffer.drops_prefixed(), **self.mapper.bounds.stats())
        out.update(self.latencies.percentiles("latency_"))
        # where a frame's time goes: waiting in each queue, and each stage's compute time
        out.update(self.stage_times.percentiles("stage_"))
        out.update(percentiles_ms("stage_", self.mapper.timings))
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
        self.external_poses.close()
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise TimeoutError(f"threads {alive} did not stop within {timeout} s")
        self._raise_if_failed()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ============================================================ worker plumbing
    def _guard(self, loop, nice: int = 0):
        if nice > 0:
            lower_thread_priority(nice)
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

    def _on_frame_drop(self, job) -> None:
        self._count("dropped_tracking_behind")
        self._settle(-1)

    def _on_map_drop(self, item) -> None:
        if isinstance(item, _Job):
            self._count("dropped_mapping_behind")
            with self._model_cond:
                self._frames_to_map -= 1
                self._model_cond.notify_all()
            self._settle(-1)

    def _request(self, fn: Callable[[], object]) -> Future:
        fut: Future = Future()
        if self._threads[1].is_alive():
            self._map_q.put_urgent((fn, fut))
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
            job = self._frame_q.get(newest=not self.strict and self.pose_source != "external")
            self.stage_times.add("queue_frames", time.monotonic() - job.t_submit)
            T_ext = None
            if self.pose_source != "track":
                T_ext = self.external_poses.pose_for(job.frame, self.config.system.pose_wait_timeout_s)
                if T_ext is None:
                    self._settle(-1)
                    continue
            with self.stage_times.cpu("track_cpu"):
                result = self.mapper.estimate_pose(job.frame, T_ext, self._model_for_tracking())
            self._publish_pose(job, result)
            if not result.ok:
                self._settle(-1)
                continue
            with self._model_cond:
                self._frames_to_map += 1
            job.T_world_cam = result.T_world_cam
            job.t_tracked = time.monotonic()
            self._map_q.put(job)

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

    def _publish_pose(self, job: _Job, result: PoseResult) -> None:
        result.latency_s = time.monotonic() - job.t_submit
        self.latencies["pose"].append(result.latency_s)
        if not result.ok or result.status == "relocalised":
            self._count("track_failures" if not result.ok else "relocalisations")
        self.trajectory.append(result)
        self._latest = result
        self._count("poses")
        if self.on_pose is not None:
            self.on_pose(result)

    # ============================================================= mapping thread
    def _mapping_loop(self):
        while True:
            item = self._map_q.get()
            if not isinstance(item, _Job):  # a request: (fn, future)
                fn, fut = item
                try:
                    with self.map_lock:
                        fut.set_result(fn())
                except BaseException as e:
                    fut.set_exception(e)
                continue
            self.stage_times.add("queue_map", time.monotonic() - item.t_tracked)
            with self.map_lock, self.stage_times.cpu("map_cpu"):
                model = self.mapper.integrate(item.frame, item.T_world_cam)
            now = time.monotonic()
            self.latencies["integrate"].append(now - item.t_submit)
            self._count("integrated")
            with self._model_cond:
                self._model = model
                self._models.append(model)
                self._model_cond.notify_all()
            self._settle(-1)
            if self.on_integrated is not None:
                self.on_integrated(item.frame.index, model.version)
