#!/usr/bin/env python3
"""Tracking benchmark: our MappingSystem in ``track`` mode vs Open3D's dense SLAM, same run.

For each sequence (TUM fr1/xyz, all 798 frames; 7-Scenes redkitchen 0-499, as shared in
../shared/data), loaded once with the package's dataset loaders (TUM undistorted, as
``neural-mapping run`` does; ``--no-undistort`` to feed raw images) and preloaded in memory:

* **ours**: :class:`neural_mapping.system.mapping_system.MappingSystem`, ``pose_source=track``, the real
  tracking and mapping threads.  ``strict`` (default): every frame tracked and integrated in
  order, deterministic; with ``model_lag_frames`` 1 frame k is tracked against the map holding
  frames up to k-2 while the mapping thread integrates frame k-1 (both cores busy).  frames/s is
  the wall time from the first ``submit`` to ``flush``.  ``--live``: ``realtime`` mode, frames
  submitted at their recorded rate (30 Hz), the system tracks the newest and drops the rest
  (counted): frames/s is then the frames it tracked per second of input.
* **open3d**: ``o3d.t.pipelines.slam.Model`` frame-to-model (depth_max 3 m, depth_diff 0.07,
  as in the issue's harness), same voxel size, same images.

ATE RMSE (cm, evo, SE(3) Umeyama alignment; and after first-frame alignment), frames/s,
tracking failures.  Prints a table and writes ``bench/results/tracking.json``.  Run it on an
idle machine (two cores: anything else running slows both methods).

    .venv/bin/python bench/bench_tracking.py                       # both sequences, ours + Open3D
    .venv/bin/python bench/bench_tracking.py --voxel 0.02
    .venv/bin/python bench/bench_tracking.py --sequences tum --frames 200 --no-open3d --lag 0
    .venv/bin/python bench/bench_tracking.py --live --no-open3d    # realtime mode at 30 Hz input
    .venv/bin/python bench/bench_tracking.py --voxel 0.02 --sequences wall_floor corridor fast_rotation jump
    .venv/bin/python bench/bench_tracking.py --voxel 0.02 --sequences corridor --no-open3d \
        --set tracking_degenerate_ratio=0.002
"""

from __future__ import annotations

import argparse
import os
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neural_mapping.config import MappingConfig  # noqa: E402
from neural_mapping.datasets import open_dataset  # noqa: E402
from neural_mapping.io.evaluation import trajectory_metrics  # noqa: E402
from neural_mapping.io.images import write_tum_trajectory  # noqa: E402
from neural_mapping.system.mapping_system import MappingSystem  # noqa: E402

DATA = Path(os.environ.get("NEURAL_MAPPING_DATA", REPO.parent / "shared" / "data"))
SEQUENCES = {"tum": DATA / "tum_fr1_xyz", "7scenes": DATA / "7scenes_redkitchen"}
DEFAULT_FRAMES = {"tum": 0, "7scenes": 500}  # 0 = all
SYNTHETIC = ("wall_floor", "corridor", "fast_rotation", "jump")  # datasets/synthetic_tracking.py


def load(name: str, frames: int, undistort: bool):
    if name in SYNTHETIC:
        from neural_mapping.datasets.synthetic_tracking import DegenerateSequence
        ds = DegenerateSequence(name, num_frames=frames or None, seed=0)
        return f"synthetic-{name}", [ds[i] for i in range(len(ds))], ds.gt_poses()
    kw = {"undistort": undistort} if name == "tum" else {}
    n = frames if frames else DEFAULT_FRAMES[name]
    ds = open_dataset(SEQUENCES[name], max_frames=n or None, **kw)
    return SEQUENCES[name].name, [ds[i] for i in range(len(ds))], ds.gt_poses()


def _ate(poses: List[np.ndarray], gt: np.ndarray, stamps=None, save=None) -> Dict[str, float]:
    if save is not None:  # TUM files of the estimate and the ground truth, for evo & co.
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        write_tum_trajectory(f"{save}.txt", stamps, poses)
        write_tum_trajectory(f"{save}_gt.txt", stamps, list(gt))
    m = trajectory_metrics(np.stack(poses), gt, stamps)
    return {"ate_rmse_cm": m["ate_rmse_cm"], "ate_first_frame_cm": m["ate_first_frame_rmse_cm"],
            "ate_max_cm": m["ate_max_cm"], "rpe_trans_rmse_cm": m["rpe_trans_rmse_cm"]}


def _parse_set(kv: str):
    """``name=value`` of ``--set`` (a flat config field; value parsed as YAML)."""
    import yaml
    name, _, value = kv.partition("=")
    return name, yaml.safe_load(value)


def _median_ms(values) -> float:
    return float(np.median(values) * 1e3) if len(values) else float("nan")


def _save(args, frames, method: str):
    return None if not args.save_poses else Path(args.save_poses) / f"{args._seq}_{method}"


def run_ours(frames, gt, args) -> Dict[str, object]:
    cfg = MappingConfig.from_flat({
        "voxel_size_m": args.voxel, "depth_max_m": args.depth_max, "pose_source": "track",
        "sync_mode": "realtime" if args.live else "strict", "model_lag_frames": args.lag,
        "torch_threads": args.threads, "device": args.device, "frame_queue_size": 2,
        "tracking_width_px": args.base_width, "tracking_model_width_px": args.model_width,
        "tracking_point_stride": args.point_stride, "block_size_vox": args.block_size,
        **dict(_parse_set(kv) for kv in args.set)})
    system = MappingSystem(cfg)
    try:
        t0 = time.perf_counter()
        t_first = frames[0].timestamp
        for f in frames:
            if args.live:  # submit at the recorded rate
                delay = (f.timestamp - t_first) - (time.perf_counter() - t0)
                if delay > 0:
                    time.sleep(delay)
            system.submit(f)
        system.flush()
        wall = time.perf_counter() - t0
        stats = system.stats()
        traj = list(system.trajectory)
    finally:
        system.close()
    by_index = {p.index: p for p in traj}
    tracked = [i for i, f in enumerate(frames) if f.index in by_index]
    poses = [by_index[frames[i].index].T_world_cam for i in tracked]
    n = len(frames)
    out = {"method": "ours (MappingSystem, " + ("realtime @input rate" if args.live else
                                                  f"strict, lag {args.lag}") + ")",
           "frames": n, "poses": len(tracked), "integrated": int(stats.get("integrated", 0)),
           "failures": int(stats.get("track_failures", 0)),
           "relocalisations": int(stats.get("relocalisations", 0)),
           "dropped": {k: int(v) for k, v in stats.items() if k.startswith("dropped")},
           "fps": len(tracked) / wall, "ms_per_frame": wall / max(len(tracked), 1) * 1e3,
           "track_ms_median": _median_ms(system.timings["track"]),
           "integrate_ms_median": _median_ms(system.timings["integrate"]),
           "predict_ms_median": _median_ms(system.timings["predict"]),
           "pose_latency_p95_ms": stats.get("latency_pose_p95_ms")}
    save = _save(args, frames, "ours")
    out.update(_ate(poses, gt[tracked], [frames[i].timestamp for i in tracked], save))
    if save is not None:  # per-frame tracker diagnostics (TrackResult.info), for bench_track_window.py
        Path(f"{save}_info.json").write_text(json.dumps(
            [dict(by_index[frames[i].index].info, index=i) for i in tracked], default=float))
    return out


def run_open3d(frames, gt, args) -> Dict[str, object]:
    import open3d as o3d
    import open3d.core as o3c
    dev = o3c.Device("CPU:0")
    K = frames[0].intrinsics
    intr = o3c.Tensor(K.K, o3c.float64)
    T = o3c.Tensor(np.eye(4), o3c.float64)
    model = o3d.t.pipelines.slam.Model(args.voxel, 16, 40000, T, dev)
    frame = o3d.t.pipelines.slam.Frame(K.height, K.width, intr, dev)
    raycast = o3d.t.pipelines.slam.Frame(K.height, K.width, intr, dev)
    scale = 1000.0
    depths = [o3d.t.geometry.Image(o3c.Tensor(np.round(np.nan_to_num(f.depth) * scale).astype(np.uint16)))
              for f in frames]
    colors = [o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(f.color))) for f in frames]
    poses, failures = [], 0
    t0 = time.perf_counter()
    for i in range(len(frames)):
        frame.set_data_from_image("depth", depths[i])
        frame.set_data_from_image("color", colors[i])
        if i > 0:
            try:
                result = model.track_frame_to_model(frame, raycast, scale, args.depth_max, 0.07)
                T = T @ result.transformation
            except RuntimeError:
                failures += 1
        poses.append(T.cpu().numpy().copy())
        model.update_frame_pose(i, T)
        model.integrate(frame, scale, args.depth_max, 8.0)
        model.synthesize_model_frame(raycast, scale, 0.1, args.depth_max, 8.0, False)
    wall = time.perf_counter() - t0
    n = len(frames)
    out = {"method": "open3d slam.Model", "frames": n, "poses": n, "failures": failures,
           "relocalisations": 0,
           "fps": n / wall, "ms_per_frame": wall / n * 1e3}
    out.update(_ate(poses, gt, [f.timestamp for f in frames], _save(args, frames, "open3d")))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", nargs="+", default=["tum", "7scenes"], choices=sorted(SEQUENCES) + list(SYNTHETIC),
                    help="real sequences and the seeded synthetic ones (wall_floor, corridor, "
                    "fast_rotation, jump; 640x480, exact depth)")
    ap.add_argument("--frames", type=int, default=0,
                    help="first N frames (0 = TUM: all 798, 7-Scenes: 0-499 as in the issue)")
    ap.add_argument("--voxel", type=float, default=0.01)
    ap.add_argument("--depth-max", type=float, default=3.0)
    ap.add_argument("--lag", type=int, default=MappingConfig().system.model_lag_frames,
                    help="model_lag_frames (strict mode)")
    ap.add_argument("--base-width", type=int, default=MappingConfig().tracking.tracking_width_px)
    ap.add_argument("--model-width", type=int, default=MappingConfig().tracking.tracking_model_width_px)
    ap.add_argument("--block-size", type=int, default=MappingConfig().grid.block_size_vox,
                    help="block_size_vox of our grid")
    ap.add_argument("--point-stride", type=int, default=MappingConfig().tracking.tracking_point_stride)
    ap.add_argument("--no-undistort", dest="undistort", action="store_false",
                    help="feed TUM's raw (distorted) images to both methods")
    ap.add_argument("--live", action="store_true",
                    help="ours in realtime mode with frames submitted at their recorded rate")
    ap.add_argument("--no-open3d", action="store_true")
    ap.add_argument("--no-ours", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (ours; Open3D uses its default, all cores)")
    ap.add_argument("--device", default="cpu", help="ours: cpu (default) or cuda")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="ours: any flat config field, e.g. --set tracking_degenerate_ratio=0.002")
    ap.add_argument("--save-poses", metavar="DIR",
                    help="write TUM trajectories (ours, open3d, gt) and ours' per-frame tracker "
                    "info (<seq>_ours_info.json) here")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "tracking.json"))
    args = ap.parse_args(argv)
    try:
        import open3d as o3d
        o3d.core.Device  # noqa: B018
    except ImportError:
        args.no_open3d = True
    rows = []
    for name in args.sequences:
        t = time.perf_counter()
        seq_name, frames, gt = load(name, args.frames, args.undistort)
        args._seq = seq_name
        print(f"{seq_name}: {len(frames)} frames loaded in {time.perf_counter() - t:.1f} s", flush=True)
        for method, fn, skip in (("ours", run_ours, args.no_ours), ("open3d", run_open3d, args.no_open3d)):
            if skip:
                continue
            r = fn(frames, gt, args)
            r["sequence"] = seq_name
            rows.append(r)
            print(json.dumps(r), flush=True)
    print()
    print(f"{'sequence':22s} {'method':38s} {'frames':>6s} {'poses':>6s} {'ATE cm':>7s} {'ATE0 cm':>8s} "
          f"{'ms/frame':>9s} {'fps':>6s} {'fail':>5s} {'reloc':>5s}")
    for r in rows:
        print(f"{r['sequence']:22s} {r['method']:38s} {r['frames']:6d} {r['poses']:6d} "
              f"{r['ate_rmse_cm']:7.2f} {r['ate_first_frame_cm']:8.2f} {r['ms_per_frame']:9.1f} "
              f"{r['fps']:6.1f} {r['failures']:5d} {r['relocalisations']:5d}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    out.write_text(json.dumps({"config": config, "results": rows}, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
