#!/usr/bin/env python3
"""TSDF integration benchmark: neural_mapping vs Open3D's VoxelBlockGrid (C++).

On the first ``--frames`` frames of 7-Scenes redkitchen (loaded into memory
once; loading is not timed), for each voxel size, in one run:

* ours: ms/frame of ``TSDFVolume.integrate`` (allocation + update, color on),
  after a warm-up on a throw-away volume;
* Open3D (timed interleaved with ours, frame by frame, so that load from other
  processes hits both alike): ``compute_unique_block_coordinates`` + ``integrate`` of
  ``o3d.t.geometry.VoxelBlockGrid`` (tsdf/weight/color float32, block
  resolution 8, same truncation via ``trunc_voxel_multiplier``, same
  ``depth_max``, depth scale 1000, extrinsic = inv(GT pose)), same warm-up;
* full-mesh extraction time of both (ours: ``neural_mapping.products.meshing.extract_mesh``);
* GIL: a second Python thread counts iterations of a pure-Python loop (each
  iteration ends in ``time.sleep(0)``, which lets the GIL go) while the main
  thread integrates; its rate is compared with the rate measured while the
  main thread sleeps for the same time ("ideal").  Torch ops release the GIL,
  so the ticker keeps most of its rate; a call that holds the GIL stalls it.
  On a 2-core machine the ticker also competes for the CPU with the
  integration threads, so 100 % is not reachable by either.

Prints a table and writes JSON (default ``bench/results/integration.json``).
Timings on a shared machine: the JSON records the load average before and
after; compare runs only on an otherwise idle machine.

    .venv/bin/python bench/bench_integration.py [--frames 300] [--voxel-sizes 0.01 0.02 0.05]
        [--device cpu] [--threads N] [--coverage]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neural_mapping.backends.tsdf.integrate import touched_blocks  # noqa: E402
from neural_mapping.backends.tsdf.volume import TSDFVolume  # noqa: E402
from neural_mapping.types import CameraIntrinsics, depth_from_uint16  # noqa: E402


def load_frames(root: Path, n: int):
    from PIL import Image

    K = np.loadtxt(root / "camera-intrinsics.txt")
    frames = []
    for i in range(n):
        p = root / f"frame-{i:06d}"
        if not Path(f"{p}.depth.png").is_file():
            break
        raw = np.array(Image.open(f"{p}.depth.png"))
        raw[raw == 65535] = 0
        frames.append({"raw": raw, "depth": depth_from_uint16(raw, 1000.0),
                       "color": np.array(Image.open(f"{p}.color.jpg").convert("RGB")),
                       "pose": np.loadtxt(f"{p}.pose.txt")})
    if not frames:
        raise SystemExit(f"no 7-Scenes frames in {root}")
    h, w = frames[0]["depth"].shape
    return CameraIntrinsics.from_matrix(K, w, h), frames


# ----------------------------------------------------------------------------- ours
def ours_volume(vs, args):
    return TSDFVolume(voxel_size_m=vs, truncation_m=args.trunc_vox * vs, depth_min_m=0.1,
                      depth_max_m=args.depth_max, max_weight=64.0, integrate_color=True,
                      initial_capacity=4096, max_capacity=2_000_000, device=args.device)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run_ours(K, frames, vs, args):
    warm = ours_volume(vs, args)
    for f in frames[:args.warmup]:
        warm.integrate(f["depth"], K, f["pose"], f["color"])
    del warm
    vol = ours_volume(vs, args)
    times, cpu = [], time.process_time()
    t_all = time.perf_counter()
    for f in frames:
        t = time.perf_counter()
        vol.integrate(f["depth"], K, f["pose"], f["color"])
        sync(vol.device)
        times.append(time.perf_counter() - t)
    wall = time.perf_counter() - t_all
    cpu = time.process_time() - cpu
    return vol, times, wall, cpu


def ours_step(K, frames, vs, args):
    vol = ours_volume(vs, args)
    state = {"i": 0}

    def step():
        f = frames[state["i"] % len(frames)]
        state["i"] += 1
        vol.integrate(f["depth"], K, f["pose"], f["color"])
        sync(vol.device)
    return step


# ----------------------------------------------------------------------------- Open3D
def o3d_setup(K, frames, vs, args):
    import open3d as o3d
    import open3d.core as o3c

    dev = o3c.Device("CPU:0")
    intr = o3c.Tensor(K.K, o3c.float64)
    data = [(o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(f["raw"]))),
             o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(f["color"]))),
             o3c.Tensor(np.linalg.inv(f["pose"]), o3c.float64)) for f in frames]

    def new_vbg():
        return o3d.t.geometry.VoxelBlockGrid(
            attr_names=("tsdf", "weight", "color"), attr_dtypes=(o3c.float32,) * 3,
            attr_channels=((1), (1), (3)), voxel_size=vs, block_resolution=8,
            block_count=args.o3d_block_count, device=dev)

    def integrate(vbg, d, c, E):
        coords = vbg.compute_unique_block_coordinates(d, intr, E, 1000.0, args.depth_max,
                                                      args.trunc_vox)
        t = time.perf_counter()
        vbg.integrate(coords, d, c, intr, intr, E, 1000.0, args.depth_max, args.trunc_vox)
        return time.perf_counter() - t
    return data, new_vbg, integrate


def o3d_step(K, frames, vs, args):
    data, new_vbg, integrate = o3d_setup(K, frames, vs, args)
    vbg = new_vbg()
    state = {"i": 0}

    def step():
        d, c, E = data[state["i"] % len(data)]
        state["i"] += 1
        integrate(vbg, d, c, E)
    return step


# ----------------------------------------------------------------------------- interleaved
def run_interleaved(K, frames, vs, args):
    """Ours and Open3D on the same frame back to back, frame after frame, so that load
    from other processes on a shared machine hits both alike."""
    data, new_vbg, o3d_integrate = o3d_setup(K, frames, vs, args)
    warm, warm_o3d = ours_volume(vs, args), new_vbg()
    for f, (d, c, E) in zip(frames[:args.warmup], data[:args.warmup]):
        warm.integrate(f["depth"], K, f["pose"], f["color"])
        o3d_integrate(warm_o3d, d, c, E)
    del warm, warm_o3d
    vol, vbg = ours_volume(vs, args), new_vbg()
    t_ours, t_o3d, t_only = [], [], []
    for f, (d, c, E) in zip(frames, data):
        t = time.perf_counter()
        vol.integrate(f["depth"], K, f["pose"], f["color"])
        sync(vol.device)
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        t_only.append(o3d_integrate(vbg, d, c, E))
        t_o3d.append(time.perf_counter() - t)
    return vol, vbg, t_ours, t_o3d, t_only


# ----------------------------------------------------------------------------- GIL
def ticker_rate(duration, work=None):
    """Iterations/s of a pure-Python loop in a second thread while the main thread runs
    ``work()`` repeatedly (or sleeps) for ``duration`` seconds."""
    stop = threading.Event()
    count = [0]

    def tick():
        n = 0
        while not stop.is_set():
            n += 1
            time.sleep(0)
        count[0] = n

    th = threading.Thread(target=tick, daemon=True)
    t0 = time.perf_counter()
    th.start()
    calls = 0
    if work is None:
        time.sleep(duration)
    else:
        while time.perf_counter() - t0 < duration:
            work()
            calls += 1
    stop.set()
    th.join()
    return count[0] / (time.perf_counter() - t0), calls


def gil_share(step, duration):
    step()  # warm
    ideal, _ = ticker_rate(duration)
    busy, calls = ticker_rate(duration, step)
    return busy / ideal, calls


# ----------------------------------------------------------------------------- coverage
def coverage(K, frames, vs, args):
    """Share of the band voxels (weight > 0, |tsdf| < 1) that the default strided
    allocation updates, relative to exhaustive allocation (every pixel, samples every
    half voxel), per frame into an empty map (the worst case: nothing allocated yet)."""
    shares = []
    trunc = args.trunc_vox * vs
    for f in frames[::max(1, len(frames) // 10)]:
        counts = []
        for exhaustive in (False, True):
            vol = ours_volume(vs, args)
            if exhaustive:
                coords = touched_blocks(vol.grid, torch.from_numpy(f["depth"]), K,
                                        torch.from_numpy(f["pose"]), truncation_m=trunc,
                                        depth_min_m=0.1, depth_max_m=args.depth_max, stride=1,
                                        samples=int(np.ceil(2 * trunc / (0.5 * vs))) + 1)
                vol.grid.allocate(coords)
            vol.integrate(f["depth"], K, f["pose"])
            g = vol.grid
            counts.append(int(((g.active("weight") > 0) & (g.active("tsdf").abs() < 1)).sum()))
        shares.append(counts[0] / max(counts[1], 1))
    return {"mean": float(np.mean(shares)), "min": float(np.min(shares)), "frames": len(shares)}


# ----------------------------------------------------------------------------- main
def stats_ms(times):
    t = np.asarray(times) * 1e3
    return {"mean": float(t.mean()), "median": float(np.median(t)), "p95": float(np.percentile(t, 95))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("NEURAL_MAPPING_DATA", REPO.parent / "shared" / "data")) / "7scenes_redkitchen")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--voxel-sizes", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    ap.add_argument("--trunc-vox", type=float, default=4.0, help="truncation in voxels (both)")
    ap.add_argument("--depth-max", type=float, default=3.0)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--gil-seconds", type=float, default=3.0)
    ap.add_argument("--o3d-block-count", type=int, default=100_000)
    ap.add_argument("--no-open3d", action="store_true")
    ap.add_argument("--no-mesh", action="store_true")
    ap.add_argument("--coverage", action="store_true", help="also measure allocation coverage")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "integration.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")

    K, frames = load_frames(args.data, args.frames)
    try:
        from neural_mapping.products.meshing import extract_mesh
    except ImportError:
        extract_mesh = None
    have_o3d = not args.no_open3d
    if have_o3d:
        try:
            import open3d  # noqa: F401
        except ImportError:
            have_o3d = False
            print("open3d is not installed: ours only")

    result = {"frames": len(frames), "device": args.device, "torch_threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "torch": torch.__version__,
              "loadavg_before": os.getloadavg(), "truncation_vox": args.trunc_vox,
              "depth_max_m": args.depth_max, "runs": []}
    if have_o3d:
        import open3d
        result["open3d"] = open3d.__version__
    print(f"{len(frames)} frames of {args.data.name}, device {args.device}, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")

    for vs in args.voxel_sizes:
        run = {"voxel_size_m": vs, "timing": "interleaved" if have_o3d else "sequential"}
        vbg = None
        if have_o3d:
            vol, vbg, t, t_o3d, t_only = run_interleaved(K, frames, vs, args)
            run["o3d_ms"] = stats_ms(t_o3d)
            run["o3d_integrate_only_ms"] = stats_ms(t_only)
            run["o3d_blocks"] = int(vbg.hashmap().size())
        else:
            vol, t, wall, cpu = run_ours(K, frames, vs, args)
            run["ours_cpu_ms_per_frame"] = cpu / len(frames) * 1e3
        run["ours_ms"] = stats_ms(t)
        run["ours_blocks"] = vol.grid.num_blocks
        if extract_mesh is not None and not args.no_mesh:
            t0 = time.perf_counter()
            mesh = extract_mesh(vol.field())
            run["ours_mesh_s"] = time.perf_counter() - t0
            tri = getattr(mesh, "triangles", None)
            if tri is None and isinstance(mesh, (tuple, list)):
                tri = mesh[1]
            run["ours_mesh_triangles"] = int(len(tri)) if tri is not None else None
        elif extract_mesh is None:
            run["ours_mesh_note"] = "neural_mapping.products.meshing not available"
        del vol
        run["ours_gil_share"], _ = gil_share(ours_step(K, frames, vs, args), args.gil_seconds)
        if have_o3d:
            if not args.no_mesh:
                t0 = time.perf_counter()
                m = vbg.extract_triangle_mesh()
                run["o3d_mesh_s"] = time.perf_counter() - t0
                run["o3d_mesh_triangles"] = int(m.triangle.indices.shape[0])
            del vbg
            run["o3d_gil_share"], _ = gil_share(o3d_step(K, frames, vs, args), args.gil_seconds)
            run["speedup_vs_o3d"] = run["o3d_ms"]["mean"] / run["ours_ms"]["mean"]
            run["speedup_vs_o3d_median"] = run["o3d_ms"]["median"] / run["ours_ms"]["median"]
        if args.coverage:
            run["coverage"] = coverage(K, frames, vs, args)
        result["runs"].append(run)
        print(f"  voxel {vs * 100:g} cm done (ours {run['ours_ms']['mean']:.2f} ms/frame)")

    result["loadavg_after"] = os.getloadavg()
    hdr = (f"{'voxel':>6} | {'ours ms':>8} {'(med)':>6} | {'o3d ms':>7} {'(med)':>6} {'(int.)':>6} | "
           f"{'o3d/ours':>8} {'(med)':>5} | "
           f"{'blocks ours/o3d':>16} | {'mesh s ours/o3d':>16} | {'GIL ours/o3d':>13}")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for r in result["runs"]:
        o = r.get("o3d_ms", {}).get("mean", float("nan"))
        oi = r.get("o3d_integrate_only_ms", {}).get("mean", float("nan"))
        om = r.get("o3d_ms", {}).get("median", float("nan"))
        print(f"{r['voxel_size_m'] * 100:>4g}cm | {r['ours_ms']['mean']:>8.2f} {r['ours_ms']['median']:>6.2f} | "
              f"{o:>7.2f} {om:>6.2f} {oi:>6.2f} | {r.get('speedup_vs_o3d', float('nan')):>8.2f} "
              f"{r.get('speedup_vs_o3d_median', float('nan')):>5.2f} | "
              f"{r['ours_blocks']:>7}/{r.get('o3d_blocks', 0):<8} | "
              f"{r.get('ours_mesh_s', float('nan')):>7.2f}/{r.get('o3d_mesh_s', float('nan')):<8.2f} | "
              f"{r['ours_gil_share'] * 100:>5.0f}%/{r.get('o3d_gil_share', float('nan')) * 100:<5.0f}%")
        if "coverage" in r:
            c = r["coverage"]
            print(f"        allocation coverage of the band vs exhaustive: mean {c['mean'] * 100:.2f} %, "
                  f"min {c['min'] * 100:.2f} % over {c['frames']} frames")
    print(f"load average before {result['loadavg_before'][0]:.2f}, after {result['loadavg_after'][0]:.2f} "
          f"({os.cpu_count()} CPUs): timings on a busy machine are not comparable across runs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
