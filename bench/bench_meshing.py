"""Mesh extraction benchmark: neural_mapping.meshing vs Open3D VoxelBlockGrid.extract_triangle_mesh.

Open3D integrates the first N frames of 7-Scenes redkitchen (../shared/data); its
voxels are then copied into a VoxelBlockGrid, so both extract the very same TSDF.
Prints timings (median of --repeat runs) and vertex/triangle counts, and checks
that the two meshes have the same vertices.

    .venv/bin/python bench/bench_meshing.py --frames 300 --voxel-size-m 0.02
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# Open3D's and torch's OpenMP workers spin-wait after each call and starve each other in
# one process (measured on 2 cores: 1.3 s instead of 0.06 s); let them sleep instead.
# Must be set before torch / open3d load their OpenMP runtimes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neural_mapping.grid import VoxelBlockGrid  # noqa: E402
from neural_mapping.meshing import extract_mesh  # noqa: E402


def integrate_open3d(data: Path, frames: int, voxel: float, trunc_vox: float, depth_max: float,
                     block: int):
    import open3d as o3d
    import open3d.core as o3c

    dev = o3c.Device("CPU:0")
    K = np.loadtxt(data / "camera-intrinsics.txt")
    vbg = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"),
        attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
        attr_channels=((1), (1), (3)), voxel_size=voxel, block_resolution=block,
        block_count=100_000, device=dev)
    intr = o3c.Tensor(K, o3c.float64)
    for i in range(frames):
        depth = o3d.t.io.read_image(str(data / f"frame-{i:06d}.depth.png")).to(dev)
        color = o3d.t.io.read_image(str(data / f"frame-{i:06d}.color.jpg")).to(dev)
        T = np.loadtxt(data / f"frame-{i:06d}.pose.txt")
        extr = o3c.Tensor(np.linalg.inv(T), o3c.float64)
        coords = vbg.compute_unique_block_coordinates(depth, intr, extr, 1000.0, depth_max,
                                                      trunc_vox)
        vbg.integrate(coords, depth, color, intr, extr, 1000.0, depth_max, trunc_vox)
    return vbg


def to_grid(vbg, voxel: float, block: int) -> VoxelBlockGrid:
    """Copy Open3D's blocks into a VoxelBlockGrid (Open3D stores voxels [z, y, x] in a block)."""
    hm = vbg.hashmap()
    idx = torch.from_numpy(hm.active_buf_indices().cpu().numpy().astype(np.int64))
    keys = torch.from_numpy(hm.key_tensor().cpu().numpy())[idx]
    grid = VoxelBlockGrid(voxel, block, device="cpu", initial_capacity=max(16, len(idx)))
    _, _ = grid.allocate(keys.int())
    slots = grid.lookup(keys)
    for name in ("tsdf", "weight", "color"):
        a = torch.from_numpy(vbg.attribute(name).cpu().numpy())[idx]
        a = a.permute(0, 3, 2, 1, 4)  # [n, z, y, x, C] -> [n, x, y, z, C]
        grid.attrs[name][slots] = a[..., 0] if a.shape[-1] == 1 else a
    return grid


def timed(fn, repeat: int):
    out, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "7scenes_redkitchen")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--voxel-size-m", type=float, default=0.02)
    ap.add_argument("--truncation-vox", type=float, default=4.0)
    ap.add_argument("--depth-max-m", type=float, default=3.0)
    ap.add_argument("--weight-threshold", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    vs, B = args.voxel_size_m, 8

    t0 = time.perf_counter()
    vbg = integrate_open3d(args.data, args.frames, vs, args.truncation_vox, args.depth_max_m, B)
    t_int = time.perf_counter() - t0
    grid = to_grid(vbg, vs, B)

    ours, t_ours = timed(lambda: extract_mesh(grid, weight_threshold=args.weight_threshold), args.repeat)
    o3_mesh, t_o3 = timed(lambda: vbg.extract_triangle_mesh(weight_threshold=args.weight_threshold),
                          args.repeat)

    o3v = o3_mesh.vertex.positions.numpy() + 0.5 * vs  # Open3D puts voxel v at v * voxel_size
    n_o3v, n_o3t = len(o3v), len(o3_mesh.triangle.indices.numpy())
    # Same vertices? Distance from each vertex to the nearest vertex of the other mesh.
    from scipy.spatial import cKDTree
    d_ours = cKDTree(o3v).query(ours.vertices)[0] if n_o3v and ours.num_vertices else np.zeros(0)
    d_o3 = cKDTree(ours.vertices).query(o3v)[0] if n_o3v and ours.num_vertices else np.zeros(0)
    res = {
        "frames": args.frames, "voxel_size_m": vs, "blocks": grid.num_blocks,
        "torch_threads": torch.get_num_threads(), "open3d_integrate_s": round(t_int, 2),
        "open3d_extract_ms": round(1e3 * t_o3, 1), "ours_extract_ms": round(1e3 * t_ours, 1),
        "open3d_vertices": n_o3v, "open3d_triangles": n_o3t,
        "ours_vertices": ours.num_vertices, "ours_triangles": ours.num_triangles,
        "max_vertex_distance_vox": round(float(max(d_ours.max(initial=0), d_o3.max(initial=0))) / vs, 6),
    }
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
