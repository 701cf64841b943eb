#!/usr/bin/env python3
"""Bags as robots record them vs the raw layout: agreement, replay speed, decode cost, node rate.

``offline`` (default): the 7-Scenes fixture (``--frames`` frames) is written by ``make-bag``
in three layouts and each is replayed with the offline pipeline exactly as
``neural-mapping replay BAG`` does with no options (topics chosen from the bag):

* ``raw``         Image 16UC1 + Image rgb8 + PoseStamped ``/camera/pose``;
* ``compressed``  compressedDepth PNG + JPEG colour (``--jpeg-quality``) + PoseStamped;
* ``tf``          compressed as above, poses from ``/tf`` (odom -> base_link) chained with the
                  static mount on ``/tf_static``;
* ``odom``        compressed, ``nav_msgs/Odometry`` of base_link + the static mount.

Reported per layout: bag size, replay frames/s (end to end, ``metrics['fps']``), the largest
pose difference to the raw run, whether the TSDF (every block's tsdf and weight) is
identical, and the colour difference (mean / p99 of |colour - raw colour| over the voxels of
the raw map, 0-255).  Then the decode cost of one 640x480 frame (median ms over the
frames: raw Image, compressedDepth PNG, RVL, JPEG colour).

``node``: the mapping node as a subprocess over DDS, fed ``--rate`` Hz for ``--duration`` s
with raw Images and with compressed ones (``depth_transport: compressedDepth``,
``color_transport: compressed``; the messages are compressed before the clock starts):
frames integrated per second of publishing, drops by reason.

The machine is shared with other jobs (load average recorded): compare rows of one run.

    .venv/bin/python bench/bench_bags.py offline [--frames 60]
    .venv/bin/python bench/bench_bags.py node [--duration 15] [--rate 30]
Writes ``bench/results/bags.json`` / ``bench/results/bags_node.json`` and prints tables.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
DATA = Path(os.environ.get("NEURAL_MAPPING_DATA", REPO.parent / "shared" / "data")) / "7scenes_redkitchen"
LAYOUTS = {"raw": {}, "compressed": dict(color_transport="compressed", depth_transport="compressedDepth"),
           "tf": dict(color_transport="compressed", depth_transport="compressedDepth", poses="tf"),
           "odom": dict(color_transport="compressed", depth_transport="compressedDepth", poses="odom")}


def _blocks(backend):
    """``{block coords: (tsdf, weight, color)}`` of a TSDF map (allocation order removed)."""
    g = backend.state_dict()["grid"]
    coords = g["block_coords"].numpy()
    order = np.lexsort(coords.T[::-1])
    a = {k: v.numpy()[order] for k, v in g["attrs"].items()}
    return coords[order], a


def replay(bag: Path, cfg, out: Path):
    from neural_mapping.app.pipeline import run
    from neural_mapping.datasets.rosbag import RosbagDataset
    from neural_mapping.datasets.rosbag_topics import choose_topics
    from neural_mapping.io.bags import bag_topics
    ch = choose_topics(bag_topics(bag))
    with RosbagDataset(bag, depth_topic=ch.depth, color_topic=ch.color, camera_info_topic=ch.camera_info,
                       pose_topic=None if ch.pose_from_tf else ch.pose, pose_from_tf=ch.pose_from_tf) as ds:
        return run(ds, cfg, out, progress=False, render_views=False)


def decode_ms(frames):
    """Median ms to decode one 640x480 frame, per message kind (RVL: 3 frames, its Python
    encoder is slow)."""
    from neural_mapping.io import compressed, msg_decode
    from neural_mapping.io.bags import depth_pixels
    rows = {}
    for i, f in enumerate(frames):
        px = depth_pixels(f.depth, "16UC1")
        cases = [("raw Image 16UC1 depth", msg_decode.depth_from_msg,
                  SimpleNamespace(height=480, width=640, encoding="16UC1", is_bigendian=0, step=1280,
                                  data=px.tobytes())),
                 ("raw Image rgb8 colour", lambda m: msg_decode.color_from_msg(m, copy=True),
                  SimpleNamespace(height=480, width=640, encoding="rgb8", is_bigendian=0, step=1920,
                                  data=f.color.tobytes())),
                 ("compressedDepth PNG depth", compressed.depth_from_compressed,
                  SimpleNamespace(**dict(zip(("format", "data"), compressed.compress_depth(px, "png"))))),
                 ("JPEG q90 colour", compressed.color_from_compressed,
                  SimpleNamespace(**dict(zip(("format", "data"), compressed.compress_color(f.color, "jpeg", 90)))))]
        if i < 3:
            cases.append(("compressedDepth RVL depth", compressed.depth_from_compressed,
                          SimpleNamespace(**dict(zip(("format", "data"), compressed.compress_depth(px, "rvl"))))))
        for name, fn, msg in cases:
            t = time.perf_counter()
            fn(msg)
            rows.setdefault(name, []).append((time.perf_counter() - t) * 1e3)
    return {k: float(np.median(v)) for k, v in rows.items()}


def gil_probe(frame, calls: int = 30):
    """Does a decode let another Python thread run?  A counter thread records its loop times
    while this thread decodes ``calls`` times; a decode that holds the GIL stops the counter
    for the whole call (``sorted()`` of a big list is the holding control).  Reported: the
    median call ms and how many of the calls the counter stalled for more than half a call
    (OS scheduling on a loaded machine adds stalls of its own)."""
    import random
    import threading
    from neural_mapping.io import compressed
    from neural_mapping.io.bags import depth_pixels
    png = SimpleNamespace(**dict(zip(("format", "data"), compressed.compress_depth(
        depth_pixels(frame.depth, "16UC1"), "png"))))
    jpg = SimpleNamespace(**dict(zip(("format", "data"), compressed.compress_color(frame.color, "jpeg", 90))))
    big = [random.random() for _ in range(200_000)]
    out = {}
    for name, fn in (("compressedDepth PNG", lambda: compressed.depth_from_compressed(png)),
                     ("JPEG colour", lambda: compressed.color_from_compressed(jpg)),
                     ("control: sorted() holds the GIL", lambda: sorted(big))):
        stop, ts, durs = [], [], []
        th = threading.Thread(target=lambda: [ts.append(time.perf_counter()) for _ in iter(lambda: bool(stop), True)])
        th.start()
        time.sleep(0.05)
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            durs.append(time.perf_counter() - t0)
        stop.append(1)
        th.join()
        call_ms = float(np.median(durs)) * 1e3
        out[name] = {"call_ms": call_ms, "calls": calls,
                     "calls_stalling_the_other_thread": int((np.diff(ts) * 1e3 > call_ms / 2).sum())}
    return out


def mode_offline(args) -> int:
    from neural_mapping.config import MappingConfig
    from neural_mapping.datasets import open_dataset
    from neural_mapping.io.bags import make_bag
    cfg = MappingConfig.from_flat({"voxel_size_m": args.voxel, "device": "cpu", "sync_mode": "strict",
                                   "pose_source": "external"})
    tmp = Path(tempfile.mkdtemp(prefix="bench_bags_"))
    load0 = os.getloadavg()
    res = {"frames": args.frames, "voxel_size_m": args.voxel, "jpeg_quality": args.jpeg_quality,
           "layouts": {}, "loadavg_before": load0}
    try:
        ref = None
        for name, kw in LAYOUTS.items():
            bag = tmp / name
            s = make_bag(DATA, bag, max_frames=args.frames, jpeg_quality=args.jpeg_quality, **kw)
            r = replay(bag, cfg, tmp / f"out_{name}")
            coords, attrs = _blocks(r.backend)
            row = {"bag_mib": s.size_bytes / 2 ** 20, "write_s": s.wall_s, "replay_fps": r.metrics["fps"],
                   "frames": int(r.metrics["frames"])}
            if ref is None:
                ref = (r.poses, coords, attrs)
            else:
                row["pose_max_diff"] = float(np.abs(r.poses - ref[0]).max())
                same_blocks = coords.shape == ref[1].shape and np.array_equal(coords, ref[1])
                row["tsdf_identical"] = bool(same_blocks and np.array_equal(attrs["tsdf"], ref[2]["tsdf"])
                                             and np.array_equal(attrs["weight"], ref[2]["weight"]))
                if same_blocks and not row["tsdf_identical"]:
                    row["tsdf_max_diff"] = float(np.abs(attrs["tsdf"] - ref[2]["tsdf"]).max())
                if same_blocks and "color" in attrs:
                    w = ref[2]["weight"].reshape(-1) > 0
                    dc = np.abs(attrs["color"].reshape(len(w), -1).astype(np.float64)
                                - ref[2]["color"].reshape(len(w), -1))[w]
                    row["color_abs_diff_mean"], row["color_abs_diff_p99"] = float(dc.mean()), \
                        float(np.percentile(dc, 99))
            res["layouts"][name] = row
        ds = open_dataset(DATA, max_frames=min(args.frames, 20))
        res["decode_ms_per_640x480"] = decode_ms([ds[i] for i in range(len(ds))])
        res["gil_probe"] = gil_probe(ds[0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["loadavg_after"] = os.getloadavg()
    print(f"{'layout':12s} {'bag MiB':>8s} {'replay f/s':>10s} {'pose diff':>10s} {'TSDF':>10s} "
          f"{'colour |d| mean/p99':>20s}")
    for name, row in res["layouts"].items():
        tsdf = "-" if "tsdf_identical" not in row else ("identical" if row["tsdf_identical"] else "DIFFERS")
        col = f"{row['color_abs_diff_mean']:.2f} / {row['color_abs_diff_p99']:.1f}" if "color_abs_diff_mean" in row \
            else "-"
        pd = f"{row['pose_max_diff']:.1e}" if "pose_max_diff" in row else "-"
        print(f"{name:12s} {row['bag_mib']:8.1f} {row['replay_fps']:10.1f} {pd:>10s} {tsdf:>10s} {col:>20s}")
    print("decode, median ms per 640x480 frame:")
    for k, v in res["decode_ms_per_640x480"].items():
        print(f"  {k:28s} {v:7.2f}")
    print("GIL probe (calls during which another Python thread stalled > half a call):")
    for k, v in res["gil_probe"].items():
        print(f"  {k:34s} {v['call_ms']:7.2f} ms/call, {v['calls_stalling_the_other_thread']}/{v['calls']} calls")
    print(f"load average before {load0}, after {res['loadavg_after']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


# ===================================================================== node mode
def run_node(args, transport: str, frames) -> dict:
    import array
    from bench_ros import Driver, stop_node, wait_for, wall_stamp
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image
    from neural_mapping.io import compressed
    from neural_mapping.ros import conversions as conv

    domain = random.randint(120, 220)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1")
    out_dir = tempfile.mkdtemp(prefix="bench_bags_node_")
    params = {"pose_source": "external", "voxel_size_m": args.voxel, "device": "cpu", "output_dir": out_dir,
              "sync_mode": "realtime", "diagnostics_rate_hz": 2.0, "mesh_rate_hz": 0.0}
    if transport == "compressed":
        params.update(depth_transport="compressedDepth", color_transport="compressed")
    cmd = [sys.executable, "-m", "neural_mapping.ros.node", "--ros-args"]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={v}"]
    log = open(Path(out_dir) / "node.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    drv = Driver(domain, "bench_bags_driver")
    nd, diags = drv.node, []
    nd.create_subscription(DiagnosticArray, "/diagnostics",
                           lambda m: diags.append({kv.key: kv.value for kv in m.status[0].values}), 10)
    msgs = []
    for depth, color, pose in frames:  # built before the clock starts
        if transport == "raw":
            msgs.append((conv.image_msg(depth, "16UC1", frame_id="camera"),
                         conv.image_msg(color, "rgb8", frame_id="camera"), pose))
            continue
        pair = []
        for fmt, data in (compressed.compress_depth(depth, "png"), compressed.compress_color(color, "jpeg", 90)):
            m = CompressedImage()
            m.header.frame_id, m.format, m.data = "camera", fmt, array.array("B", data)
            pair.append(m)
        msgs.append((pair[0], pair[1], pose))
    typ = Image if transport == "raw" else CompressedImage
    sfx = ("", "") if transport == "raw" else ("/compressedDepth", "/compressed")
    pub_d = nd.create_publisher(typ, "/depth/image" + sfx[0], 10)
    pub_c = nd.create_publisher(typ, "/color/image" + sfx[1], 10)
    pub_i = nd.create_publisher(CameraInfo, "/depth/camera_info", 10)
    pub_p = nd.create_publisher(PoseStamped, "/pose", 100)
    from neural_mapping.types import CameraIntrinsics
    info = conv.camera_info_msg(CameraIntrinsics(640, 480, 585.0, 585.0, 320.0, 240.0), "camera")
    try:
        wait_for(lambda: pub_d.get_subscription_count() > 0 and pub_p.get_subscription_count() > 0
                 and len(diags) > 0, 120, "the node's subscriptions", proc)
        d0 = dict(diags[-1])
        n_total, period = int(args.duration * args.rate), 1.0 / args.rate
        t0 = time.monotonic()
        for k in range(n_total):
            delay = t0 + k * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            dm, cm, pose = msgs[k % len(msgs)]
            st = wall_stamp(time.time())
            pub_p.publish(conv.pose_stamped_msg(pose, st, "world"))
            info.header.stamp = dm.header.stamp = cm.header.stamp = st
            pub_i.publish(info)
            pub_c.publish(cm)
            pub_d.publish(dm)
        t_pub = time.monotonic() - t0
        pub_p.publish(conv.pose_stamped_msg(msgs[0][2], wall_stamp(time.time() + 0.01), "world"))
        time.sleep(3.0)
        n = len(diags)
        wait_for(lambda: len(diags) > n, 30, "diagnostics", proc)
        d = dict(diags[-1])
        g = lambda dd, k: int(float(dd.get(k, 0)))  # noqa: E731
        return {"transport": transport, "frames_published": n_total, "publish_window_s": t_pub,
                "frames_received": g(d, "received") - g(d0, "received"),
                "frames_integrated": g(d, "integrated") - g(d0, "integrated"),
                "frames_integrated_per_s": (g(d, "integrated") - g(d0, "integrated")) / t_pub,
                "drops": {k: g(d, k) - g(d0, k) for k in d if "dropped" in k and g(d, k) - g(d0, k)}}
    finally:
        drv.close()
        stop_node(proc)
        log.close()


def mode_node(args) -> int:
    from bench_ros import load_frames
    frames = load_frames(DATA, args.max_frames)
    res = {"rate_hz": args.rate, "duration_s": args.duration, "voxel_size_m": args.voxel,
           "fastdds_profiles_file": os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"),
           "loadavg_before": os.getloadavg(), "runs": [run_node(args, t, frames) for t in args.inputs]}
    res["loadavg_after"] = os.getloadavg()
    print(f"{'inputs':12s} {'published':>10s} {'received':>9s} {'integrated/s':>13s}  drops")
    for r in res["runs"]:
        print(f"{r['transport']:12s} {r['frames_published']:10d} {r['frames_received']:9d} "
              f"{r['frames_integrated_per_s']:13.1f}  {r['drops']}")
    print(f"load average before {res['loadavg_before']}, after {res['loadavg_after']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode")
    po = sub.add_parser("offline")
    po.add_argument("--frames", type=int, default=60)
    po.add_argument("--voxel", type=float, default=0.03)
    po.add_argument("--jpeg-quality", type=int, default=90)
    po.add_argument("--out", default=str(REPO / "bench" / "results" / "bags.json"))
    pn = sub.add_parser("node")
    pn.add_argument("--duration", type=float, default=15.0)
    pn.add_argument("--rate", type=float, default=30.0)
    pn.add_argument("--voxel", type=float, default=0.03)
    pn.add_argument("--max-frames", type=int, default=60)
    pn.add_argument("--inputs", nargs="+", choices=["raw", "compressed"], default=["raw", "compressed", "raw", "compressed"],
                    help="runs in this order (alternated: the machine load changes)")
    pn.add_argument("--out", default=str(REPO / "bench" / "results" / "bags_node.json"))
    args = ap.parse_args(argv)
    if args.mode == "node":
        return mode_node(args)
    if args.mode is None:
        args = po.parse_args([])
    return mode_offline(args)


if __name__ == "__main__":
    sys.exit(main())
