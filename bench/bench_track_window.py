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

``--local W --sequence 7scenes``: for every frame k of ``--frames``, which trajectory agrees with
the depth images *locally*?  For each of the ground truth and ours: fuse frames k-W..k-1 at that
trajectory's poses into a fresh map, render the model view at its pose k-1 and track frame k
from its constant-velocity guess; print how far the tracked pose lands from that trajectory's
pose k.  A trajectory consistent with its own depth lands within a few millimetres.
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
from neural_mapping.io.images import read_tum_trajectory  # noqa: E402

DATA = Path(__import__("os").environ.get("NEURAL_MAPPING_DATA", REPO.parent / "shared" / "data"))
SEQUENCES = {"7scenes": DATA / "7scenes_redkitchen", "tum": DATA / "tum_fr1_xyz"}


def relative(T: np.ndarray, i: int, j: int) -> np.ndarray:
    return inv_pose(T[i]) @ T[j]


def local_consistency(ds, trajectories: dict, frames, window: int, voxel: float,
                      depth_max: float, verbose: bool = True):
    """Per frame k in ``frames`` (first, end) of the frames ``ds`` (indexable): for each named
    trajectory (name -> (n, 4, 4) poses), fuse frames k-window..k-1 at its poses, track frame k
    against the model view at its pose k-1 (from the constant-velocity guess); rows of
    ``{"frame": k, name: (lands cm from its pose k, tracked step cm, its own step cm)}``."""
    from neural_mapping.backends import get_backend
    from neural_mapping.tracking.tracker import Tracker
    cfg = MappingConfig.from_flat({"voxel_size_m": voxel, "depth_max_m": depth_max, "device": "cpu"})
    tracker = Tracker.from_config(cfg, "cpu")
    rows = []
    for k in range(max(window, 2), min(frames[1], len(ds))):
        if k < frames[0]:
            continue
        row = {"frame": k}
        for name, A in trajectories.items():
            backend = get_backend(cfg)
            for j in range(k - window, k):
                backend.integrate(ds[j], A[j])
            view = tracker.predict(backend, ds[k - 1].intrinsics, A[k - 1], ds[k - 1].depth)
            r = tracker.track(ds[k], view, A[k - 1] @ inv_pose(A[k - 2]) @ A[k - 1])
            row[name] = (100 * pose_distance(A[k], r.T_world_cam)[0],
                         100 * pose_distance(A[k - 1], r.T_world_cam)[0],
                         100 * pose_distance(A[k - 1], A[k])[0])
        rows.append(row)
        if verbose:
                print(f"{k:>5} " + "  ".join(f"{n}: step {v[2]:.2f}, tracked step {v[1]:.2f}, lands {v[0]:.2f} "
                                         f"cm from it" for n, v in row.items() if n != "frame"), flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefix", required=True, help="DIR/<seq>_ours (as bench_tracking --save-poses writes)")
    ap.add_argument("--frames", type=int, nargs=2, metavar=("FIRST", "END"), default=None)
    ap.add_argument("--window", type=int, nargs=2, action="append", default=[], metavar=("I", "J"))
    ap.add_argument("--iteration-cap", type=int, default=None,
                    help="total Gauss-Newton iterations of a frame at the cap (default: the config's)")
    ap.add_argument("--local", type=int, default=0, metavar="W",
                    help="local consistency with a map of the previous W frames (needs --sequence, --frames)")
    ap.add_argument("--sequence", choices=sorted(SEQUENCES), default="7scenes")
    ap.add_argument("--voxel", type=float, default=0.01)
    ap.add_argument("--depth-max", type=float, default=3.0)
    args = ap.parse_args(argv)
    P, G = (read_tum_trajectory(f"{args.prefix}{s}.txt")[1] for s in ("", "_gt"))
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
    if args.local and args.frames:
        print(f"local consistency, map of the previous {args.local} frames:")
        from neural_mapping.datasets import open_dataset
        kw = {"undistort": True} if args.sequence == "tum" else {}  # as bench_tracking.py loads it
        ds = open_dataset(SEQUENCES[args.sequence], max_frames=args.frames[1], **kw)
        rows = local_consistency(ds, {"ground truth": G, "ours": P}, args.frames, args.local,
                                 args.voxel, args.depth_max)
        for name in ("ground truth", "ours"):
            d = np.array([r[name][0] for r in rows])
            far = [r["frame"] for r, x in zip(rows, d) if x > 2.5]
            print(f"{name}: lands {np.median(d):.2f} cm median, {np.percentile(d, 90):.2f} cm p90, "
                  f"{d.max():.2f} cm max from its own pose (frame {rows[int(d.argmax())]['frame']}); "
                  f"over 2.5 cm at frames {far}")


if __name__ == "__main__":
    main()
