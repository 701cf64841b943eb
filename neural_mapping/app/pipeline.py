"""Offline mapping pipeline: dataset in, map + trajectory + metrics + pictures out.

The same core as the ROS node (:class:`~neural_mapping.system.mapping_system.MappingSystem`),
fed from a dataset, in the config's default ``strict`` sync mode (every frame tracked then
integrated, in order: deterministic).  :func:`run` reads as a table of contents::

    ds = open_input(dataset)                     # synthetic / 7-Scenes / TUM / rosbag2
    with MappingSystem(cfg) as system:
        stats = map_sequence(ds, system)         # frames (+ external poses) in, poses out
        mesh, occupancy = map_products(system)   # mesh + 2D occupancy grid of the map
    metrics = collect_metrics(...)               # outputs.py: speed, map size, ATE/RPE
    write_map_files(...)                         # outputs.py: mesh.ply, poses.txt, config.yaml,
                                                 #   occupancy.pgm + occupancy.yaml
    write_pictures(...)                          # pictures.py: trajectory.png, occupancy.png,
                                                 #   view_{color,shaded}.png, view_last_*.png
    write_metrics(...)                           # outputs.py: metrics.json, once, last

The output files and metrics are listed in :mod:`neural_mapping.app.outputs` and
:mod:`neural_mapping.app.pictures`.

Pose sources: ``external`` integrates at the dataset's pose (ground truth),
``track`` estimates every pose by frame-to-model tracking (the dataset's poses
are used for evaluation only), ``external+refine`` refines the dataset's pose
(or ``input_pose(frame)``, e.g. a drifting odometry for benchmarks).
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from neural_mapping.app.outputs import collect_metrics, write_map_files, write_metrics
from neural_mapping.app.pictures import write_pictures
from neural_mapping.config import MappingConfig
from neural_mapping.datasets import Dataset, open_dataset
from neural_mapping.types import RGBDFrame

InputPose = Callable[[RGBDFrame], Optional[np.ndarray]]


def external_pose(frame: RGBDFrame) -> Optional[np.ndarray]:
    """The pose that came with the frame (dataset ground truth)."""
    return frame.pose


@dataclass
class RunResult:
    out_dir: Path
    metrics: Dict[str, object]      # see neural_mapping.app.outputs
    timestamps: np.ndarray          # [M] of the integrated frames
    poses: np.ndarray               # [M, 4, 4] T_world_cam used for them
    gt_poses: Optional[np.ndarray]  # [M, 4, 4] ground truth (NaN rows where none), or None
    backend: object                 # the map (backends.base.MapBackend), after the run
    mesh: object                    # products.meshing.Mesh
    occupancy: object = None        # products.occupancy.OccupancyGrid2D (None: no frame integrated)
    files: Dict[str, Path] = field(default_factory=dict)


# ------------------------------------------------------------------- the run
def run(dataset: Union[str, Path, Dataset], cfg: Optional[MappingConfig] = None,
        out_dir: Union[str, Path, None] = None, *, progress: bool = True,
        dataset_kwargs: Optional[dict] = None, render_views: bool = True,
        input_pose: InputPose = external_pose, view=None) -> RunResult:
    """Map ``dataset`` (a path, ``"synthetic"``, or an opened :class:`Dataset`) with ``cfg``.

    ``out_dir`` overrides ``cfg.run.output_dir``.  With a path, frames are selected with
    ``cfg.run.max_frames`` / ``cfg.run.frame_stride``; an opened dataset is used as it is
    (``max_frames`` still caps the loop).  ``input_pose`` gives the external pose of a frame
    (``external`` / ``external+refine``; default: the dataset's ground truth).  ``view``: a
    live view (``neural_mapping.view.session.ViewSession``) to attach to the system while mapping.
    """
    from neural_mapping.system.mapping_system import MappingSystem

    t_start = time.perf_counter()
    cfg = cfg if cfg is not None else MappingConfig()
    if out_dir is not None:
        cfg = MappingConfig.from_flat({"output_dir": str(out_dir)}, cfg)
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    ds = open_input(dataset, cfg, dataset_kwargs)
    with MappingSystem(cfg) as system:
        if view is not None:
            view.attach(system)
        try:
            stats = map_sequence(ds, system, cfg, input_pose, progress=progress)
        finally:
            if view is not None:
                view.detach()  # logs the final map before the products are computed
        mesh, mesh_ms, occupancy = map_products(system, cfg, stats["poses"])
    metrics = collect_metrics(ds, system.backend, cfg, stats, mesh, mesh_ms, occupancy)
    result = RunResult(out, metrics, stats["timestamps"], stats["poses"], stats["gt_poses"],
                       system.backend, mesh, occupancy)
    result.files.update(write_map_files(out, cfg, ds.name, mesh, result.timestamps, result.poses,
                                        occupancy))
    result.files.update(write_pictures(result, ds.name, ds.intrinsics, cfg, render_views))
    result.metrics["wall_s"] = time.perf_counter() - t_start
    result.files["metrics"] = write_metrics(out, result.metrics)
    return result


def open_input(dataset, cfg: MappingConfig, dataset_kwargs: Optional[dict] = None) -> Dataset:
    if isinstance(dataset, Dataset):
        return dataset
    kw = dict(dataset_kwargs or {})
    if str(dataset).strip().lower() == "synthetic":
        kw.setdefault("seed", cfg.run.seed)
    return open_dataset(dataset, max_frames=cfg.run.max_frames or None, stride=cfg.run.frame_stride, **kw)


def map_sequence(ds: Dataset, system, cfg: MappingConfig, input_pose: InputPose = external_pose,
                 progress: bool = True, prefetch: int = 2) -> Dict[str, object]:
    """The frame loop: hand poses and frames to the system (frames loaded ``prefetch`` ahead,
    see :func:`prefetched`), wait for it to finish; the trajectory and timings it produced.
    ``load_ms`` is the time the loop waited for a frame."""
    from tqdm import tqdm

    n = min(len(ds), cfg.run.max_frames) if cfg.run.max_frames else len(ds)
    needs_pose = cfg.run.pose_source in ("external", "external+refine")
    gt_by_index: Dict[int, Optional[np.ndarray]] = {}
    load_ms: List[float] = []
    skipped = 0
    t_loop = time.perf_counter()
    with tqdm(total=n, unit="frame", desc=f"mapping {ds.name}", disable=not progress,
              dynamic_ncols=True, leave=True) as bar, closing(prefetched(ds, n, prefetch)) as frames:
        for i, (frame, wait_ms) in enumerate(frames):
            load_ms.append(wait_ms)
            gt_by_index[frame.index] = frame.pose
            bar.update(1)
            if i % 10 == 0:
                bar.set_postfix(blocks=system.backend.grid.num_blocks, refresh=False)
            if needs_pose:
                T_in = input_pose(frame)
                if T_in is None:
                    skipped += 1
                    continue
                system.submit_pose(frame.timestamp, T_in)
            system.submit(frame)  # strict mode: blocks while the tracker is busy
        system.flush()
    loop_s = time.perf_counter() - t_loop
    done = [p for p in system.trajectory if p.ok]
    gts = [gt_by_index.get(p.index) for p in done]
    has_gt = ds.has_ground_truth and any(g is not None for g in gts)
    return {
        "timestamps": np.asarray([p.stamp for p in done], dtype=np.float64),
        "poses": np.stack([p.T_world_cam for p in done]) if done else np.zeros((0, 4, 4)),
        "gt_poses": np.stack([g if g is not None else np.full((4, 4), np.nan) for g in gts])
        if (done and has_gt) else None,
        "frames": len(done), "frames_total": n, "frames_skipped_no_pose": skipped,
        "tracking_failures": sum(1 for p in system.trajectory if not p.ok),
        "relocalisations": sum(1 for p in system.trajectory if p.status == "relocalised"),
        "loop_s": loop_s, "load_ms": load_ms,
        "integrate_ms": [1000 * t for t in system.timings["integrate"]],
        "track_ms": [1000 * t for t in system.timings["track"]],
        "predict_ms": [1000 * t for t in system.timings["predict"]],
    }


def prefetched(ds: Dataset, n: int, ahead: int = 2) -> Iterator[Tuple[RGBDFrame, float]]:
    """``(ds[i], ms waited for it)`` for ``i < n``, loaded ``ahead`` frames in advance by a
    background thread (decoding / rendering overlaps mapping).  Close it when done early."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frame-loader")
    pending = deque(pool.submit(ds.__getitem__, i) for i in range(min(max(1, ahead), n)))
    nxt = len(pending)
    try:
        while pending:
            t0 = time.perf_counter()
            frame = pending.popleft().result()
            wait_ms = 1000 * (time.perf_counter() - t0)
            if nxt < n:
                pending.append(pool.submit(ds.__getitem__, nxt))
                nxt += 1
            yield frame, wait_ms
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True)


def map_products(system, cfg: MappingConfig, poses: np.ndarray) -> Tuple[object, float, object]:
    """``(mesh, mesh_ms, occupancy)`` of the finished map: the full mesh
    (``system.mesh()``) and the 2D occupancy grid in the map frame the config derives from the
    first pose (``None`` without an integrated frame)."""
    from neural_mapping.products.occupancy import map_transform_from_config, occupancy_grid_2d

    t0 = time.perf_counter()
    mesh = system.mesh()
    mesh_ms = 1000 * (time.perf_counter() - t0)
    occupancy = None
    if len(poses):
        T_world_map = map_transform_from_config(cfg, poses[0])
        with system.read_map() as voxels:
            occupancy = occupancy_grid_2d(voxels, cfg, T_world_map)
    return mesh, mesh_ms, occupancy
