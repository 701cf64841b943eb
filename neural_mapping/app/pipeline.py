"""Offline mapping pipeline: dataset in, map + trajectory + metrics + pictures out.

The same core as the ROS node (:class:`~neural_mapping.system.mapping_system.MappingSystem`,
tracking thread + mapping thread), fed from a dataset in ``strict`` sync mode
(every frame tracked then integrated, in order: deterministic).
:func:`run` reads as a table of contents::

    dataset = open_dataset(...)            # synthetic / 7-Scenes / TUM
    system  = MappingSystem(cfg)           # map + tracker + threads
    for frame in dataset:                  # progress bar with frames/s
        system.submit_pose(stamp, pose)    # pose_source external / external+refine
        system.submit(frame)
    mesh = extract_mesh(volume.grid)
    write_outputs(...)                     # mesh.ply, poses.txt, config.yaml,
                                           # metrics.json, trajectory.png, view_*.png

Output folder (``cfg.run.output_dir``):

=====================  ==========================================================
``mesh.ply``           marching-cubes mesh with vertex colours
``poses.txt``          TUM trajectory (``t tx ty tz qx qy qz qw``, camera-to-world) of
                       the integrated frames; dataset timestamps (7-Scenes,
                       synthetic: frame number / 30 s)
``config.yaml``        the effective configuration (loads back with
                       ``MappingConfig.from_yaml``)
``metrics.json``       frame counts, speed, mesh and map size, ATE/RPE when the
                       dataset has ground truth (see :data:`METRIC_KEYS`)
``trajectory.png``     top view of the trajectory vs ground truth
``view_color.png``,    raycasts of the map from a bird's-eye pose looking at the
``view_shaded.png``    scene centre (colour / Lambert-shaded normals)
``view_last_color.png``, ``view_last_shaded.png``: the same from the last camera pose
=====================  ==========================================================

Pose sources: ``external`` integrates at the dataset's pose (ground truth),
``track`` estimates every pose by frame-to-model tracking (the dataset's poses
are used for evaluation only), ``external+refine`` refines the dataset's pose
(or ``input_pose(frame)``, e.g. a drifting odometry for benchmarks).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import numpy as np

from neural_mapping.config import MappingConfig
from neural_mapping.datasets import Dataset, open_dataset
from neural_mapping.io.images import save_png, write_json, write_tum_trajectory
from neural_mapping.types import CameraIntrinsics, RGBDFrame

log = logging.getLogger(__name__)

InputPose = Callable[[RGBDFrame], Optional[np.ndarray]]

METRIC_KEYS = ("dataset", "frames", "frames_total", "frames_skipped_no_pose", "fps", "integrate_fps",
               "integrate_ms_mean", "integrate_ms_median", "integrate_ms_max", "load_wait_ms_mean",
               "mesh_ms", "mesh_vertices", "mesh_triangles", "voxel_size_m", "blocks",
               "memory_mb", "device", "pose_source", "wall_s")


def external_pose(frame: RGBDFrame) -> Optional[np.ndarray]:
    """The pose that came with the frame (dataset ground truth)."""
    return frame.pose


# --------------------------------------------------------------------- result
@dataclass
class RunResult:
    out_dir: Path
    metrics: Dict[str, object]
    timestamps: np.ndarray          # [M] of the integrated frames
    poses: np.ndarray               # [M, 4, 4] T_world_cam used for them
    gt_poses: Optional[np.ndarray]  # [M, 4, 4] ground truth (NaN rows where none), or None
    volume: object                  # TSDFVolume
    mesh: object                    # meshing.Mesh
    files: Dict[str, Path] = field(default_factory=dict)


# ------------------------------------------------------------------- the run
def run(dataset: Union[str, Path, Dataset], cfg: Optional[MappingConfig] = None,
        out_dir: Union[str, Path, None] = None, *, progress: bool = True,
        dataset_kwargs: Optional[dict] = None, render_views: bool = True,
        input_pose: InputPose = external_pose) -> RunResult:
    """Map ``dataset`` (a path, ``"synthetic"``, or an opened :class:`Dataset`) with ``cfg``.

    ``out_dir`` overrides ``cfg.run.output_dir``.  With a path, frames are selected with
    ``cfg.run.max_frames`` / ``cfg.run.frame_stride``; an opened dataset is used as it is
    (``max_frames`` still caps the loop).  ``input_pose`` gives the external pose of a frame
    (``external`` / ``external+refine``; default: the dataset's ground truth).
    """
    from neural_mapping.products.meshing import extract_mesh
    from neural_mapping.system.mapping_system import MappingSystem

    cfg = cfg if cfg is not None else MappingConfig()
    if out_dir is not None:
        cfg = MappingConfig.from_flat({"output_dir": str(out_dir)}, cfg)
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    ds = open_input(dataset, cfg, dataset_kwargs)
    system = MappingSystem(cfg)
    try:
        stats = map_sequence(ds, system, cfg, input_pose, progress=progress)
    finally:
        system.close()
    volume = system.volume

    t0 = time.perf_counter()
    mesh = extract_mesh(volume.grid)
    mesh_ms = 1000 * (time.perf_counter() - t0)

    metrics = collect_metrics(ds, volume, cfg, stats, mesh, mesh_ms)
    result = RunResult(out, metrics, stats["timestamps"], stats["poses"], stats["gt_poses"], volume, mesh)
    write_outputs(result, ds, cfg, render_views=render_views)
    result.metrics["wall_s"] = time.perf_counter() - t_start
    write_json(out / "metrics.json", result.metrics)
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
    """The frame loop: load (``prefetch`` frames ahead in a background thread, so decoding /
    rendering overlaps mapping), hand poses and frames to the system, wait for it to finish.
    ``load_ms`` is the time the loop waited for a frame."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    n = len(ds)
    if cfg.run.max_frames:
        n = min(n, cfg.run.max_frames)
    needs_pose = cfg.run.pose_source in ("external", "external+refine")
    gt_by_index: Dict[int, Optional[np.ndarray]] = {}
    load_ms: List[float] = []
    skipped = 0
    bar = tqdm(total=n, unit="frame", desc=f"mapping {ds.name}", disable=not progress,
               dynamic_ncols=True, leave=True)
    t_loop = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frame-loader")
    pending: deque = deque()
    try:
        for i in range(min(max(1, prefetch), n)):
            pending.append(pool.submit(ds.__getitem__, i))
        for i in range(n):
            t0 = time.perf_counter()
            frame = pending.popleft().result()
            nxt = i + len(pending) + 1
            if nxt < n:
                pending.append(pool.submit(ds.__getitem__, nxt))
            load_ms.append(1000 * (time.perf_counter() - t0))
            gt_by_index[frame.index] = frame.pose
            if needs_pose:
                T_in = input_pose(frame)
                if T_in is None:
                    skipped += 1
                    bar.update(1)
                    continue
                system.submit_pose(frame.timestamp, T_in)
            system.submit(frame)  # strict mode: blocks while the tracker is busy
            bar.update(1)
            if i % 10 == 0:
                bar.set_postfix(blocks=system.volume.grid.num_blocks, refresh=False)
        system.flush()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True)
        bar.close()
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
        "loop_s": loop_s, "load_ms": load_ms,
        "integrate_ms": [1000 * t for t in system.timings["integrate"]],
        "track_ms": [1000 * t for t in system.timings["track"]],
        "predict_ms": [1000 * t for t in system.timings["predict"]],
    }


def collect_metrics(ds: Dataset, volume, cfg: MappingConfig, stats: dict, mesh, mesh_ms: float) -> dict:
    from neural_mapping.io.evaluation import trajectory_metrics

    integ = np.asarray(stats["integrate_ms"], dtype=np.float64)
    load = np.asarray(stats["load_ms"], dtype=np.float64)
    frames = int(stats["frames"])
    nan = float("nan")
    m: Dict[str, object] = {
        "dataset": ds.name,
        "frames": frames,
        "frames_total": int(stats["frames_total"]),
        "frames_skipped_no_pose": int(stats["frames_skipped_no_pose"]),
        "fps": frames / stats["loop_s"] if stats["loop_s"] > 0 else nan,
        "integrate_fps": float(1000.0 / integ.mean()) if frames else nan,
        "integrate_ms_mean": float(integ.mean()) if frames else nan,
        "integrate_ms_median": float(np.median(integ)) if frames else nan,
        "integrate_ms_max": float(integ.max()) if frames else nan,
        "load_wait_ms_mean": float(load.mean()) if frames else nan,
        "mesh_ms": mesh_ms,
        "mesh_vertices": int(len(mesh.vertices)),
        "mesh_triangles": int(len(mesh.triangles)),
        "voxel_size_m": volume.voxel_size_m,
        "blocks": int(volume.grid.num_blocks),
        "memory_mb": volume.grid.memory_bytes() / 2 ** 20,
        "device": str(volume.device),
        "pose_source": cfg.run.pose_source,
        "sync_mode": cfg.system.sync_mode,
        "tracking_failures": int(stats.get("tracking_failures", 0)),
        "track_ms_mean": float(np.mean(stats["track_ms"])) if stats.get("track_ms") else nan,
        "predict_ms_mean": float(np.mean(stats["predict_ms"])) if stats.get("predict_ms") else nan,
        "image_size": [ds.intrinsics.width, ds.intrinsics.height],
    }
    gt = stats.get("gt_poses")
    if gt is not None and frames:
        m.update(trajectory_metrics(stats["poses"], gt, stats["timestamps"]))
    return m


# -------------------------------------------------------------------- outputs
def write_outputs(result: RunResult, ds: Dataset, cfg: MappingConfig, render_views: bool = True) -> None:
    from neural_mapping.io.evaluation import evaluation_title, plot_trajectories
    from neural_mapping.products.meshing import write_ply

    out = result.out_dir
    files = result.files
    files["mesh"] = out / "mesh.ply"
    write_ply(result.mesh, files["mesh"])
    files["poses"] = out / "poses.txt"
    write_tum_trajectory(files["poses"], result.timestamps, result.poses,
                         header=f"{ds.name}, pose_source={cfg.run.pose_source}")
    files["config"] = out / "config.yaml"
    cfg.dump_yaml(files["config"])
    files["trajectory_plot"] = out / "trajectory.png"
    if len(result.poses):
        plot_trajectories(files["trajectory_plot"], result.gt_poses, result.poses,
                          title=evaluation_title(ds.name, result.metrics),
                          labels=("ground truth", f"poses ({cfg.run.pose_source})"))
    if render_views and len(result.poses):
        files.update(render_map_views(result, ds, cfg))
    if len(result.poses):
        files.update(write_occupancy(result, cfg))
    files["metrics"] = out / "metrics.json"
    write_json(files["metrics"], result.metrics)


def write_occupancy(result: RunResult, cfg: MappingConfig) -> Dict[str, Path]:
    """``occupancy.pgm`` + ``occupancy.yaml`` (Nav2 map_server format, map frame) and
    ``occupancy.png`` (free white, occupied black, unknown grey; north up)."""
    from neural_mapping.products.occupancy import map_transform_from_config, occupancy_grid_2d, save_nav2_map

    out = result.out_dir
    T_world_map = map_transform_from_config(cfg, result.poses[0])
    grid = occupancy_grid_2d(result.volume, cfg, T_world_map)
    counts = grid.counts()
    result.metrics.update({f"occupancy_{k}_cells": int(v) for k, v in counts.items()})
    result.metrics["occupancy_resolution_m"] = float(grid.resolution_m)
    pgm, yml = save_nav2_map(grid, out / "occupancy")
    data = np.asarray(grid.data)[::-1]  # image top row = largest y
    img = np.full(data.shape + (3,), 160, np.uint8)
    img[data == 0] = 255
    img[data == 100] = 0
    scale = max(1, int(np.ceil(400 / max(1, max(data.shape)))))
    img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    png = out / "occupancy.png"
    save_png(png, img)
    return {"occupancy_pgm": pgm, "occupancy_yaml": yml, "occupancy_png": png}


def _as_numpy(x):
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _color_image(color) -> np.ndarray:
    """float 0..255 (raycast colour) or uint8 -> uint8."""
    c = _as_numpy(color)
    if c.dtype != np.uint8:
        c = np.rint(np.clip(np.nan_to_num(c.astype(np.float32)), 0, 255)).astype(np.uint8)
    return c


def estimate_up(poses: np.ndarray) -> np.ndarray:
    """World "up" guessed from the cameras: the mean of their -y axes (cameras are held
    roughly upright; optical convention y down)."""
    up = -poses[:, :3, 1].mean(axis=0)
    n = np.linalg.norm(up)
    return up / n if n > 0.3 else np.array([0.0, 0.0, 1.0])


def look_at(eye, target, up) -> np.ndarray:
    """``T_world_cam`` (optical convention) at ``eye`` looking at ``target`` with ``up`` on top."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    fwd = target - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    if np.linalg.norm(right) < 1e-6:  # looking along up: pick any perpendicular
        right = np.cross(fwd, [1.0, 0.0, 0.0] if abs(fwd[0]) < 0.9 else [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = right, down, fwd, eye
    return T


def birds_eye_view(points: np.ndarray, cam_poses: np.ndarray, width: int, height: int,
                   elevation_deg: float = 60.0):
    """``(intrinsics, T_world_cam, depth_max_m)`` of a view from above-and-behind the cameras
    looking at the centre of ``points`` (robust bounding box), fitting them in the image."""
    up = estimate_up(cam_poses)
    pts = points if len(points) else cam_poses[:, :3, 3]
    side = cam_poses[:, :3, 3].mean(axis=0) - np.median(pts, axis=0)
    side -= up * (side @ up)
    if np.linalg.norm(side) < 1e-3:
        side = -cam_poses[0, :3, 2] - up * (-cam_poses[0, :3, 2] @ up)
    if np.linalg.norm(side) < 1e-3:
        side = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    side /= np.linalg.norm(side)
    # robust bounding box in a gravity-aligned frame (side, up x side, up)
    A = np.stack([side, np.cross(up, side), up], axis=1)
    local = pts @ A
    lo, hi = np.percentile(local, 1, axis=0), np.percentile(local, 99, axis=0)
    centre = A @ (0.5 * (lo + hi))
    radius = max(0.5 * float(np.linalg.norm(hi - lo)), 0.25)
    corners = np.array([A @ [x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    f = 0.9 * width
    K = CameraIntrinsics(width, height, f, f, (width - 1) / 2, (height - 1) / 2)
    el = math.radians(elevation_deg)
    direction = math.cos(el) * side + math.sin(el) * up

    def fits(dist: float) -> bool:
        T = look_at(centre + dist * direction, centre, up)
        p = (corners - T[:3, 3]) @ T[:3, :3]
        if np.any(p[:, 2] <= 1e-3):
            return False
        u = f * p[:, 0] / p[:, 2] + K.cx
        v = f * p[:, 1] / p[:, 2] + K.cy
        mu, mv = 0.04 * width, 0.04 * height
        return bool(np.all((u >= mu) & (u <= width - 1 - mu) & (v >= mv) & (v <= height - 1 - mv)))

    # the bounding sphere always fits; shrink towards the box's own footprint in the image
    dist = radius / math.sin(math.atan(min(width, height) / 2 / f)) * 1.05
    while dist > 0.3 * radius and fits(dist * 0.95):
        dist *= 0.95
    return K, look_at(centre + dist * direction, centre, up), dist + 2 * radius


def render_map_views(result: RunResult, ds: Dataset, cfg: MappingConfig) -> Dict[str, Path]:
    """``view_{color,shaded}.png`` (bird's eye) and ``view_last_{color,shaded}.png``."""
    from neural_mapping.grid.raycast import raycast, render_shaded

    out = result.out_dir
    W = cfg.run.render_width_px
    H = max(1, int(round(W * 3 / 4)))
    verts = _as_numpy(result.mesh.vertices).reshape(-1, 3)
    K, T, dmax = birds_eye_view(verts, result.poses, W, H)
    last_K = ds.intrinsics.scaled(W / ds.intrinsics.width)
    views = {"view": (K, T, max(dmax, cfg.integration.depth_max_m)),
             "view_last": (last_K, result.poses[-1], cfg.integration.depth_max_m * 1.5)}
    files: Dict[str, Path] = {}
    for name, (K, T, dmax) in views.items():
        rc = raycast(result.volume.field(), K, T, depth_min_m=0.05, depth_max_m=float(dmax))
        files[f"{name}_color"] = out / f"{name}_color.png"
        files[f"{name}_shaded"] = out / f"{name}_shaded.png"
        valid = _as_numpy(rc.valid).astype(bool)[..., None]
        save_png(files[f"{name}_color"], np.where(valid, _color_image(rc.color), 0).astype(np.uint8))
        save_png(files[f"{name}_shaded"], _color_image(render_shaded(rc, use_color=False)))
    return files
