#!/usr/bin/env python3
"""How well do a sequence's ground-truth poses agree with its own depth images?

Fuses the first N frames (default 500) with their ground-truth poses into a TSDF (1 cm), then
aligns every k-th frame to a raycast of that map with our ICP, starting *at* its ground-truth
pose, and reports how far the alignment moves it.  If poses and depth agreed perfectly (and
ICP were unbiased) the shifts would be ~0; what remains is the level below which an ATE
against this ground truth stops meaning much.  On a synthetic sequence (exact depth, exact
poses) the same procedure measures the tracker's own bias.  ``indep. points`` calibrates external+refine's filter: how many
independent points the ICP's normal equations are worth (``refine_icp_independent_points``).

    .venv/bin/python bench/bench_gt_consistency.py                 # 7-Scenes 0-499, TUM fr1/xyz, synthetic
    .venv/bin/python bench/bench_gt_consistency.py --sequences tum --every 5

Prints a table and writes bench/results/gt_consistency.json.
"""

from __future__ import annotations

import argparse
import os
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neural_mapping.config import MappingConfig  # noqa: E402
from neural_mapping.datasets import open_dataset  # noqa: E402
from neural_mapping.geometry import inv_pose, pose_distance, se3_log  # noqa: E402
from neural_mapping.tracking.tracker import Tracker  # noqa: E402
from neural_mapping.backends import get_backend  # noqa: E402

DATA = Path(os.environ.get("NEURAL_MAPPING_DATA", REPO.parent / "shared" / "data"))
SEQUENCES = {"7scenes": DATA / "7scenes_redkitchen", "tum": DATA / "tum_fr1_xyz", "synthetic": "synthetic"}


def consistency(name: str, frames: int, every: int, voxel: float, depth_max: float):
    ds = open_dataset(SEQUENCES[name], max_frames=frames or None)
    cfg = MappingConfig.from_flat({"voxel_size_m": voxel, "depth_max_m": depth_max, "device": "cpu"})
    backend = get_backend(cfg)
    for i in range(len(ds)):
        f = ds[i]
        backend.integrate(f, f.pose)
    shifts, angles, mahal = [], [], []
    tracker = Tracker.from_config(cfg, "cpu")
    for i in range(0, len(ds), every):
        f = ds[i]
        model = tracker.predict(backend, f.intrinsics, f.pose, f.depth)
        r = tracker.track_depth(f.depth, f.intrinsics, model, f.pose)
        dt, dr = pose_distance(r.T_world_cam, f.pose)
        shifts.append(dt * 100)
        angles.append(np.degrees(dr))
        if r.ok:  # the error in the tracker's coordinates (reference = ground truth) vs its H
            xi = se3_log(inv_pose(f.pose) @ r.T_world_cam)
            mahal.append(float(xi @ r.normal_equations @ xi) / max(r.rss, 1e-12))
    s, a = np.array(shifts), np.array(angles)
    return {"sequence": name, "frames": len(ds), "checked": len(s), "voxel_size_m": voxel,
            "shift_cm_median": float(np.median(s)), "shift_cm_p90": float(np.percentile(s, 90)),
            "shift_cm_max": float(s.max()), "rot_deg_median": float(np.median(a)),
            "rot_deg_p90": float(np.percentile(a, 90)),
            # external+refine's refine_icp_independent_points: if the errors were Gaussian with
            # covariance sigma^2 (H/n)^-1 / n_eff, E[e^T H e / rss] = 6 / n_eff
            "independent_points": 6.0 / float(np.mean(mahal)) if mahal else float("nan")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", nargs="+", default=["7scenes", "tum", "synthetic"], choices=sorted(SEQUENCES))
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--voxel", type=float, default=0.01)
    ap.add_argument("--depth-max", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "gt_consistency.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.sequences:
        t = time.perf_counter()
        frames = min(args.frames, 120) if name == "synthetic" else args.frames
        rows.append(consistency(name, frames, args.every, args.voxel, args.depth_max))
        print(json.dumps(rows[-1]), f"({time.perf_counter() - t:.0f} s)", flush=True)
    print(f"\n{'sequence':10} {'frames':>6} {'checked':>7} {'shift cm med':>12} {'p90':>6} {'max':>6} "
          f"{'rot deg med':>11} {'p90':>6} {'indep. points':>13}")
    for r in rows:
        print(f"{r['sequence']:10} {r['frames']:6d} {r['checked']:7d} {r['shift_cm_median']:12.2f} "
              f"{r['shift_cm_p90']:6.2f} {r['shift_cm_max']:6.2f} {r['rot_deg_median']:11.2f} "
              f"{r['rot_deg_p90']:6.2f} {r['independent_points']:13.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
