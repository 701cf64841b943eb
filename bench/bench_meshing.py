"""Mesh extraction benchmark: neural_mapping.products.meshing vs Open3D VoxelBlockGrid.extract_triangle_mesh.

Open3D integrates the first N frames of 7-Scenes redkitchen (../shared/data); its
voxels are then copied into a VoxelBlockGrid, so both extract the very same TSDF.
Prints timings (median of --repeat runs) and vertex/triangle counts, and checks
that the two meshes have the same vertices.

    .venv/bin/python bench/bench_meshing.py --frames 300 --voxel-size-m 0.02

``--incremental``: the incremental path of the system (``MeshCache`` fed by our own
integration, ``MeshPublisherState`` -> rclpy publish) at each ``--voxel-sizes``: mesh update
ms while streaming the frames (update every ``--update-every`` frames), update ms for a
fixed number of dirty blocks (a spatially coherent set, as a camera view makes) at 25 / 50 /
100 % of the frames (flat in map size; a full extraction at the same points for contrast),
and triangles/s through ``Publisher.publish(bytes)`` (budgeted messages of
``--mesh-mbytes``, one subscriber in the same process that receives them raw).  Prints a
table, writes bench/results/meshing.json (key "incremental").

    .venv/bin/python bench/bench_meshing.py --incremental --frames 300 --voxel-sizes 0.01 0.02 0.05
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

from neural_mapping.grid.field import FIELD_ATTRIBUTES, VoxelField  # noqa: E402
from neural_mapping.grid.voxel_grid import VoxelBlockGrid  # noqa: E402
from neural_mapping.products.meshing import extract_mesh  # noqa: E402


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


def to_field(vbg, voxel: float, block: int, truncation_m: float) -> VoxelField:
    """Copy Open3D's blocks into a VoxelField (Open3D stores voxels [z, y, x] in a block)."""
    hm = vbg.hashmap()
    idx = torch.from_numpy(hm.active_buf_indices().cpu().numpy().astype(np.int64))
    keys = torch.from_numpy(hm.key_tensor().cpu().numpy())[idx]
    grid = VoxelBlockGrid(voxel, block, attributes=FIELD_ATTRIBUTES, device="cpu",
                          initial_capacity=max(16, len(idx)))
    _, _ = grid.allocate(keys.int())
    slots = grid.lookup(keys)
    for ours, theirs in (("sdf", "tsdf"), ("weight", "weight"), ("color", "color")):
        a = torch.from_numpy(vbg.attribute(theirs).cpu().numpy())[idx]
        a = a.permute(0, 3, 2, 1, 4)  # [n, z, y, x, C] -> [n, x, y, z, C]
        grid.attrs[ours][slots] = a[..., 0] if a.shape[-1] == 1 else a
    return VoxelField.of_grid(grid, truncation_m)


def timed(fn, repeat: int):
    out, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


# ------------------------------------------------------------------------------ incremental
class _RosLoop:
    """rclpy node with a publisher and (optionally) a raw subscriber on the same topic."""

    def __init__(self):
        import random
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from visualization_msgs.msg import MarkerArray
        self.rclpy = rclpy
        self.ctx = Context()
        rclpy.init(args=[], context=self.ctx, domain_id=random.randint(100, 200))
        self.node = rclpy.create_node("bench_meshing", context=self.ctx, start_parameter_services=False,
                                      enable_rosout=False)
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
        self.received = []
        self.pub = self.node.create_publisher(MarkerArray, "bench/mesh", qos)
        self.node.create_subscription(MarkerArray, "bench/mesh",
                                      lambda b: self.received.append((time.perf_counter(), len(b))),
                                      qos, raw=True)
        self.pub_nosub = self.node.create_publisher(MarkerArray, "bench/mesh_nosub", qos)
        end = time.monotonic() + 20
        while self.pub.get_subscription_count() == 0 and time.monotonic() < end:
            self.ex.spin_once(timeout_sec=0.02)
        if self.pub.get_subscription_count() == 0:
            raise RuntimeError("DDS discovery of the loopback subscriber failed")

    def wait_received(self, n: int, timeout: float = 60.0) -> bool:
        end = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < end:
            self.ex.spin_once(timeout_sec=0.01)
        return len(self.received) >= n

    def close(self):
        self.ex.shutdown()
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.ctx)


def _pct(values, q):
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 2) if len(values) else None


def _coherent_set(coords: np.ndarray, n: int, rng) -> np.ndarray:
    """Indices of the ``n`` blocks nearest to a random one (what one camera view dirties)."""
    seed = coords[rng.integers(len(coords))]
    return np.argsort(((coords - seed) ** 2).sum(1), kind="stable")[:n]


def _tiled_field(field: VoxelField, tiles: int) -> VoxelField:
    """``tiles`` (1, 4 or 16) copies of ``field`` side by side on an x/z square (tile 0 at the
    original place): a map ``tiles`` times larger around the very same blocks."""
    grid = field.grid
    n = grid.num_blocks
    c = grid.active_coords().to(torch.int64)
    ext = c.max(dim=0).values - c.min(dim=0).values + 3
    side = int(round(tiles ** 0.5))
    offs = [(i * int(ext[0]), 0, j * int(ext[2])) for i in range(side) for j in range(side)]
    big = VoxelBlockGrid(grid.voxel_size_m, grid.block_size, attributes=FIELD_ATTRIBUTES,
                         device=grid.device, initial_capacity=n * tiles,
                         max_capacity=max(300_000, n * tiles), max_index_cells=1 << 28)
    allc = torch.cat([c + torch.tensor(o, device=c.device) for o in offs])
    big.allocate(allc.to(torch.int32))
    slots = big.lookup(allc)
    for name, a in (("sdf", field.sdf), ("weight", field.weight), ("color", field.color)):
        big.attrs[name][slots] = a[:n].repeat((len(offs),) + (1,) * (a.dim() - 1))
    return VoxelField.of_grid(big, field.truncation_m)


def run_incremental(args) -> None:
    from neural_mapping.datasets import SevenScenes
    from neural_mapping.products.meshing import MeshCache, MeshUpdate, extract_block_meshes, unpack_block_keys
    from neural_mapping.backends.tsdf import TSDFVolume

    try:
        from neural_mapping.ros.mesh_publisher import MeshPublisherState
        ros = _RosLoop()
    except Exception as e:  # noqa: BLE001 - report, keep the core numbers
        print(f"(no rclpy publishing: {type(e).__name__}: {e})")
        ros = None
    dev = torch.device(args.device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    ds = SevenScenes(args.data, max_frames=args.frames)
    frames = [ds[i] for i in range(len(ds))]
    n = len(frames)
    checkpoints = {max(1, round(n * f)): f for f in (0.25, 0.5, 1.0)}
    budget = int(args.mesh_mbytes * 1e6) if args.mesh_mbytes > 0 else None
    rng = np.random.default_rng(0)
    wt = 0.0  # as MappingSystem's mesh cache
    res = {"frames": n, "device": str(dev), "torch_threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "loadavg_before": list(os.getloadavg()),
           "update_every": args.update_every, "mesh_mbytes": args.mesh_mbytes, "runs": []}
    for vs in args.voxel_sizes:
        fixed_sets = {}
        vol = TSDFVolume(voxel_size_m=vs, depth_max_m=args.depth_max_m, device=dev)
        cache = MeshCache(weight_threshold=wt)
        pstate = MeshPublisherState(max_bytes_per_update=budget) if ros else None
        stream, ser_ms, pub_ms = [], [], []
        sizes = []
        for i, fr in enumerate(frames):
            st = vol.integrate(fr)
            cache.mark_dirty(vol.grid, st["slots"], i)
            if (i + 1) % args.update_every == 0 or i == n - 1:
                sync()
                upd = cache.update(vol.field())
                stream.append((1e3 * upd.seconds, upd.dirty_processed, upd.blocks_extracted,
                               len(upd.changed), upd.num_triangles))
                if pstate is not None:  # incremental messages, no subscriber on this topic
                    pstate.apply(upd)
                    t0 = time.perf_counter()
                    data = pstate.next_message(stamp=float(i))
                    t1 = time.perf_counter()
                    if data is not None:
                        ros.pub_nosub.publish(data)
                        pub_ms.append(1e3 * (time.perf_counter() - t1))
                        ser_ms.append(1e3 * (t1 - t0))
            if (i + 1) not in checkpoints:
                continue
            field = vol.field()
            # ---- fixed numbers of dirty blocks at this map size
            keys = list(cache.pieces())
            coords = unpack_block_keys(keys).numpy()
            point = {"map_fraction": checkpoints[i + 1], "frames": i + 1, "blocks": vol.grid.num_blocks,
                     "mesh_blocks": len(keys), "triangles": cache.num_triangles, "dirty": {}}
            for N in args.dirty_counts:
                if N > len(keys):
                    continue
                if N not in fixed_sets:  # the same blocks at every map size
                    if sizes:
                        continue
                    fixed_sets[N] = [coords[_coherent_set(coords, N, rng)] for _ in range(args.repeat)]
                times, extracted, tri = [], [], []
                for r in range(args.repeat):
                    slots = vol.grid.lookup(torch.as_tensor(fixed_sets[N][r], device=dev))
                    # change them a little (as integration would) so every piece is rebuilt
                    field.sdf[slots] += 1e-5 if r % 2 == 0 else -1e-5
                    cache.mark_dirty(field, slots, i)
                    sync()
                    t0 = time.perf_counter()
                    upd = cache.update(field)
                    sync()
                    times.append(time.perf_counter() - t0)
                    extracted.append(upd.blocks_extracted)
                    tri.append(upd.num_triangles)
                point["dirty"][N] = {"update_ms": round(1e3 * statistics.median(times), 2),
                                     "blocks_extracted": int(statistics.median(extracted)),
                                     "triangles_changed": int(statistics.median(tri))}
            sync()
            _, t_full = timed(lambda: (extract_block_meshes(field, weight_threshold=wt), sync()), 3)
            point["full_extract_ms"] = round(1e3 * t_full, 1)
            sizes.append(point)
        # ---- the same dirty blocks in maps 1x / 4x / 16x as large (tiled copies of the map)
        tiled = []
        for tiles in (1, 4, 16):
            big = _tiled_field(vol.field(), tiles)
            big_cache = MeshCache(weight_threshold=wt)
            big_cache.mark_all_dirty(big)
            big_cache.update(big)
            row = {"tiles": tiles, "blocks": big.num_blocks, "dirty": {}}
            for N, sets in sorted(fixed_sets.items()):
                times, extracted = [], []
                for r in range(args.repeat):
                    slots = big.grid.lookup(torch.as_tensor(sets[r], device=dev))
                    big.sdf[slots] += 1e-5 if r % 2 == 0 else -1e-5
                    big_cache.mark_dirty(big, slots)
                    sync()
                    t0 = time.perf_counter()
                    upd = big_cache.update(big)
                    sync()
                    times.append(time.perf_counter() - t0)
                    extracted.append(upd.blocks_extracted)
                row["dirty"][N] = {"update_ms": round(1e3 * statistics.median(times), 2),
                                   "blocks_extracted": int(statistics.median(extracted))}
            tiled.append(row)
            del big, big_cache
        run = {"voxel_size_m": vs, "blocks": vol.grid.num_blocks, "mesh_blocks": len(cache),
               "triangles": cache.num_triangles,
               "stream_updates": len(stream),
               "stream_update_ms": {"median": _pct([s[0] for s in stream], 50),
                                    "p95": _pct([s[0] for s in stream], 95),
                                    "max": _pct([s[0] for s in stream], 100)},
               "stream_dirty_blocks_median": _pct([s[1] for s in stream], 50),
               "stream_blocks_extracted_median": _pct([s[2] for s in stream], 50),
               "stream_changed_blocks_median": _pct([s[3] for s in stream], 50),
               "stream_changed_triangles_median": _pct([s[4] for s in stream], 50),
               "map_sizes": sizes, "tiled_map_sizes": tiled}
        if ros is not None:
            run["stream_serialize_ms_median"] = _pct(ser_ms, 50)
            run["stream_publish_ms_median"] = _pct(pub_ms, 50)
            # ---- the whole mesh to a new subscriber: budgeted messages, build + publish + receive
            full_state = MeshPublisherState(max_bytes_per_update=budget)
            full_state.apply(MeshUpdate(changed=cache.pieces()))
            tris = cache.num_triangles
            rows = []
            for _ in range(3):
                before = len(ros.received)
                t0 = time.perf_counter()
                msgs = full_state.full(stamp=1.0, max_bytes=budget)
                t1 = time.perf_counter()
                for b in msgs:
                    ros.pub.publish(b)
                t2 = time.perf_counter()
                ok = ros.wait_received(before + len(msgs))
                t3 = ros.received[-1][0] if ok else float("nan")
                rows.append((t1 - t0, t2 - t1, t3 - t0, len(msgs), sum(len(b) for b in msgs)))
            build, publish, e2e = (statistics.median(r[k] for r in rows) for k in range(3))
            run["publish"] = {"triangles": tris, "messages": rows[0][3], "mbytes": round(rows[0][4] / 1e6, 1),
                              "build_ms": round(1e3 * build, 1), "publish_ms": round(1e3 * publish, 1),
                              "received_ms": round(1e3 * e2e, 1),
                              "mtri_per_s_published": round(tris / (build + publish) / 1e6, 2),
                              "mtri_per_s_received": round(tris / e2e / 1e6, 2) if e2e == e2e else None}
        res["runs"].append(run)
        _print_incremental(run)
        del vol, cache
    if ros is not None:
        ros.close()
    out = args.json or (REPO / "bench" / "results" / "meshing.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {}
    if out.is_file():
        try:
            doc = json.loads(out.read_text())
        except ValueError:
            doc = {}
    doc["incremental"] = res
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}")


def _print_incremental(run) -> None:
    vs = run["voxel_size_m"]
    s = run["stream_update_ms"]
    print(f"\n== {vs * 100:g} cm: {run['blocks']} blocks, {run['mesh_blocks']} with triangles, "
          f"{run['triangles']} triangles")
    print(f"stream: {run['stream_updates']} updates, update ms median {s['median']} / p95 {s['p95']} / "
          f"max {s['max']}; per update median {run['stream_dirty_blocks_median']} dirty -> "
          f"{run['stream_blocks_extracted_median']} extracted, {run['stream_changed_blocks_median']} "
          f"changed blocks, {run['stream_changed_triangles_median']} triangles")
    if "stream_serialize_ms_median" in run:
        print(f"        serialize {run['stream_serialize_ms_median']} ms, publish "
              f"{run['stream_publish_ms_median']} ms per incremental message (median)")
    sizes = run["map_sizes"]
    head = "dirty blocks | " + " | ".join(f"{int(p['map_fraction'] * 100)}% map ({p['blocks']} blk)"
                                          for p in sizes)
    print(head)
    print("-" * len(head))
    counts = sorted({N for p in sizes for N in p["dirty"]})
    for N in counts:
        cells = []
        for p in sizes:
            d = p["dirty"].get(N)
            cells.append(f"{d['update_ms']:7.1f} ms ({d['blocks_extracted']} blk, "
                         f"{d['triangles_changed'] / 1e3:.0f}k tri)" if d else "-")
        print(f"{N:12d} | " + " | ".join(cells))
    print(f"{'full extract':>12} | " + " | ".join(f"{p['full_extract_ms']:7.1f} ms" for p in sizes))
    tiled = run.get("tiled_map_sizes") or []
    if tiled:
        head = "same dirty blocks, map tiled | " + " | ".join(
            f"x{t['tiles']} ({t['blocks']} blk)" for t in tiled)
        print(head)
        print("-" * len(head))
        for N in sorted({N for t in tiled for N in t["dirty"]}):
            print(f"{N:28d} | " + " | ".join(f"{t['dirty'][N]['update_ms']:7.1f} ms" for t in tiled))
    if "publish" in run:
        p = run["publish"]
        print(f"publish whole mesh: {p['triangles']} tri in {p['messages']} msgs / {p['mbytes']} MB: build "
              f"{p['build_ms']} ms + publish {p['publish_ms']} ms -> {p['mtri_per_s_published']} M tri/s; "
              f"received after {p['received_ms']} ms -> {p['mtri_per_s_received']} M tri/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("NEURAL_MAPPING_DATA", REPO.parent / "shared" / "data")) / "7scenes_redkitchen")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--voxel-size-m", type=float, default=0.02)
    ap.add_argument("--truncation-vox", type=float, default=4.0)
    ap.add_argument("--depth-max-m", type=float, default=3.0)
    ap.add_argument("--weight-threshold", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--incremental", action="store_true", help="incremental meshing + publish mode")
    ap.add_argument("--voxel-sizes", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    ap.add_argument("--update-every", type=int, default=1, help="frames between mesh updates")
    ap.add_argument("--dirty-counts", type=int, nargs="+", default=[100, 300, 1000, 3000])
    ap.add_argument("--mesh-mbytes", type=float, default=8.0, help="byte budget per message (MB)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.incremental:
        run_incremental(args)
        return
    vs, B = args.voxel_size_m, 8

    t0 = time.perf_counter()
    vbg = integrate_open3d(args.data, args.frames, vs, args.truncation_vox, args.depth_max_m, B)
    t_int = time.perf_counter() - t0
    field = to_field(vbg, vs, B, args.truncation_vox * vs)

    ours, t_ours = timed(lambda: extract_mesh(field, weight_threshold=args.weight_threshold), args.repeat)
    o3_mesh, t_o3 = timed(lambda: vbg.extract_triangle_mesh(weight_threshold=args.weight_threshold),
                          args.repeat)

    o3v = o3_mesh.vertex.positions.numpy() + 0.5 * vs  # Open3D puts voxel v at v * voxel_size
    n_o3v, n_o3t = len(o3v), len(o3_mesh.triangle.indices.numpy())
    # Same vertices? Distance from each vertex to the nearest vertex of the other mesh.
    from scipy.spatial import cKDTree
    d_ours = cKDTree(o3v).query(ours.vertices)[0] if n_o3v and ours.num_vertices else np.zeros(0)
    d_o3 = cKDTree(ours.vertices).query(o3v)[0] if n_o3v and ours.num_vertices else np.zeros(0)
    res = {
        "frames": args.frames, "voxel_size_m": vs, "blocks": field.num_blocks,
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
