#!/usr/bin/env python3
"""Per-frame view of a tracked trajectory against its ground truth, for one range of frames.
Reads what ``bench_tracking.py --save-poses DIR`` writes (``<seq>_ours.txt``, ``<seq>_ours_gt.txt``
and ``<seq>_ours_info.json``, the tracker's per-frame ``TrackResult.info()``) and prints, per
frame, our step and the ground truth's (cm / deg) with the tracker's Gauss-Newton iterations,
inlier ratio, residual, weak directions and photometric pairs; then the relative motion over
windows (``--window A B``, repeatable): where the per-frame steps differ but the windows agree,
the two trajectories differ in timing, not in distance travelled.
    .venv/bin/python bench/bench_tracking.py --voxel 0.01 --no-open3d --sequences 7scenes \\
        --save-poses /tmp/poses --out /tmp/t.json
    .venv/bin/python bench/bench_track_window.py --prefix /tmp/poses/7scenes_redkitchen_ours \\
        --frames 440 460 --window 440 447 --window 447 453 --window 440 453
Also prints how many frames used the full iteration budget (all three levels at their cap).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from neural_mapping.config import MappingConfig  # noqa: E402
from neural_mapping.geometry import inv_pose, pose_distance  # noqa: E402


def read_tum(path: str) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    a = np.atleast_2d(np.loadtxt(path))
    T = np.tile(np.eye(4), (len(a), 1, 1))
    T[:, :3, 3] = a[:, 1:4]
    T[:, :3, :3] = Rotation.from_quat(a[:, 4:8]).as_matrix()
    return T


def relative(T: np.ndarray, i: int, j: int) -> np.ndarray:
    return inv_pose(T[i]) @ T[j]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefix", required=True, help="DIR/<seq>_ours (as bench_tracking --save-poses writes)")
    ap.add_argument("--frames", type=int, nargs=2, metavar=("FIRST", "END"), default=None)
    ap.add_argument("--window", type=int, nargs=2, action="append", default=[], metavar=("I", "J"))
    ap.add_argument("--iteration-cap", type=int, default=None,
                    help="total Gauss-Newton iterations of a frame at the cap (default: the config's)")
    args = ap.parse_args(argv)
    P, G = read_tum(f"{args.prefix}.txt"), read_tum(f"{args.prefix}_gt.txt")
    info_path = Path(f"{args.prefix}_info.json")
    info = json.loads(info_path.read_text()) if info_path.exists() else [{} for _ in range(len(P))]
    t = MappingConfig().tracking
    cap = args.iteration_cap or (t.tracking_iterations_coarse + t.tracking_iterations_mid
                                 + t.tracking_iterations_fine)
    if args.frames:
        print(f"{'frame':>5} {'ours cm/deg':>12} {'gt cm/deg':>12} {'iters':>5} {'inliers':>7} "
              f"{'res mm':>6} {'weak':>4} {'photo':>5}")
        for k in range(max(1, args.frames[0]), min(args.frames[1], len(P))):
            (to, ro), (tg, rg) = (pose_distance(A[k - 1], A[k]) for A in (P, G))
            f = info[k]
            print(f"{k:>5} {100 * to:>6.2f}/{math.degrees(ro):<5.2f} {100 * tg:>6.2f}/{math.degrees(rg):<5.2f} "
                  f"{f.get('iterations', -1):>5} {f.get('inlier_ratio', float('nan')):>7.3f} "
                  f"{1e3 * f.get('residual_m', float('nan')):>6.2f} {f.get('weak_directions', -1):>4} "
                  f"{f.get('photometric_pairs', -1):>5}")
    for i, j in args.window:
        o, g = relative(P, i, j), relative(G, i, j)
        dt, dr = pose_distance(g, o)
        print(f"window {i}-{j}: ours moves {100 * np.linalg.norm(o[:3, 3]):.2f} cm, ground truth "
              f"{100 * np.linalg.norm(g[:3, 3]):.2f} cm; they differ by {100 * dt:.2f} cm / {math.degrees(dr):.2f} deg")
    its = np.array([f.get("iterations", 0) for f in info])
    if len(its) and its.any():
        at_cap = np.nonzero(its >= cap)[0]
        print(f"frames at the iteration cap ({cap}): {len(at_cap)} of {len(its)}"
              + (f", {int(((at_cap >= args.frames[0]) & (at_cap < args.frames[1])).sum())} of them in "
                 f"{args.frames[0]}-{args.frames[1]}" if args.frames else "")
              + f"; median iterations {np.median(its[1:]):.0f}")


if __name__ == "__main__":
    main()
