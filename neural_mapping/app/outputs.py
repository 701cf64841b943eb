"""What an offline run reports and writes besides pictures: its metrics and the map files.

Map files (``cfg.run.output_dir``):

=====================  ==========================================================
``mesh.ply``           marching-cubes mesh with vertex colours
``poses.txt``          TUM trajectory (``t tx ty tz qx qy qz qw``, camera-to-world) of
                       the integrated frames; dataset timestamps (7-Scenes,
                       synthetic: frame number / 30 s)
``config.yaml``        the effective configuration (loads back with
                       ``MappingConfig.from_yaml``)
``occupancy.pgm``,     2D occupancy grid of the map in Nav2 ``map_server`` format
``occupancy.yaml``     (map frame: ``occupancy`` config section)
``metrics.json``       :func:`collect_metrics`, written once, last
=====================  ==========================================================

Metrics (``metrics.json``, ``RunResult.metrics``): ``dataset``, ``frames`` (integrated),
``frames_total``, ``frames_skipped_no_pose``, ``tracking_failures``, ``relocalisations``,
``fps`` (end to end),
``integrate_fps``, ``integrate_ms_{mean,median,max}``, ``track_ms_mean``,
``predict_ms_mean``, ``load_wait_ms_mean``, ``mesh_ms``, ``mesh_vertices``,
``mesh_triangles``, ``voxel_size_m``, ``blocks``, ``memory_mb``, ``device``, ``backend``,
``pose_source``, ``sync_mode``, ``image_size``, ``occupancy_{free,occupied,unknown}_cells``
and ``occupancy_resolution_m`` (when a map was built), the trajectory metrics of
:func:`~neural_mapping.io.evaluation.trajectory_metrics` (``ate_rmse_cm``, ``rpe_*``, ...)
when the dataset has ground truth, and ``wall_s`` (the whole run, pictures included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

from neural_mapping.config import MappingConfig
from neural_mapping.io.images import write_json, write_tum_trajectory


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def occupancy_metrics(grid2d) -> Dict[str, object]:
    """Cell counts and resolution of a 2D occupancy grid (none: no map was built)."""
    if grid2d is None:
        return {}
    m: Dict[str, object] = {f"occupancy_{k}_cells": int(v) for k, v in grid2d.counts().items()}
    m["occupancy_resolution_m"] = float(grid2d.resolution_m)
    return m


def collect_metrics(ds, backend, cfg: MappingConfig, stats: dict, mesh, mesh_ms: float,
                    occupancy=None) -> Dict[str, object]:
    """Every metric of the run but ``wall_s`` (see the module docstring): ``stats`` from
    :func:`~neural_mapping.app.pipeline.map_sequence`, the map from ``backend``."""
    from neural_mapping.io.evaluation import trajectory_metrics

    integ = np.asarray(stats["integrate_ms"], dtype=np.float64)
    frames = int(stats["frames"])
    nan = float("nan")
    m: Dict[str, object] = {
        "dataset": ds.name,
        "frames": frames,
        "frames_total": int(stats["frames_total"]),
        "frames_skipped_no_pose": int(stats["frames_skipped_no_pose"]),
        "tracking_failures": int(stats["tracking_failures"]),
        "relocalisations": int(stats.get("relocalisations", 0)),
        "fps": frames / stats["loop_s"] if stats["loop_s"] > 0 else nan,
        "integrate_fps": float(1000.0 / integ.mean()) if len(integ) else nan,
        "integrate_ms_mean": _mean(integ),
        "integrate_ms_median": float(np.median(integ)) if len(integ) else nan,
        "integrate_ms_max": float(integ.max()) if len(integ) else nan,
        "track_ms_mean": _mean(stats["track_ms"]),
        "predict_ms_mean": _mean(stats["predict_ms"]),
        "load_wait_ms_mean": _mean(stats["load_ms"]),
        "mesh_ms": mesh_ms,
        "mesh_vertices": int(len(mesh.vertices)),
        "mesh_triangles": int(len(mesh.triangles)),
        "voxel_size_m": backend.voxel_size_m,
        "blocks": int(backend.grid.num_blocks),
        "memory_mb": backend.memory_bytes() / 2 ** 20,
        "device": str(backend.device),
        "backend": backend.name,
        "pose_source": cfg.run.pose_source,
        "sync_mode": cfg.system.sync_mode,
        "image_size": [ds.intrinsics.width, ds.intrinsics.height],
    }
    m.update(occupancy_metrics(occupancy))
    if stats["gt_poses"] is not None and frames:
        m.update(trajectory_metrics(stats["poses"], stats["gt_poses"], stats["timestamps"]))
    return m


def write_map_files(out: Path, cfg: MappingConfig, dataset_name: str, mesh, timestamps: np.ndarray,
                    poses: np.ndarray, occupancy=None) -> Dict[str, Path]:
    """``mesh.ply``, ``poses.txt``, ``config.yaml`` and, with a 2D grid, ``occupancy.{pgm,yaml}``."""
    from neural_mapping.products.meshing import write_ply
    from neural_mapping.products.occupancy import save_nav2_map

    files = {"mesh": out / "mesh.ply", "poses": out / "poses.txt", "config": out / "config.yaml"}
    write_ply(mesh, files["mesh"])
    write_tum_trajectory(files["poses"], timestamps, poses,
                         header=f"{dataset_name}, pose_source={cfg.run.pose_source}")
    cfg.dump_yaml(files["config"])
    if occupancy is not None:
        files["occupancy_pgm"], files["occupancy_yaml"] = save_nav2_map(occupancy, out / "occupancy")
    return files


def write_metrics(out: Path, metrics: Dict[str, object]) -> Path:
    """``metrics.json`` (non-finite numbers as ``null``)."""
    path = out / "metrics.json"
    write_json(path, metrics)
    return path

