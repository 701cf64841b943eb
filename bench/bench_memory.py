#!/usr/bin/env python3
"""Memory benchmark: the map stays bounded on long runs (map_radius_m / map_max_blocks).

``synthetic``: a camera walking a 30 x 20 m corridor loop (100 m per lap,
:class:`~neural_mapping.datasets.corridor.CorridorLoop`, 160 x 120 depth, 1 m/s, 30 Hz
frames) through :class:`~neural_mapping.system.step.Mapper` (every frame integrated, the mesh
cache updated every 10 frames as the node's mesh timer would).  Per window of frames: blocks,
process RSS, integrate and mesh-update latency.  *Growth* compares the second half of the run
after warm-up (the first quarter) with the first half: max blocks, max RSS, p95 latencies.

``real``: TUM fr1_xyz looped (stamps continued across laps) into a realtime
:class:`~neural_mapping.system.mapping_system.MappingSystem` with ground-truth external poses,
fed at ``--rate-hz`` (60) for ``--seconds``: frames the system cannot keep up with are dropped
oldest-first (counted), pose latency and RSS per window, growth as above.

Timings come from a shared 2-core machine (other jobs run beside it): latencies are noisy;
block counts and RSS are what the growth numbers are about.

    .venv/bin/python bench/bench_memory.py [--laps 1.5] [--seconds 30] [--only synthetic|real]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neural_mapping.config import MappingConfig  # noqa: E402
from neural_mapping.datasets.corridor import CorridorLoop  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def growth(rows, key, agg=max):
    """agg(key) over the second half after warm-up / over the first half - 1."""
    rest = rows[len(rows) // 4:]
    a, b = rest[: len(rest) // 2], rest[len(rest) // 2:]
    va, vb = agg(r[key] for r in a), agg(r[key] for r in b)
    return float(vb / va - 1.0) if va else float("nan")


def p95(xs):
    return float(np.percentile(xs, 95)) if len(xs) else float("nan")


def synthetic(args):
    from neural_mapping.system.step import Mapper
    cfg = MappingConfig.from_flat({"voxel_size_m": args.voxel, "depth_max_m": 3.0, "device": "cpu",
                                   "map_radius_m": args.radius, "map_max_blocks": args.max_blocks,
                                   "initial_capacity_blocks": 1024})
    m = Mapper(cfg)
    loop = CorridorLoop(30.0, 20.0, speed_m_s=1.0, rate_hz=30.0)
    n = int(args.laps * loop.perimeter_m / loop.step_m)
    rows, integ, mesh = [], [], []
    window = max(1, n // 20)
    for f in loop.frames(n):
        t0 = time.perf_counter()
        m.integrate(f, f.pose)
        integ.append(1e3 * (time.perf_counter() - t0))
        if f.index % 10 == 0:
            t0 = time.perf_counter()
            m.mesh_cache.update(m.backend.field())
            mesh.append(1e3 * (time.perf_counter() - t0))
        if (f.index + 1) % window == 0:
            rows.append({"frame": f.index + 1, "distance_m": round((f.index + 1) * loop.step_m, 1),
                         "blocks": m.backend.grid.num_blocks, "rss_mb": rss_mb(),
                         "map_mb": m.backend.memory_bytes() / 2**20, "mesh_pieces": len(m.mesh_cache),
                         "integrate_p95_ms": p95(integ), "mesh_p95_ms": p95(mesh)})
            integ, mesh = [], []
    return {"frames": n, "laps": args.laps, "lap_m": loop.perimeter_m, "rows": rows,
            "evictions": m.bounds.stats(),
            "growth": {k: growth(rows, k) for k in ("blocks", "rss_mb", "integrate_p95_ms", "mesh_p95_ms")}}


def real(args):
    from neural_mapping.datasets import open_dataset
    from neural_mapping.system.mapping_system import MappingSystem
    ds = open_dataset(args.data, max_frames=args.real_frames, stride=2)
    frames = [ds[i] for i in range(len(ds))]
    lap_s = frames[-1].timestamp - frames[0].timestamp + 1.0 / args.rate_hz
    cfg = MappingConfig.from_flat({"voxel_size_m": args.real_voxel, "device": "cpu", "sync_mode": "realtime",
                                   "pose_source": "external", "map_radius_m": args.radius,
                                   "map_max_blocks": args.max_blocks})
    rows = []
    with MappingSystem(cfg) as system:
        t_start = time.monotonic()
        next_row = t_start + args.seconds / 20
        k = 0
        while time.monotonic() - t_start < args.seconds:
            lap, i = divmod(k, len(frames))
            fr = frames[i]
            stamp = fr.timestamp + lap * lap_s
            from neural_mapping.types import RGBDFrame
            system.submit_pose(stamp, fr.pose)
            system.submit(RGBDFrame(fr.depth, fr.intrinsics, fr.color, timestamp=stamp, index=k))
            k += 1
            t_next = t_start + k / args.rate_hz
            time.sleep(max(0.0, t_next - time.monotonic()))
            if time.monotonic() >= next_row:
                next_row += args.seconds / 20
                st = system.stats()
                lat = list(system.latencies["pose"])[-60:]
                rows.append({"t_s": round(time.monotonic() - t_start, 1), "submitted": k,
                             "integrated": st.get("integrated", 0), "blocks": st["blocks"],
                             "rss_mb": rss_mb(), "pose_latency_p95_ms": 1e3 * p95(lat),
                             "dropped_tracking_behind": st.get("dropped_tracking_behind", 0),
                             "dropped_mapping_behind": st.get("dropped_mapping_behind", 0)})
        system.flush(timeout=30)
        st = system.stats()
    return {"seconds": args.seconds, "rate_hz": args.rate_hz, "frames_in_lap": len(frames),
            "submitted": k, "integrated": st.get("integrated", 0), "rows": rows,
            "growth": {k_: growth(rows, k_) for k_ in ("blocks", "rss_mb", "pose_latency_p95_ms")}}


def table(rows):
    keys = list(rows[0])
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(f"{r[k]:.1f}" if isinstance(r[k], float) else str(r[k]) for k in keys))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("synthetic", "real"))
    ap.add_argument("--laps", type=float, default=1.5, help="synthetic: laps of the 100 m loop")
    ap.add_argument("--voxel", type=float, default=0.05, help="synthetic voxel size (m)")
    ap.add_argument("--radius", type=float, default=4.0, help="map_radius_m")
    ap.add_argument("--max-blocks", type=int, default=0, help="map_max_blocks (0 = off)")
    ap.add_argument("--data", default=str(Path(os.environ.get("NEURAL_MAPPING_DATA", REPO.parent / "shared" / "data")) / "tum_fr1_xyz"))
    ap.add_argument("--seconds", type=float, default=30.0, help="real: run time (the issue asks 600)")
    ap.add_argument("--rate-hz", type=float, default=60.0)
    ap.add_argument("--real-frames", type=int, default=120, help="real: frames per lap (stride 2)")
    ap.add_argument("--real-voxel", type=float, default=0.02)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "memory.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {"load_avg": os.getloadavg(), "args": vars(args)}
    if args.only in (None, "synthetic"):
        out["synthetic"] = synthetic(args)
        print(f"synthetic corridor loop, {out['synthetic']['frames']} frames "
              f"({args.laps} laps of {out['synthetic']['lap_m']:.0f} m), map_radius_m {args.radius}")
        table(out["synthetic"]["rows"])
        print("growth after warm-up:", {k: f"{v:+.1%}" for k, v in out["synthetic"]["growth"].items()},
              "evictions:", out["synthetic"]["evictions"])
    if args.only in (None, "real"):
        out["real"] = real(args)
        print(f"real sequence looped at {args.rate_hz} Hz for {args.seconds} s: "
              f"{out['real']['submitted']} submitted, {out['real']['integrated']} integrated")
        table(out["real"]["rows"])
        print("growth after warm-up:", {k: f"{v:+.1%}" for k, v in out["real"]["growth"].items()})
    out["load_avg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
