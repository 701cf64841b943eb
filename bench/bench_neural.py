#!/usr/bin/env python3
"""Neural backend benchmark: ``backend: neural`` vs its iMAP mode vs the TSDF, same frames.

For each sequence (the synthetic room with its ground-truth mesh; a subset of
``../shared/data/7scenes_redkitchen``) and pose source (``external``: ground-truth poses;
``track``: frame-to-model ICP against the backend's ``render()``), every ``--holdout-every``-th
frame is held out (never mapped) and the others go through the real
:class:`~neural_mapping.system.mapping_system.MappingSystem` (strict mode, both threads).

Columns
* **Acc / Comp** (cm): mean distance of the mesh's vertices to the ground-truth mesh / of
  points sampled on the ground truth to the mesh (culled to the surface some frame saw, see
  :func:`gt_samples`); **CR<5cm**: share of those samples within 5 cm (completion ratio);
  **F@2cm**: F-score of precision and recall at 2 cm.  Synthetic room only (7-Scenes has no
  ground-truth mesh); in track mode the mesh is first moved into the ground-truth frame by
  the first pose.
* **L1 held-out** (cm): depth L1 of ``render()`` at the held-out frames' (ground-truth) poses
  against their measured depth, on pixels valid in both; **hit%**: share of the measured
  pixels the render covers.
* **ATE** (cm, SE(3)-aligned RMSE; 0 with ground-truth poses), **ms/it** (neural: one
  optimiser iteration of the mapping step), **fps** (mapped frames per second of wall time,
  first submit to flush), **MB** (map memory: block pools, features, caches; CUDA: peak
  allocated).

    .venv/bin/python bench/bench_neural.py                               # both sequences, CPU
    .venv/bin/python bench/bench_neural.py --sequences synthetic --frames 60 --modes neural,tsdf
    .venv/bin/python bench/bench_neural.py --device cuda --set neural_rays=4096 neural_iterations=15

Prints a table and writes ``bench/results/neural_<device>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neural_mapping.config import MappingConfig  # noqa: E402
from neural_mapping.datasets import open_dataset  # noqa: E402
from neural_mapping.geometry import inv_pose  # noqa: E402
from neural_mapping.io.evaluation import mesh_to_mesh_distances, trajectory_metrics  # noqa: E402
from neural_mapping.system.mapping_system import MappingSystem  # noqa: E402

DATA = Path(os.environ.get("NEURAL_MAPPING_DATA", REPO.parent / "shared" / "data"))
MODES = {"neural": {"backend": "neural"}, "imap": {"backend": "neural", "neural_mode": "imap"},
         "tsdf": {"backend": "tsdf"}}


# ---------------------------------------------------------------------------- data
def load_sequence(name: str, args):
    """``(frames, gt_mesh or None)``; frames carry their ground-truth pose."""
    if name == "synthetic":
        from neural_mapping.datasets.synthetic import SyntheticRoom
        w, h = (int(v) for v in args.synthetic_size.split("x"))
        ds = SyntheticRoom(num_frames=args.frames or 120, width=w, height=h, seed=0)
        return [ds[i] for i in range(0, len(ds), args.stride)], ds.gt_mesh()
    ds = open_dataset(Path(args.data) / "7scenes_redkitchen", max_frames=args.frames or 200,
                      stride=args.stride)
    return [ds[i] for i in range(len(ds))], None


def gt_samples(gt_mesh, frames, samples: int = 100_000, tol_m: float = 0.02) -> np.ndarray:
    """Points sampled uniformly on the ground-truth mesh, culled to those some frame saw
    (inside its image, within ``tol_m`` of its depth): the room's walls and floor are 5 cm
    slabs whose outer faces no camera sees, and at exactly the completion threshold from
    the inner faces they made "completion ratio < 5 cm" a coin flip on sub-millimetre
    offsets (measured: 4 % between two meshes no vertex of which was 1 cm from the other)."""
    import open3d as o3d
    o3d.utility.random.seed(0)
    pts = np.asarray(gt_mesh.sample_points_uniformly(samples).points)
    seen = np.zeros(len(pts), dtype=bool)
    for fr in frames[::5]:
        K, T = fr.intrinsics, np.linalg.inv(fr.pose)
        pc = pts @ T[:3, :3].T + T[:3, 3]
        z = pc[:, 2]
        ok = z > 0.05
        u = np.round(pc[:, 0] / np.where(ok, z, 1) * K.fx + K.cx).astype(np.int64)
        v = np.round(pc[:, 1] / np.where(ok, z, 1) * K.fy + K.cy).astype(np.int64)
        ok &= (u >= 0) & (u < K.width) & (v >= 0) & (v < K.height)
        d = np.zeros(len(pts))
        d[ok] = fr.depth[v[ok], u[ok]]
        seen |= ok & (d > 0) & (np.abs(d - z) < tol_m)
    return pts[seen]


def mesh_metrics(mesh, gt_mesh, T_gt_map: np.ndarray, gt_pts: np.ndarray) -> Dict[str, float]:
    v = np.asarray(mesh.vertices.cpu() if hasattr(mesh.vertices, "cpu") else mesh.vertices, np.float64)
    t = np.asarray(mesh.triangles.cpu() if hasattr(mesh.triangles, "cpu") else mesh.triangles)
    if len(v) == 0 or len(t) == 0:
        return {"acc_cm": float("nan"), "comp_cm": float("nan"), "cr5": 0.0, "f2": 0.0}
    v = v @ T_gt_map[:3, :3].T + T_gt_map[:3, 3]
    acc = mesh_to_mesh_distances(v, gt_mesh)
    comp = mesh_to_mesh_distances(gt_pts, (v, t))
    p2, r2 = float(np.mean(acc < 0.02)), float(np.mean(comp < 0.02))
    return {"acc_cm": 100 * float(acc.mean()), "comp_cm": 100 * float(comp.mean()),
            "cr5": float(np.mean(comp < 0.05)), "f2": 2 * p2 * r2 / max(p2 + r2, 1e-12)}


def ate_cm(est: np.ndarray, gt: np.ndarray) -> float:
    """ATE RMSE (cm) after SE(3) alignment: evo's (:func:`trajectory_metrics`) where evo is
    installed, else the same Umeyama alignment (no scale) in numpy (the GPU machine has no evo)."""
    try:
        return trajectory_metrics(est, gt)["ate_rmse_cm"]
    except ImportError:
        a, b = est[:, :3, 3], gt[:, :3, 3]
        ma, mb = a.mean(0), b.mean(0)
        U, _, Vt = np.linalg.svd((b - mb).T @ (a - ma))
        S = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
        R = U @ S @ Vt
        err = b - ((a - ma) @ R.T + mb)
        return 100 * float(np.sqrt((err ** 2).sum(1).mean()))


def backend_memory_mb(be) -> float:
    if torch.device(be.device).type == "cuda":
        return torch.cuda.max_memory_allocated(be.device) / 2 ** 20
    return be.memory_bytes() / 2 ** 20


# ---------------------------------------------------------------------------- one row
def run_case(seq: str, frames, gt_mesh, mode: str, pose_source: str, args,
             gt_pts=None) -> Dict[str, object]:
    flat = {"device": args.device, "voxel_size_m": args.voxel_size_m, "pose_source": pose_source,
            "sync_mode": "strict", "torch_threads": args.threads, **MODES[mode]}
    if mode != "tsdf":
        flat.update(args.set)
    cfg = MappingConfig.from_flat(flat)
    k = args.holdout_every
    is_held = [bool(k) and i % k == k // 2 for i in range(len(frames))]
    held = [f for f, h in zip(frames, is_held) if h]
    mapped = [f for f, h in zip(frames, is_held) if not h]
    if cfg.grid.device.startswith("cuda") or (cfg.grid.device == "auto" and torch.cuda.is_available()):
        torch.cuda.reset_peak_memory_stats()
    with MappingSystem(cfg) as system:
        t0 = time.perf_counter()
        for fr in mapped:
            system.submit(fr)
        system.flush()
        wall = time.perf_counter() - t0
        traj = [p for p in system.trajectory if p.ok]
        est = {p.index: p.T_world_cam for p in traj}
        first = mapped[0]
        T_map_gt = est[first.index] @ inv_pose(first.pose) if first.index in est else np.eye(4)
        be = system.backend
        l1, hit = [], []
        with system.read_map():
            for fr in held:
                r = be.render(fr.intrinsics, T_map_gt @ fr.pose, color=False)
                d = torch.as_tensor(fr.depth, device=r.depth.device)
                meas = (d > be.depth_min_m) & (d < be.depth_max_m)
                both = meas & r.valid
                if both.any():
                    l1.append(float((r.depth - d).abs()[both].mean()))
                hit.append(float(both.sum()) / max(1, int(meas.sum())))
        t_mesh = time.perf_counter()
        mesh = system.mesh()
        mesh_s = time.perf_counter() - t_mesh
        timings = getattr(be, "timings", {})
        mem = backend_memory_mb(be)
    row: Dict[str, object] = {"sequence": seq, "mode": mode, "pose_source": pose_source,
                              "frames_mapped": len(mapped), "frames_held_out": len(held),
                              "fps": len(mapped) / wall, "wall_s": wall, "mesh_s": mesh_s,
                              "l1_heldout_cm": 100 * float(np.mean(l1)) if l1 else float("nan"),
                              "hit_heldout": float(np.mean(hit)) if hit else float("nan"),
                              "memory_mb": mem, "blocks": int(be.grid.num_blocks)}
    if timings.get("map_ms"):
        its = max(1, cfg.neural.neural_iterations)
        row["ms_per_iteration"] = float(np.mean(timings["map_ms"])) / its
        row["map_steps"] = len(timings["map_ms"])
        row["decode_ms_per_frame"] = float(np.mean(timings["decode_ms"]))
    gts = [f.pose for f in mapped if f.index in est]
    if len(gts) >= 3:
        row["ate_cm"] = ate_cm(np.stack([est[f.index] for f in mapped if f.index in est]), np.stack(gts))
    if gt_mesh is not None:
        row.update(mesh_metrics(mesh, gt_mesh, inv_pose(T_map_gt), gt_pts))
    return row


# ---------------------------------------------------------------------------- table
COLS = [("sequence", "{}"), ("pose_source", "{}"), ("mode", "{}"), ("acc_cm", "{:.2f}"),
        ("comp_cm", "{:.2f}"), ("cr5", "{:.3f}"), ("f2", "{:.3f}"), ("l1_heldout_cm", "{:.2f}"),
        ("hit_heldout", "{:.3f}"), ("ate_cm", "{:.2f}"), ("ms_per_iteration", "{:.1f}"),
        ("fps", "{:.2f}"), ("memory_mb", "{:.0f}")]


def table(rows: List[Dict[str, object]]) -> str:
    head = ["seq", "poses", "mode", "Acc", "Comp", "CR<5cm", "F@2cm", "L1 held-out", "hit%", "ATE",
            "ms/it", "fps", "MB"]
    cells = [[fmt.format(r[k]) if r.get(k) is not None else "n/a" for k, fmt in COLS] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(c) for c in cells])


def parse_set(items: Optional[List[str]]) -> Dict[str, object]:
    out: Dict[str, object] = {}
    for it in items or []:
        k, _, v = it.partition("=")
        out[k] = v
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sequences", default="synthetic,7scenes")
    ap.add_argument("--modes", default="neural,imap,tsdf")
    ap.add_argument("--pose-sources", default="external,track")
    ap.add_argument("--frames", type=int, default=0, help="frames read (0: 120 synthetic, 200 7-Scenes)")
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--holdout-every", type=int, default=10, help="every n-th frame is held out")
    ap.add_argument("--synthetic-size", default="640x480", metavar="WxH")
    ap.add_argument("--voxel-size-m", type=float, default=0.02)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default=str(DATA), help="folder holding 7scenes_redkitchen")
    ap.add_argument("--threads", type=int, default=1, help="torch_threads of the system")
    ap.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                    help="config overrides for the neural rows (e.g. neural_iterations=8)")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/neural_<device>.json)")
    args = ap.parse_args(argv)
    args.set = parse_set(args.set)
    rows = []
    for seq in args.sequences.split(","):
        frames, gt_mesh = load_sequence(seq, args)
        gt_pts = gt_samples(gt_mesh, frames) if gt_mesh is not None else None
        for ps in args.pose_sources.split(","):
            for mode in args.modes.split(","):
                row = run_case(seq, frames, gt_mesh, mode, ps, args, gt_pts)
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"neural_{args.device.replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "device": dev,
                               "rows": rows}, indent=1, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
