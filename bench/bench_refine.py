#!/usr/bin/env python3
"""external+refine benchmark: drifting odometry in, refined poses out.

The input poses are ground truth composed with a drift that grows like a real
odometry's: a translation drift velocity of ``--drift-cm-per-s`` (1 cm/s) and a
rotation drift rate of ``--drift-deg-per-s`` (0.5 deg/s), each with a direction
that random-walks (seeded).  The system refines every input pose by
frame-to-model tracking (``pose_source=external+refine``, strict mode); we report
the ATE (evo, SE(3) Umeyama alignment) of the input and of the refined
trajectory.  Goals: refined ATE <= the input's on every sequence and low-pass
(issue 12), <= 0.4x on TUM fr1/xyz.

    .venv/bin/python bench/bench_refine.py [--frames 300] [--sequences 7scenes tum]
        [--time-constant-s 0 0.3 1] [--set refine_icp_independent_points=10]

Prints a table and writes bench/results/refine.json.
"""

from __future__ import annotations

import argparse
import os
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neural_mapping.config import MappingConfig  # noqa: E402
from neural_mapping.datasets import open_dataset  # noqa: E402
from neural_mapping.io.evaluation import trajectory_metrics  # noqa: E402
from neural_mapping.geometry import so3_exp  # noqa: E402
from neural_mapping.app.pipeline import run  # noqa: E402

DATA = Path(os.environ.get("NEURAL_MAPPING_DATA", REPO.parent / "shared" / "data"))
SEQUENCES = {"7scenes": DATA / "7scenes_redkitchen", "tum": DATA / "tum_fr1_xyz"}


class DriftingOdometry:
    """GT composed with a smoothly growing drift (deterministic from the seed)."""

    def __init__(self, stamps, cm_per_s: float, deg_per_s: float, seed: int = 0):
        rng = np.random.default_rng(seed)
        n = len(stamps)
        self.drift = {}
        D = np.eye(4)
        v = rng.normal(size=3)
        w = rng.normal(size=3)
        prev = stamps[0]
        for k, t in enumerate(stamps):
            dt = max(0.0, t - prev)
            prev = t
            v = v / np.linalg.norm(v) + 0.3 * np.sqrt(dt) * rng.normal(size=3)
            w = w / np.linalg.norm(w) + 0.3 * np.sqrt(dt) * rng.normal(size=3)
            step = np.eye(4)
            step[:3, :3] = so3_exp(np.deg2rad(deg_per_s) * dt * w / np.linalg.norm(w))
            step[:3, 3] = 0.01 * cm_per_s * dt * v / np.linalg.norm(v)
            D = D @ step
            self.drift[round(float(t), 6)] = D.copy()
        self.n = n

    def __call__(self, frame):
        if frame.pose is None:
            return None
        return frame.pose @ self.drift[round(float(frame.timestamp), 6)]


def bench(name: str, frames: int, voxel: float, cm_per_s: float, deg_per_s: float, seed: int,
          time_constant_s: float, overrides: dict = None):
    ds = open_dataset(SEQUENCES[name], max_frames=frames or None)
    stamps = [ds[i].timestamp for i in range(len(ds))] if not hasattr(ds, "timestamps") else list(ds.timestamps)
    odo = DriftingOdometry(stamps, cm_per_s, deg_per_s, seed)
    cfg = MappingConfig.from_flat({"voxel_size_m": voxel, "pose_source": "external+refine",
                                   "sync_mode": "strict", "device": "cpu",
                                   "refine_time_constant_s": time_constant_s, **(overrides or {})})
    t0 = time.perf_counter()
    res = run(ds, cfg, REPO / "output" / f"bench_refine_{name}", progress=False, render_views=False,
              input_pose=odo)
    wall = time.perf_counter() - t0
    gt = res.gt_poses
    inputs = np.stack([gt[k] @ odo.drift[round(float(t), 6)] for k, t in enumerate(res.timestamps)])
    m_in = trajectory_metrics(inputs, gt, res.timestamps)
    m_out = trajectory_metrics(res.poses, gt, res.timestamps)
    return {"sequence": name, "frames": int(res.metrics["frames"]), "voxel_size_m": voxel,
            "drift_cm_per_s": cm_per_s, "drift_deg_per_s": deg_per_s,
            "refine_time_constant_s": time_constant_s, "set": dict(overrides or {}),
            "input_ate_cm": m_in["ate_rmse_cm"], "refined_ate_cm": m_out["ate_rmse_cm"],
            "ratio": m_out["ate_rmse_cm"] / m_in["ate_rmse_cm"],
            "tracking_failures": int(res.metrics["tracking_failures"]),
            "fps": float(res.metrics["fps"]), "wall_s": wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", nargs="+", default=["7scenes", "tum"], choices=sorted(SEQUENCES))
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--voxel-size-m", type=float, default=0.02)
    ap.add_argument("--drift-cm-per-s", type=float, default=1.0)
    ap.add_argument("--drift-deg-per-s", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-constant-s", type=float, nargs="+",
                    default=[MappingConfig().tracking.refine_time_constant_s],
                    help="refine_time_constant_s, one run per value (0 = the filter's estimate as is)")
    ap.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                    help="other config fields, e.g. refine_icp_independent_points=10")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "refine.json"))
    args = ap.parse_args(argv)
    overrides = {k: float(v) for k, v in (a.split("=", 1) for a in args.set)}
    rows = [bench(s, args.frames, args.voxel_size_m, args.drift_cm_per_s, args.drift_deg_per_s, args.seed,
                  tau, overrides)
            for tau in args.time_constant_s for s in args.sequences]
    print(f"{'sequence':10} {'tau s':>5} {'frames':>6} {'input ATE cm':>13} {'refined ATE cm':>15} "
          f"{'ratio':>6} {'fails':>5} {'fps':>6}")
    for r in rows:
        print(f"{r['sequence']:10} {r['refine_time_constant_s']:5.2f} {r['frames']:6d} "
              f"{r['input_ate_cm']:13.2f} {r['refined_ate_cm']:15.2f} "
              f"{r['ratio']:6.2f} {r['tracking_failures']:5d} {r['fps']:6.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
