#!/usr/bin/env python3
"""Per-frame check of a sequence's ground-truth *steps* against its own depth images.

For every pair of consecutive frames (k-1, k) the relative motion is estimated independently
of our tracker, by Open3D's point-to-plane ICP between the two depth images alone
(voxel-downsampled clouds, 1.5 cm; coarse to fine 4 / 2 / 1 voxels correspondence distance,
started at the identity), and compared with the ground-truth step ``inv(T_{k-1}) T_k``.
Optionally with a tracked trajectory (``--poses``, TUM format as ``bench_tracking.py
--save-poses`` writes) its steps are compared too.  A frame where the ground truth's step
disagrees with the depth (and with the tracker) by centimetres while the two independent
estimates agree is a glitch of the ground truth, not of the tracker: 7-Scenes' poses come
from KinectFusion itself, TUM's from a motion-capture system.

    .venv/bin/python bench/bench_gt_steps.py --sequence 7scenes \
        --poses bench/results/poses/7scenes_redkitchen_ours.txt
    .venv/bin/python bench/bench_gt_steps.py --sequence tum --frames 500

Prints the frames with the largest disagreements, the percentiles, and writes
bench/results/gt_steps_<sequence>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neural_mapping.datasets import open_dataset  # noqa: E402
from neural_mapping.geometry import inv_pose, pose_distance  # noqa: E402
from neural_mapping.io.images import read_tum_trajectory  # noqa: E402

DATA = Path(os.environ.get("NEURAL_MAPPING_DATA", REPO.parent / "shared" / "data"))
SEQUENCES = {"7scenes": DATA / "7scenes_redkitchen", "tum": DATA / "tum_fr1_xyz"}


def _cloud(o3d, frame, depth_max: float, voxel: float):
    K = frame.intrinsics
    d = np.nan_to_num(np.asarray(frame.depth, np.float32))
    d[(d <= 0) | (d > depth_max)] = 0
    v, u = np.nonzero(d)
    z = d[v, u]
    pts = np.stack([(u - K.cx) / K.fx * z, (v - K.cy) / K.fy * z, z], 1)
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts.astype(np.float64)))
    pc = pc.voxel_down_sample(voxel)
    pc.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=4 * voxel, max_nn=30))
    pc.orient_normals_towards_camera_location(np.zeros(3))
    return pc


def _icp(o3d, src, dst, voxel: float):
    reg = o3d.pipelines.registration
    T = np.eye(4)
    for dist in (4 * voxel, 2 * voxel, voxel):
        T = reg.registration_icp(src, dst, dist, T, reg.TransformationEstimationPointToPlane(),
                                 reg.ICPConvergenceCriteria(max_iteration=30)).transformation
    return T


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequence", choices=sorted(SEQUENCES), default="7scenes")
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--depth-max", type=float, default=3.0)
    ap.add_argument("--poses", help="a tracked trajectory (TUM format, one pose per frame)")
    ap.add_argument("--voxel", type=float, default=0.015, help="downsampling of the clouds (m)")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import open3d as o3d
    ds = open_dataset(SEQUENCES[args.sequence], max_frames=args.frames or None)
    gt = ds.gt_poses()
    ours = read_tum_trajectory(args.poses)[1][:len(ds)] if args.poses else None
    rows, prev = [], _cloud(o3d, ds[0], args.depth_max, args.voxel)
    for k in range(1, len(ds)):
        cur = _cloud(o3d, ds[k], args.depth_max, args.voxel)
        icp = _icp(o3d, cur, prev, args.voxel)  # T_{k-1 <- k}
        step_gt = inv_pose(gt[k - 1]) @ gt[k]
        row = {"frame": k, "gt_step_cm": float(np.linalg.norm(step_gt[:3, 3]) * 100),
               "gt_vs_icp_cm": pose_distance(step_gt, icp)[0] * 100,
               "gt_vs_icp_deg": float(np.degrees(pose_distance(step_gt, icp)[1]))}
        if ours is not None:
            step = inv_pose(ours[k - 1]) @ ours[k]
            row["ours_vs_icp_cm"] = pose_distance(step, icp)[0] * 100
            row["ours_vs_gt_cm"] = pose_distance(step, step_gt)[0] * 100
        rows.append(row)
        prev = cur
        if k % 50 == 0:
            print(f"  {k}/{len(ds) - 1} steps", flush=True)
    keys = [k for k in rows[0] if k.endswith(("_cm", "_deg")) and k != "gt_step_cm"]
    summary = {k: {"median": float(np.median([r[k] for r in rows])),
                   "p90": float(np.percentile([r[k] for r in rows], 90)),
                   "max": float(np.max([r[k] for r in rows]))} for k in keys}
    print(f"{args.sequence}: {len(rows)} steps; Open3D frame-to-frame ICP vs ground truth"
          + (" and vs the tracked trajectory" if ours is not None else ""))
    for k, s in summary.items():
        print(f"  {k:16s} median {s['median']:.3f}  p90 {s['p90']:.3f}  max {s['max']:.3f}")
    print(f"largest ground-truth disagreements ({args.top}):")
    for r in sorted(rows, key=lambda r: -r["gt_vs_icp_cm"])[:args.top]:
        print("  " + "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    out = Path(args.out or REPO / "bench" / "results" / f"gt_steps_{args.sequence}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args), "summary": summary, "steps": rows}, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
