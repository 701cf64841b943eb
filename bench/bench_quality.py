#!/usr/bin/env python3
"""Map-quality benchmark with ground truth (issue 13): plain TSDF (ours), robust fusion (ours)
and Open3D's VoxelBlockGrid on the same inputs, same voxel size, same truncation.

Object protocol (:mod:`neural_mapping.datasets.synthetic_objects`): procedural objects in the
unit cube, 128^3 voxels, truncation 4 voxels, depth noise sigma = 0.01 (``d + N sigma d``),
blob outliers at fractions 0 / 0.01 / 0.05 / 0.1; voxel metrics (MSE, MAD, occupancy accuracy,
IoU, F1 over observed voxels; :func:`neural_mapping.io.map_metrics.voxel_metrics`).

Room protocol (:mod:`neural_mapping.datasets.synthetic_rooms`): procedural rooms, 320x240,
2 cm voxels, truncation 4 voxels, ground-truth poses, handheld trajectory with few (40) and many
(120) views; sensors: clean, realistic (axial Kinect noise, quantisation, flying pixels,
missing returns) and realistic + 10 % blob outliers, plus the robot trajectory (0.6 m camera
height) with the realistic sensor with and without blobs, few views; mesh metrics (accuracy / completion cm,
completion ratio < 5 cm, F-score 1/2/5 cm on 200 k samples; completion against the ground
truth seen by some view; :func:`neural_mapping.io.map_metrics.mesh_metrics`).  Open3D's mesh is
``extract_triangle_mesh()`` with its default ``weight_threshold=3``; ours use weight > 0.
Held-out rendered depth (:func:`neural_mapping.io.map_metrics.depth_metrics`): each map is
rendered from every 4th view halfway between two fused frames (``ProceduralRoom.heldout_poses``:
never fused; ours by ``render()``, Open3D by ``VoxelBlockGrid.ray_cast`` with weight threshold 3)
and compared with those views' exact depth: L1 and median over hits (cm), hit ratio, fraction
within 5 cm.

ms/frame: the three methods integrate the same frame back to back, frame after frame (load
from other processes hits all alike); the robust/plain ratio is measured within the run.
Blocks: allocated at the end (8^3 voxels each, all three).  Timings on a shared machine: compare
ratios, not absolute numbers.  Torch runs with ``--threads`` (default 1, as the mapping system).

    .venv/bin/python bench/bench_quality.py [--quick] [--threads 1] [--json bench/results/quality.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neural_mapping.backends.tsdf import TSDFVolume  # noqa: E402
from neural_mapping.datasets.synthetic_objects import ProceduralObject  # noqa: E402
from neural_mapping.datasets.synthetic_rooms import FEW_VIEWS, MANY_VIEWS, ProceduralRoom  # noqa: E402
from neural_mapping.io.map_metrics import (dense_tsdf, depth_metrics, mesh_metrics, visible_samples,  # noqa: E402
                                          voxel_metrics)
from neural_mapping.products.meshing import extract_mesh  # noqa: E402

METHODS = ("plain", "robust", "open3d")
TRUNC_VOX = 4.0


# ----------------------------------------------------------------------------- Open3D
class O3DVolume:
    """Open3D ``VoxelBlockGrid`` (tsdf, weight), block resolution 8, float depth in metres."""

    def __init__(self, vs: float, depth_max: float, intr):
        import open3d as o3d
        import open3d.core as o3c
        o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)  # ray_cast reallocation notices
        self.o3d, self.o3c, self.vs, self.depth_max = o3d, o3c, vs, depth_max
        self.K = o3c.Tensor(intr.K, o3c.float64)
        self.vbg = o3d.t.geometry.VoxelBlockGrid(
            attr_names=("tsdf", "weight"), attr_dtypes=(o3c.float32, o3c.float32),
            attr_channels=((1), (1)), voxel_size=vs, block_resolution=8, block_count=50000,
            device=o3c.Device("CPU:0"))

    def integrate(self, depth, T_world_cam):
        o3c = self.o3c
        d = self.o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(depth, dtype=np.float32)))
        E = o3c.Tensor(np.linalg.inv(T_world_cam), o3c.float64)
        coords = self.vbg.compute_unique_block_coordinates(d, self.K, E, 1.0, self.depth_max, TRUNC_VOX)
        self.vbg.integrate(coords, d, self.K, E, 1.0, self.depth_max, TRUNC_VOX)

    @property
    def num_blocks(self) -> int:
        return int(self.vbg.hashmap().size())

    def render_depth(self, pose, intr):
        """Open3D's own ray cast (``VoxelBlockGrid.ray_cast``, weight threshold 3 like its mesh)."""
        o3c = self.o3c
        hm = self.vbg.hashmap()
        keys = hm.key_tensor()[hm.active_buf_indices().to(o3c.int64)]
        E = o3c.Tensor(np.linalg.inv(pose), o3c.float64)
        r = self.vbg.ray_cast(block_coords=keys, intrinsic=self.K, extrinsic=E,
                              width=intr.width, height=intr.height, render_attributes=["depth"], depth_scale=1.0,
                              depth_min=0.1, depth_max=self.depth_max, weight_threshold=3.0,
                              trunc_voxel_multiplier=TRUNC_VOX, range_map_down_factor=8)
        return r["depth"].numpy()[..., 0]

    def mesh(self):
        m = self.vbg.extract_triangle_mesh().to_legacy()  # default weight_threshold = 3
        return np.asarray(m.vertices), np.asarray(m.triangles)

    def dense(self, shape):
        """``(tsdf metres, observed)`` like :func:`dense_tsdf` (Open3D stores tsdf / trunc; its voxel
        ``i`` is at ``i * voxel_size``, not at the voxel centre as ours)."""
        hm = self.vbg.hashmap()
        idx = hm.active_buf_indices().to(self.o3c.int64)
        keys = hm.key_tensor()[idx].numpy().astype(np.int64)
        idx = idx.numpy()
        tsdf = self.vbg.attribute("tsdf").numpy()[idx].reshape(-1, 8, 8, 8)
        w = self.vbg.attribute("weight").numpy()[idx].reshape(-1, 8, 8, 8)
        out = np.ones(shape, np.float32)
        seen = np.zeros(shape, bool)
        r = np.arange(8)
        for c, t, ww in zip(keys, tsdf, w):
            t, ww = t.transpose(2, 1, 0), ww.transpose(2, 1, 0)  # Open3D: [z, y, x] in a block
            ix, iy, iz = c[0] * 8 + r, c[1] * 8 + r, c[2] * 8 + r
            kx, ky, kz = ((a >= 0) & (a < s) for a, s in zip((ix, iy, iz), shape))
            if kx.any() and ky.any() and kz.any():
                sub = np.ix_(ix[kx], iy[ky], iz[kz])
                out[sub] = t[np.ix_(kx, ky, kz)]
                seen[sub] = ww[np.ix_(kx, ky, kz)] > 0
        return out * TRUNC_VOX * self.vs, seen


def volumes(vs, depth_max, intr):
    kw = dict(voxel_size_m=vs, truncation_m=TRUNC_VOX * vs, depth_min_m=0.1, depth_max_m=depth_max,
              integrate_color=False, device="cpu", initial_capacity=4096, max_capacity=2_000_000)
    return {"plain": TSDFVolume(robust_fusion=False, **kw), "robust": TSDFVolume(robust_fusion=True, **kw),
            "open3d": O3DVolume(vs, depth_max, intr)}


def fuse(vols, frames, intr):
    """Integrate ``(depth, pose)`` frames into every volume, interleaved; ms/frame per method."""
    t = {k: 0.0 for k in vols}
    for depth, pose in frames:
        for k, v in vols.items():
            t0 = time.perf_counter()
            if k == "open3d":
                v.integrate(depth, pose)
            else:
                v.integrate(depth, intr, pose)
            t[k] += time.perf_counter() - t0
    return {k: 1000.0 * s / max(len(frames), 1) for k, s in t.items()}


def blocks(v) -> int:
    return v.num_blocks if isinstance(v, O3DVolume) else v.grid.num_blocks


# ----------------------------------------------------------------------------- protocols
def object_protocol(seeds, fractions, views):
    rows = []
    for seed in seeds:
        gt = None
        for frac in fractions:
            ob = ProceduralObject(seed=seed, num_views=views, outlier_fraction=frac)
            if gt is None:  # Open3D's voxel i sits at i * voxel_size, ours at (i + 0.5) * voxel_size
                t = TRUNC_VOX * ob.voxel_size  # values beyond the truncation are not needed
                gt, gt_o3d = ob.gt_sdf(clip=t), ob.gt_sdf(offset_vox=0.0, clip=t)
            frames = [(ob.depth(i), ob.poses[i]) for i in range(len(ob))]
            vols = volumes(ob.voxel_size, 3.0, ob.intrinsics)
            ms = fuse(vols, frames, ob.intrinsics)
            for k, v in vols.items():
                p, o = v.dense(gt.shape) if k == "open3d" else dense_tsdf(v, gt.shape)
                m = voxel_metrics(p, o, gt_o3d if k == "open3d" else gt, TRUNC_VOX * ob.voxel_size)
                rows.append({"protocol": "object", "seed": seed, "fraction": frac, "method": k,
                             "ms_per_frame": ms[k], "blocks": blocks(v), **m})
            print(f"  object seed {seed} fraction {frac}: " + ", ".join(
                f"{r['method']} IoU {r['iou']:.3f}" for r in rows[-3:]), flush=True)
    return rows


ROOM_CASES = {"clean": dict(sensor="clean"), "realistic": dict(sensor="realistic"),
              "realistic+blobs0.1": dict(sensor="realistic", blob_fraction=0.1),
              "robot:realistic": dict(trajectory="robot", sensor="realistic"),
              "robot:realistic+blobs0.1": dict(trajectory="robot", sensor="realistic", blob_fraction=0.1)}
HANDHELD = ("clean", "realistic", "realistic+blobs0.1")


def room_protocol(seeds, cases, samples):
    rows = []
    for seed in seeds:
        for views, case in cases:
            ds = ProceduralRoom(seed=seed, num_frames=views, **ROOM_CASES[case])
            frames = [(ds[i].depth, ds[i].pose) for i in range(len(ds))]
            clean = [ds.clean_depth(i) for i in range(len(ds))]
            gt = ds.gt_mesh()
            pts = visible_samples(gt, clean, ds.gt_poses(), ds.intrinsics, num_samples=samples, seed=seed)
            held = ds.heldout_poses(every=4)  # between the fused frames, never fused
            held_gt = [ds.render(p)[0] for p in held]
            vols = volumes(0.02, 6.0, ds.intrinsics)
            ms = fuse(vols, frames, ds.intrinsics)
            for k, v in vols.items():
                mesh = v.mesh() if k == "open3d" else extract_mesh(v.field())
                m = mesh_metrics(mesh, gt, pts, num_samples=samples, seed=seed)
                rd = [v.render_depth(p, ds.intrinsics) if k == "open3d" else
                      v.render(ds.intrinsics, p, color=False).depth.cpu().numpy() for p in held]
                m.update(depth_metrics(rd, held_gt))
                rows.append({"protocol": "room", "seed": seed, "views": views, "case": case, "method": k,
                             "ms_per_frame": ms[k], "blocks": blocks(v), **m})
            print(f"  room seed {seed} {views} views {case}: " + ", ".join(
                f"{r['method']} acc {r['accuracy_cm']:.2f} CR {100 * r['completion_ratio_5cm']:.1f}"
                for r in rows[-3:]), flush=True)
    return rows


# ----------------------------------------------------------------------------- report
def mean_rows(rows, keys):
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for g, rs in groups.items():
        m = dict(zip(keys, g))
        for f in rs[0]:
            if f not in m and f != "seed" and isinstance(rs[0][f], (int, float)):
                m[f] = float(np.mean([r[f] for r in rs]))
        m["seeds"] = len(rs)
        out.append(m)
    return out


def print_tables(obj, room):
    if obj:
        print("\nObject protocol (mean over seeds): MSE [1e-5], MAD [1e-2], occ. Acc [%], IoU, F1, ms/frame, blocks")
        print(f"{'fraction':>8} {'method':>7} {'MSE':>7} {'MAD':>6} {'Acc':>6} {'IoU':>6} {'F1':>6} {'ms':>6} {'blocks':>7}")
        for r in obj:
            print(f"{r['fraction']:>8.2f} {r['method']:>7} {1e5 * r['mse']:7.2f} {100 * r['mad']:6.3f} "
                  f"{100 * r['occ_accuracy']:6.2f} {r['iou']:6.3f} {r['f1']:6.3f} {r['ms_per_frame']:6.1f} "
                  f"{r['blocks']:7.0f}")
    if room:
        print("\nRoom protocol, 2 cm (mean over seeds): Acc / Comp [cm], CR<5cm [%], F@1/2/5cm; held-out "
              "rendered depth: L1 / median [cm], hit [%], within 5 cm [%]; ms/frame, blocks")
        print(f"{'views':>5} {'case':>24} {'method':>7} {'Acc':>5} {'Comp':>5} {'CR':>5} {'F1cm':>5} "
              f"{'F2cm':>5} {'F5cm':>5} {'dL1':>5} {'dMed':>5} {'hit':>5} {'<5cm':>5} {'ms':>6} {'blocks':>7}")
        for r in room:
            print(f"{r['views']:>5.0f} {r['case']:>24} {r['method']:>7} {r['accuracy_cm']:5.2f} "
                  f"{r['completion_cm']:5.2f} {100 * r['completion_ratio_5cm']:5.1f} {r['fscore_1cm']:5.3f} "
                  f"{r['fscore_2cm']:5.3f} {r['fscore_5cm']:5.3f} {r['depth_l1_cm']:5.2f} {r['depth_median_cm']:5.2f} "
                  f"{100 * r['depth_hit_ratio']:5.1f} {100 * r['depth_within_5cm']:5.1f} {r['ms_per_frame']:6.1f} "
                  f"{r['blocks']:7.0f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 object seed at fractions 0 / 0.1 (50 views), "
                    "1 room: few views clean and with blobs, many views clean")
    ap.add_argument("--seeds", type=int, default=3, help="objects and rooms per configuration (full run)")
    ap.add_argument("--skip-objects", action="store_true")
    ap.add_argument("--skip-rooms", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: as the mapping system's "
                    "torch_threads; 2 threads on a shared 2-core machine make every op stall)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "quality.json"))
    args = ap.parse_args(argv)
    if args.quick:
        seeds, fractions, views, samples = [0], [0.0, 0.1], 50, 100_000
        cases = [(FEW_VIEWS, "clean"), (FEW_VIEWS, "realistic+blobs0.1"), (MANY_VIEWS, "clean"),
                 (FEW_VIEWS, "robot:realistic+blobs0.1")]
    else:
        seeds, fractions, views, samples = list(range(args.seeds)), [0.0, 0.01, 0.05, 0.1], 100, 200_000
        cases = [(v, c) for v in (FEW_VIEWS, MANY_VIEWS) for c in HANDHELD]
        cases += [(FEW_VIEWS, "robot:realistic"), (FEW_VIEWS, "robot:realistic+blobs0.1")]
    import torch
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    t0 = time.time()
    obj = [] if args.skip_objects else object_protocol(seeds, fractions, views)
    room = [] if args.skip_rooms else room_protocol(seeds, cases, samples)
    obj_m, room_m = mean_rows(obj, ("fraction", "method")), mean_rows(room, ("views", "case", "method"))
    print_tables(obj_m, room_m)
    ratio = [r["ms_per_frame"] for r in obj + room if r["method"] == "robust"]
    base = [r["ms_per_frame"] for r in obj + room if r["method"] == "plain"]
    if base:
        print(f"\nrobust / plain ms per frame (same run, all configurations): {sum(ratio) / sum(base):.2f}x")
    out = {"args": vars(args), "load_avg_before": load0, "load_avg_after": os.getloadavg(),
           "seconds": time.time() - t0, "robust_over_plain_ms": sum(ratio) / sum(base) if base else None,
           "object": obj_m, "room": room_m, "object_runs": obj, "room_runs": room}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
