#!/usr/bin/env python3
"""ROS 2 benchmarks over real DDS (PyPI rclpy + Fast DDS, loopback), two modes.

``node`` (default): the mapping node runs as a subprocess (``python -m
neural_mapping.ros.node``) in its own ROS domain; this process publishes the real
7-Scenes fixture (``../shared/data/7scenes_redkitchen``; a run longer than the sequence
plays it forth and back, 0..499..0, so the camera path stays continuous: a jump back to frame
0 would make track mode relocalise instead of track; ``--playback wrap`` does exactly that,
to measure relocalisation in the node) as depth 16UC1 + color rgb8 + CameraInfo + PoseStamped (ground
truth) at ``--rate`` Hz for ``--duration`` s, with every header stamp set to the wall
clock at publish time.  Reported per ``--pose-source``:

* frames processed/s (integrated frames over the publishing window) and poses/s;
* drops by reason (node diagnostics: ``input_dropped_*`` before a frame exists,
  ``dropped_*``/``pose_*`` inside the core), frames received by the node, relocalisations;
* latency depth stamp -> pose publish, p50/p95, measured here on the receiving side
  (``now - header.stamp`` of every ``~/pose``; transport of the pose included);
* latency depth stamp -> integration, p50/p95, from the node's diagnostics
  (``latency_stamp_integrate_*``; the core's own ``latency_integrate_*`` starts at
  submit, i.e. after transport and decoding, and is reported too);
* CPU% of the node process (``psutil``; 100 % = one core) over the window.

``qos``: raw DDS delivery of 640x480 depth (16UC1) + color (rgb8) at 10 Hz for 60
frames from a publisher process to a subscriber process: best effort on both ends
(SensorDataQoS) vs reliable, each with Fast DDS's defaults and with
``config/fastdds_shm.xml`` (``FASTDDS_DEFAULT_PROFILES_FILE``, both processes).

Prints a table and writes JSON (``bench/results/ros.json``, ``bench/results/ros_qos.json``).
The machine is shared: the JSON records the load average before and after.

    .venv/bin/python bench/bench_ros.py node [--duration 20] [--rate 30] [--voxel 0.02]
        [--pose-source external track] [--input-qos reliable] [--fastdds-xml PATH]
        [--transport default shm]   # one fresh process per transport setting, merged JSON
        [--contention 0 2]          # also with 2 busy-loop processes (CPU contention)
    .venv/bin/python bench/bench_ros.py qos [--frames 60] [--rate 10]
    .venv/bin/python bench/bench_ros.py executor   # idle executor wake-up cost of the node
    .venv/bin/python bench/bench_ros.py offline    # the node's core in-process, no ROS
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("NEURAL_MAPPING_DATA", REPO.parent / "shared" / "data")) / "7scenes_redkitchen"
SHM_XML = REPO / "config" / "fastdds_shm.xml"


def load_frames(root: Path, n: int):
    """``n`` frames (depth uint16 mm with 65535 -> 0, color RGB uint8, 4x4 pose), fewer if
    the sequence is shorter."""
    from PIL import Image as PILImage
    frames = []
    for i in range(n):
        p = root / f"frame-{i:06d}"
        if not Path(f"{p}.depth.png").is_file():
            break
        depth = np.asarray(PILImage.open(f"{p}.depth.png")).astype(np.uint16)
        depth[depth == 65535] = 0
        color = np.asarray(PILImage.open(f"{p}.color.jpg").convert("RGB"))
        frames.append((depth, color, np.loadtxt(f"{p}.pose.txt")))
    if not frames:
        raise SystemExit(f"no frames in {root} (expected ../shared/data/7scenes_redkitchen)")
    return frames


def prebuilt_messages(frames):
    """Image messages built once (stamps are set at publish time)."""
    from neural_mapping.ros import conversions as conv
    out = []
    for depth, color, pose in frames:
        out.append((conv.image_msg(depth, "16UC1", frame_id="camera"),
                    conv.image_msg(color, "rgb8", frame_id="camera"), pose))
    return out


def wall_stamp(t: float):
    from builtin_interfaces.msg import Time
    sec = int(t)
    return Time(sec=sec, nanosec=int((t - sec) * 1e9))


def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def pct(values, q):
    return float(np.percentile(np.asarray(values), q)) if len(values) else None


class Driver:
    """An rclpy context + node + executor thread in this process."""

    def __init__(self, domain_id: int, name: str):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        self.rclpy = rclpy
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while not self._stop.is_set() and self.ctx.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.ctx)


def wait_for(cond, timeout: float, what: str, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


# ===================================================================== node mode
def stop_node(proc) -> None:
    """SIGINT a node process (a clean shutdown, as Ctrl-C), kill it after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_node(frames_msgs, intr, args, pose_source: str) -> dict:
    import psutil
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from neural_mapping.ros import conversions as conv

    domain = random.randint(120, 220)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1")
    if args.fastdds_xml:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(Path(args.fastdds_xml).resolve())
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = env["FASTDDS_DEFAULT_PROFILES_FILE"]
    out_dir = tempfile.mkdtemp(prefix="bench_ros_")
    params = {"pose_source": pose_source, "voxel_size_m": args.voxel, "device": args.device,
              "output_dir": out_dir, "input_qos": args.input_qos, "sync_mode": "realtime",
              "diagnostics_rate_hz": 2.0, "mesh_rate_hz": 1.0}
    params.update(getattr(args, "node_params", None) or {})  # e.g. bench_view.py: web_view_port
    params.update(kv.split("=", 1) for kv in getattr(args, "set", None) or [])  # --set NAME=VALUE
    cmd = [sys.executable, "-m", "neural_mapping.ros.node", "--ros-args"]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={v}"]
    log_path = Path(out_dir) / "node.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    drv = Driver(domain, "bench_driver")
    nd = drv.node
    lat_pose, diags = [], []
    lock = threading.Lock()

    def on_pose(msg):
        now = time.time()
        with lock:
            lat_pose.append(now - conv.stamp_to_sec(msg.header.stamp))

    nd.create_subscription(PoseStamped, "/neural_mapping/pose", on_pose, 1000)
    nd.create_subscription(DiagnosticArray, "/diagnostics",
                           lambda m: diags.append({kv.key: kv.value for kv in m.status[0].values}), 10)
    qos = qos_profile_sensor_data if args.input_qos == "sensor_data" else 10
    pub_d = nd.create_publisher(Image, "/depth/image", qos)
    pub_c = nd.create_publisher(Image, "/color/image", qos)
    pub_i = nd.create_publisher(CameraInfo, "/depth/camera_info", qos)
    pub_p = nd.create_publisher(PoseStamped, "/pose", 100)
    result = {"pose_source": pose_source}
    try:
        wait_for(lambda: pub_d.get_subscription_count() > 0 and pub_c.get_subscription_count() > 0
                 and (pose_source == "track" or pub_p.get_subscription_count() > 0)
                 and len(diags) > 0, 120, "the node's subscriptions", proc)
        ps = psutil.Process(proc.pid)
        info = conv.camera_info_msg(intr, "camera")
        n_total = int(round(args.duration * args.rate))
        period = 1.0 / args.rate
        diag0 = dict(diags[-1])
        ps.cpu_percent(None)
        cpu_t0 = ps.cpu_times()
        t_start = time.monotonic()
        late = 0
        for k in range(n_total):
            target = t_start + k * period
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                late += 1
            d_msg, c_msg, pose = frames_msgs[play_index(args.playback, k, len(frames_msgs))]
            t = time.time()
            st = wall_stamp(t)
            if pose_source != "track":
                pub_p.publish(conv.pose_stamped_msg(pose, st, "world"))
            info.header.stamp = st
            d_msg.header.stamp = st
            c_msg.header.stamp = st
            pub_i.publish(info)
            pub_d.publish(d_msg)
            pub_c.publish(c_msg)
        t_pub = time.monotonic() - t_start
        if pose_source != "track":  # one pose past the last frame: nothing waits for a pose
            pub_p.publish(conv.pose_stamped_msg(frames_msgs[play_index(args.playback, n_total - 1, len(frames_msgs))][2],
                                                wall_stamp(time.time() + 0.01), "world"))
        cpu_t1 = ps.cpu_times()
        cpu_pct = 100.0 * ((cpu_t1.user + cpu_t1.system) - (cpu_t0.user + cpu_t0.system)) / t_pub
        # settle: wait until the node's counters stop moving (queues drained)
        n_diag = len(diags)
        wait_for(lambda: len(diags) >= n_diag + 2, 30, "diagnostics", proc)
        last = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            d = diags[-1]
            key = (d.get("integrated"), d.get("poses"), d.get("queue_frames"), d.get("queue_map"))
            if key == last and d.get("queue_frames") == "0" and d.get("queue_map") == "0":
                break
            last = key
            n = len(diags)
            wait_for(lambda: len(diags) > n, 30, "diagnostics", proc)
        d = dict(diags[-1])
        n0 = lambda k: int(float(diag0.get(k, 0)))  # noqa: E731
        n1 = lambda k: int(float(d.get(k, 0)))  # noqa: E731
        integrated = n1("integrated") - n0("integrated")
        drops = {k: n1(k) - n0(k) for k in sorted(d) if ("dropped" in k) and n1(k) - n0(k)}
        with lock:
            lp = [x * 1e3 for x in lat_pose]
        fl = lambda k: float(d[k]) if k in d else None  # noqa: E731
        result.update({
            "frames_published": n_total, "publish_window_s": t_pub, "publish_rate_hz": n_total / t_pub,
            "publisher_late_ticks": late,
            "frames_received": n1("received") - n0("received"),
            "frames_integrated": integrated,
            "frames_processed_per_s": integrated / t_pub,
            "poses_published": len(lp), "poses_per_s": len(lp) / t_pub,
            "drops": drops, "relocalisations": n1("relocalisations") - n0("relocalisations"),
            "latency_stamp_to_pose_ms": {"p50": pct(lp, 50), "p95": pct(lp, 95), "max": max(lp) if lp else None},
            "latency_stamp_to_integrate_ms": {"p50": fl("latency_stamp_integrate_p50_ms"),
                                              "p95": fl("latency_stamp_integrate_p95_ms")},
            "latency_submit_to_integrate_ms": {"p50": fl("latency_integrate_p50_ms"),
                                               "p95": fl("latency_integrate_p95_ms")},
            "latency_submit_to_pose_ms": {"p50": fl("latency_pose_p50_ms"), "p95": fl("latency_pose_p95_ms")},
            "node_cpu_percent": cpu_pct,
            "stages_ms": stage_breakdown(d),
            "node_diagnostics_last": d,
        })
    finally:
        drv.close()
        stop_node(proc)
        log.close()
        result["node_exit_code"] = proc.returncode
        if proc.returncode != 0:
            result["node_log_tail"] = log_path.read_text()[-3000:]
    return result


# the node's stages in the order a frame passes them (diagnostics ``stage_<name>_p50/p95_ms``)
STAGES = ("transport", "decode_depth", "decode_color", "receive_to_submit", "queue_frames",
          "track", "track_cpu", "publish_pose", "queue_map", "integrate", "predict", "map_cpu")


def stage_breakdown(diag: dict) -> dict:
    """``{stage: {"p50": ms, "p95": ms}}`` from the node's last diagnostics."""
    return {s: {q: float(diag[f"stage_{s}_{q}_ms"]) for q in ("p50", "p95")}
            for s in STAGES if f"stage_{s}_p50_ms" in diag}


def print_stages(results) -> None:
    rows = [r for r in results if r.get("stages_ms")]
    if not rows:
        return
    print("per stage p50/p95 ms (node diagnostics; transport: depth stamp -> depth callback, "
          "receive_to_submit: depth callback -> submit incl. color pairing, queue_*: waiting)")
    print(f"{'stage':<18}" + "".join(f"{r.get('transport', '') + ' ' + r['pose_source']:>22}" for r in rows))
    for s in STAGES:
        cells = [r["stages_ms"].get(s) for r in rows]
        cells = ["-" if c is None else f"{c['p50']:.1f} / {c['p95']:.1f}" for c in cells]
        print(f"{s:<18}" + "".join(f"{c:>22}" for c in cells))


def mode_node(args) -> int:
    """One process per transport setting: Fast DDS reads FASTDDS_DEFAULT_PROFILES_FILE
    once per process, so the publishing side must be a fresh process for each."""
    if args.transport is None:
        return mode_node_one(args)
    results, code = [], 0
    lb = loadavg()
    for tr in args.transport:
        tmp = Path(tempfile.mkdtemp(prefix="bench_ros_")) / f"{tr}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "node", "--duration", str(args.duration),
               "--rate", str(args.rate), "--voxel", str(args.voxel), "--device", args.device,
               "--input-qos", args.input_qos, "--max-frames", str(args.max_frames), "--out", str(tmp),
               "--playback", args.playback,
               "--pose-source", *args.pose_source] + [a for kv in args.set for a in ("--set", kv)]
        if tr == "shm":
            cmd += ["--fastdds-xml", str(SHM_XML)]
        print(f"[bench_ros] transport={tr}", flush=True)
        code |= subprocess.call(cmd)
        sub = json.loads(tmp.read_text())
        for r in sub["results"]:
            r["transport"] = tr
            results.append(r)
    report = {"mode": "node", "config": {k: v for k, v in vars(args).items() if k != "func"},
              "cpu_count": os.cpu_count(), "loadavg_before": lb, "loadavg_after": loadavg(),
              "fastdds_xml_for_shm": str(SHM_XML), "results": results}
    print(f"\nsummary: {args.voxel * 100:g} cm voxels, {args.rate:g} Hz x {args.duration:g} s, "
          f"input_qos={args.input_qos}, load avg before {lb}")
    print(f"{'transport':<9} {'pose_source':<12} {'proc/s':>6} {'pose/s':>6} {'pose p50/p95 ms':>16} "
          f"{'integ p50/p95 ms':>17} {'CPU%':>5}  drops")
    for r in results:
        if "frames_integrated" not in r:
            continue
        lp, li = r["latency_stamp_to_pose_ms"], r["latency_stamp_to_integrate_ms"]
        f = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
        print(f"{r['transport']:<9} {r['pose_source']:<12} {r['frames_processed_per_s']:>6.1f} "
              f"{r['poses_per_s']:>6.1f} {f(lp['p50']) + '/' + f(lp['p95']):>16} "
              f"{f(li['p50']) + '/' + f(li['p95']):>17} {r['node_cpu_percent']:>5.0f}  "
              + ", ".join(f"{k}={v}" for k, v in r["drops"].items())
              + (f"; relocalisations={r['relocalisations']}" if r.get("relocalisations") else ""))
    print_stages(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {out}")
    return code


def forth_and_back(k: int, n: int) -> int:
    """Index of the ``k``-th frame played from a sequence of ``n`` forth and back (0..n-1..0):
    the camera path stays continuous however long the run."""
    if n < 2:
        return 0
    i = k % (2 * n - 2)
    return i if i < n else 2 * n - 2 - i


def play_index(playback: str, k: int, n: int) -> int:
    """``forth-back`` (default): :func:`forth_and_back`; ``wrap``: 0..n-1 then 0 again -- in
    ``track`` mode a kidnapping back to the start, which the node must relocalise from."""
    return k % n if playback == "wrap" else forth_and_back(k, n)


def fixture_intrinsics():
    from neural_mapping.types import CameraIntrinsics
    K = np.loadtxt(DATA / "camera-intrinsics.txt") if (DATA / "camera-intrinsics.txt").is_file() else None
    if K is not None and K.shape == (3, 3):
        return CameraIntrinsics(640, 480, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    return CameraIntrinsics(640, 480, 585.0, 585.0, 320.0, 240.0)


def mode_node_one(args) -> int:
    n_load = min(int(args.duration * args.rate), args.max_frames)
    frames = load_frames(DATA, n_load)
    msgs = prebuilt_messages(frames)
    intr = fixture_intrinsics()
    report = {"mode": "node", "config": {k: v for k, v in vars(args).items() if k != "func"},
              "frames_loaded": len(frames), "cpu_count": os.cpu_count(), "loadavg_before": loadavg(),
              "results": []}
    for busy in args.contention:
        for src in args.pose_source:
            print(f"[bench_ros] pose_source={src}, {busy} busy processes: publishing "
                  f"{args.duration:.0f} s at {args.rate:g} Hz ...", flush=True)
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
            try:
                r = run_node(msgs, intr, args, src)
            finally:
                for hog in hogs:  # our own busy loops, by pid
                    hog.kill()
                    hog.wait()
            r["contention_processes"] = busy
            report["results"].append(r)
    report["loadavg_after"] = loadavg()
    fmt = lambda v, f="{:.1f}": "-" if v is None else f.format(v)  # noqa: E731
    print(f"\nmapping node, {args.voxel * 100:g} cm voxels, {args.device}, input_qos={args.input_qos}, "
          f"published {args.rate:g} Hz x {args.duration:g} s; load avg before {report['loadavg_before']}")
    hdr = (f"{'pose_source':<12} {'busy':>4} {'pub Hz':>6} {'recv':>5} {'integr':>6} {'proc/s':>6} {'pose/s':>6} "
           f"{'pose p50':>8} {'pose p95':>8} {'integ p50':>9} {'integ p95':>9} {'CPU%':>5}")
    print(hdr + "\n" + "-" * len(hdr))
    for r in report["results"]:
        if "frames_integrated" not in r:
            print(f"{r['pose_source']:<12} failed: {r.get('node_log_tail', '')[-500:]}")
            continue
        lp, li = r["latency_stamp_to_pose_ms"], r["latency_stamp_to_integrate_ms"]
        print(f"{r['pose_source']:<12} {r.get('contention_processes', 0):>4} "
              f"{r['publish_rate_hz']:>6.1f} {r['frames_received']:>5} "
              f"{r['frames_integrated']:>6} {r['frames_processed_per_s']:>6.1f} {r['poses_per_s']:>6.1f} "
              f"{fmt(lp['p50']):>8} {fmt(lp['p95']):>8} {fmt(li['p50']):>9} {fmt(li['p95']):>9} "
              f"{r['node_cpu_percent']:>5.0f}")
    for r in report["results"]:
        if r.get("drops"):
            print(f"drops ({r['pose_source']}): " + ", ".join(f"{k}={v}" for k, v in r["drops"].items()))
    print("(latencies in ms from the depth header stamp = wall clock at publish; "
          "CPU% of the node process, 100 = one core)")
    print_stages(report["results"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {out}")
    return 0 if all(r.get("node_exit_code") == 0 for r in report["results"]) else 1


# ================================================================== offline mode
def mode_offline(args) -> int:
    """The node's core without ROS: the same frames submitted in-process to a realtime
    ``MappingSystem`` (the node's core defaults, ``pose_source`` track) at ``--rate`` for
    ``--duration`` s; prints the same stage breakdown (``stats()``) as the node mode."""
    from neural_mapping.ros.node_config import node_core_defaults
    from neural_mapping.config import MappingConfig
    from neural_mapping.system.mapping_system import MappingSystem
    from neural_mapping.types import RGBDFrame
    n = int(args.duration * args.rate)
    frames = load_frames(DATA, min(n, args.max_frames))
    intr = fixture_intrinsics()
    cfg = MappingConfig.from_flat({"voxel_size_m": args.voxel, "pose_source": "track", "device": args.device,
                                   **dict(kv.split("=", 1) for kv in args.set)}, node_core_defaults())
    with MappingSystem(cfg) as system:
        t0 = time.monotonic()
        for k in range(n):
            delay = t0 + k / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            depth, color, _ = frames[forth_and_back(k, len(frames))]
            system.submit(RGBDFrame(depth.astype(np.float32) * np.float32(1e-3), intr, color=color,
                                    timestamp=k / args.rate, index=k))
        t_pub = time.monotonic() - t0
        system.flush(60)
        st = system.stats()
    r = {"pose_source": "track (offline)", "frames_processed_per_s": st.get("integrated", 0) / t_pub,
         "poses_per_s": st.get("poses", 0) / t_pub, "stages_ms": stage_breakdown(st),
         "latency_submit_to_pose_ms": {q: st.get(f"latency_pose_{q}_ms") for q in ("p50", "p95")}}
    print(f"offline (no ROS), load avg {loadavg()}: {r['frames_processed_per_s']:.1f} frames mapped/s, "
          f"{r['poses_per_s']:.1f} poses/s, submit -> pose p50/p95 "
          f"{r['latency_submit_to_pose_ms']['p50']:.0f}/{r['latency_submit_to_pose_ms']['p95']:.0f} ms")
    print_stages([r])
    return 0


# ================================================================= executor mode
def mode_executor(args) -> int:
    """Cost of one idle executor wake-up (``spin_once(timeout_sec=0)``: the wait set built and
    checked in Python, as on every message and timer) of the mapping node, with rclpy's default
    QoS-event handlers on its publishers and as the node creates them (without)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from neural_mapping.ros.node import MappingNode

    class WithDefaultHandlers(MappingNode):
        def create_publisher(self, *a, **kw):
            return Node.create_publisher(self, *a, **kw)

    rclpy.init(args=["bench", "--ros-args", "-p", "pose_source:=track", "-p",
                     f"output_dir:={tempfile.mkdtemp(prefix='bench_ros_')}"], domain_id=random.randint(120, 220))
    rows = []
    for _ in range(args.reps):  # interleaved
        for label, cls in (("default handlers", WithDefaultHandlers), ("node (outputs without)", MappingNode)):
            node = cls()
            ex = SingleThreadedExecutor()
            ex.add_node(node)
            for _ in range(50):
                ex.spin_once(timeout_sec=0)
            t0 = time.perf_counter()
            for _ in range(args.spins):
                ex.spin_once(timeout_sec=0)
            rows.append((label, len(list(node.waitables)), (time.perf_counter() - t0) / args.spins * 1e3))
            node.shutdown()
            ex.shutdown()
            node.destroy_node()
    rclpy.try_shutdown()
    print(f"{'publishers':<24} {'waitables':>9} {'ms per spin_once(0)':>20}   (load avg {loadavg()})")
    for label, w, ms in rows:
        print(f"{label:<24} {w:>9} {ms:>20.3f}")
    return 0


# ====================================================================== qos mode
def _qos_profile(reliability: str, depth: int):
    from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                           qos_profile_sensor_data)
    if reliability == "best_effort":
        return qos_profile_sensor_data
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)


def qos_sub(args) -> int:
    """Subscriber process: counts depth/color images until the publisher says 'done'."""
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    drv = Driver(args.domain, "qos_sub")
    counts = {"depth": 0, "color": 0}
    done = threading.Event()
    expected = {}

    def count(key):
        def cb(msg):
            counts[key] += 1
        return cb

    def on_done(msg):
        expected.update(json.loads(msg.data))
        done.set()

    qos = _qos_profile(args.reliability, 10)
    drv.node.create_subscription(Image, "/bench/depth", count("depth"), qos)
    drv.node.create_subscription(Image, "/bench/color", count("color"), qos)
    drv.node.create_subscription(String, "/bench/done", on_done, _qos_profile("reliable", 10))
    print("ready", flush=True)
    ok = done.wait(300)
    time.sleep(1.0)  # stragglers
    drv.close()
    print(json.dumps({"received": counts, "done": ok, **expected}), flush=True)
    return 0


def qos_pub(args) -> int:
    """Publisher process: waits for the subscriber, publishes ``--frames`` pairs at ``--rate``."""
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    from neural_mapping.ros import conversions as conv
    frames = load_frames(DATA, args.frames)
    msgs = prebuilt_messages(frames)
    drv = Driver(args.domain, "qos_pub")
    qos = _qos_profile(args.reliability, 10)
    pub_d = drv.node.create_publisher(Image, "/bench/depth", qos)
    pub_c = drv.node.create_publisher(Image, "/bench/color", qos)
    pub_done = drv.node.create_publisher(String, "/bench/done", _qos_profile("reliable", 10))
    wait_for(lambda: pub_d.get_subscription_count() > 0 and pub_c.get_subscription_count() > 0
             and pub_done.get_subscription_count() > 0, 60, "subscriber")
    time.sleep(0.5)  # let discovery finish on both sides
    t0 = time.monotonic()
    for k in range(args.frames):
        delay = t0 + k / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        d, c, _ = msgs[k % len(msgs)]
        st = wall_stamp(time.time())
        d.header.stamp = c.header.stamp = st
        pub_d.publish(d)
        pub_c.publish(c)
    time.sleep(1.0)
    pub_done.publish(String(data=json.dumps({"published": args.frames,
                                             "publish_s": time.monotonic() - t0})))
    time.sleep(1.0)
    drv.close()
    _ = conv
    return 0


def mode_qos(args) -> int:
    report = {"mode": "qos", "config": {k: v for k, v in vars(args).items() if k != "func"},
              "fastdds_xml": str(SHM_XML), "cpu_count": os.cpu_count(),
              "loadavg_before": loadavg(), "results": []}
    me = [sys.executable, str(Path(__file__).resolve())]
    for profile in ("defaults", "shm_xml"):
        for rel in ("best_effort", "reliable"):
            domain = random.randint(120, 220)
            env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1")
            env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
            if profile == "shm_xml":
                env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(SHM_XML)
            common = ["--domain", str(domain), "--reliability", rel, "--frames", str(args.frames),
                      "--rate", str(args.rate)]
            sub = subprocess.Popen(me + ["_qos_sub"] + common, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
            line = sub.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"subscriber failed: {line}{sub.stderr.read()}")
            pub = subprocess.run(me + ["_qos_pub"] + common, env=env, capture_output=True, text=True,
                                 timeout=300)
            out, err = sub.communicate(timeout=120)
            res = json.loads(out.strip().splitlines()[-1])
            res.update({"profile": profile, "reliability": rel, "pub_rc": pub.returncode,
                        "stderr_tail": (pub.stderr + err)[-800:] if pub.returncode else ""})
            report["results"].append(res)
            print(f"{profile:<9} {rel:<12} depth {res['received']['depth']}/{args.frames} "
                  f"color {res['received']['color']}/{args.frames}", flush=True)
    report["loadavg_after"] = loadavg()
    print(f"\n640x480 depth 16UC1 + color rgb8 at {args.rate:g} Hz, {args.frames} frames, loopback, "
          f"Fast DDS {fastdds_version()}; load avg before {report['loadavg_before']}")
    print(f"{'transport':<10} {'QoS (both ends)':<16} {'depth':>7} {'color':>7}")
    for r in report["results"]:
        print(f"{r['profile']:<10} {r['reliability']:<16} {r['received']['depth']:>3}/{args.frames:<3} "
              f"{r['received']['color']:>3}/{args.frames:<3}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report["fastdds_version"] = fastdds_version()
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


def fastdds_version() -> str:
    try:
        from importlib.metadata import version
        return version("ros-fastdds")
    except Exception:  # noqa: BLE001
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode")
    pn = sub.add_parser("node", help="node throughput/latency (default)")
    pn.add_argument("--duration", type=float, default=20.0, help="publishing time, s (>= 20 for the issue)")
    pn.add_argument("--rate", type=float, default=30.0, help="publishing rate, Hz")
    pn.add_argument("--voxel", type=float, default=0.02, help="voxel size, m")
    pn.add_argument("--device", default="cpu")
    pn.add_argument("--pose-source", nargs="+", default=["external"],
                    choices=["external", "track", "external+refine"])
    pn.add_argument("--input-qos", default="reliable", choices=["reliable", "sensor_data"])
    pn.add_argument("--fastdds-xml", default=None, help="FASTDDS_DEFAULT_PROFILES_FILE for both ends")
    pn.add_argument("--transport", nargs="+", choices=["default", "shm"], default=None,
                    help="run once per setting in a fresh process: Fast DDS defaults and/or "
                         "config/fastdds_shm.xml on both ends (overrides --fastdds-xml)")
    pn.add_argument("--max-frames", type=int, default=500, help="distinct frames loaded (then played back and forth)")
    pn.add_argument("--playback", default="forth-back", choices=["forth-back", "wrap"],
                    help="a run longer than the frames: play them forth and back (continuous camera path) "
                         "or wrap from the last to the first (a kidnapping: track mode must relocalise)")
    pn.add_argument("--contention", type=int, nargs="+", default=[0],
                    help="busy-loop processes running beside the node (e.g. 0 2: without and "
                         "with both cores of a 2-core machine busy)")
    pn.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a node parameter (-p NAME:=VALUE), e.g. --set mapping_thread_nice=5")
    pn.add_argument("--out", default=str(REPO / "bench" / "results" / "ros.json"))
    pn.set_defaults(func=mode_node)
    po = sub.add_parser("offline", help="the same frames into MappingSystem in-process (no ROS)")
    for a in ("--duration", "--rate", "--voxel"):
        po.add_argument(a, type=float, default=pn.get_default(a.lstrip("-")))
    po.add_argument("--device", default="cpu")
    po.add_argument("--max-frames", type=int, default=500)
    po.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    po.set_defaults(func=mode_offline)
    pe = sub.add_parser("executor", help="the node's executor overhead per wake-up")
    pe.add_argument("--spins", type=int, default=1000)
    pe.add_argument("--reps", type=int, default=3)
    pe.set_defaults(func=mode_executor)
    pq = sub.add_parser("qos", help="raw DDS delivery: best effort vs reliable, defaults vs SHM profile")
    pq.add_argument("--frames", type=int, default=60)
    pq.add_argument("--rate", type=float, default=10.0)
    pq.add_argument("--out", default=str(REPO / "bench" / "results" / "ros_qos.json"))
    pq.set_defaults(func=mode_qos)
    for name, fn in (("_qos_sub", qos_sub), ("_qos_pub", qos_pub)):
        p = sub.add_parser(name)
        p.add_argument("--domain", type=int, required=True)
        p.add_argument("--reliability", required=True)
        p.add_argument("--frames", type=int, default=60)
        p.add_argument("--rate", type=float, default=10.0)
        p.set_defaults(func=fn)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["node"] + argv
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
