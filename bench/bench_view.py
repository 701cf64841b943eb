#!/usr/bin/env python3
"""Cost of the live view (issue 16): mapping with and without it, interleaved in one run.

``cli``: ``neural-mapping run synthetic`` (strict mode, 640x480) in a fresh process per run,
``--reps`` pairs without and with ``--view`` (serving, no browser connected), interleaved ABBA
(the machine is shared: both see its load).  Reported: end-to-end frames/s and integration
ms/frame (``metrics.json``), the CPU time the process used (user + system: what the view
costs on a machine whose load makes frames/s noisy), the peak resident memory of the process (the view's servers live
in it), medians and the slowdown, and the on/off ratio of each back-to-back pair.  A connected
browser is another process; the gRPC stream to it costs the server a little more.

``node``: ``bench_ros.py``'s node run (real 7-Scenes frames over DDS at ``--rate`` Hz), without
and with ``web_view_port``, alternating: frames processed/s, pose latency p50/p95 (depth
stamp to pose received), node CPU%.

Prints a table, writes JSON (``bench/results/view.json``)::

    .venv/bin/python bench/bench_view.py cli [--frames 60] [--voxel 0.02] [--reps 3]
    .venv/bin/python bench/bench_view.py node [--duration 20] [--rate 15] [--reps 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def rss_mib() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2 ** 20


def run_cli(args, out: Path, view: bool) -> dict:
    """One ``neural-mapping run synthetic`` in a fresh process (with ``--view``: serving,
    no browser); its metrics and the process's peak resident memory (polled)."""
    import psutil
    cmd = [sys.executable, "-m", "neural_mapping.app.cli", "run", "synthetic", "--out", str(out),
           "--no-progress", "--no-views", "--synthetic-frames", str(args.frames),
           "--voxel-size-m", str(args.voxel)]
    if view:
        cmd += ["--view", "--view-port", str(args.port), "--view-hold-s", "0.01"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = psutil.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, cpu_s = 0, 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
            t = proc.cpu_times()
            cpu_s = t.user + t.system  # the last sample before exit (0.1 s)
        except psutil.Error:
            pass
        time.sleep(0.1)
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {"view": view, "fps": m["fps"], "integrate_ms": m["integrate_ms_mean"],
            "frames": m["frames"], "peak_rss_mib": peak / 2 ** 20, "cpu_s": cpu_s,
            "loadavg": os.getloadavg()[0]}


def mode_cli(args) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench_view_"))
    runs = []
    for rep in range(args.reps):
        for view in (False, True) if rep % 2 == 0 else (True, False):  # ABBA: no order bias
            r = run_cli(args, out / f"{rep}_{int(view)}", view)
            r["rep"] = rep
            runs.append(r)
            print(f"rep {rep} view={'on ' if view else 'off'} {r['fps']:6.2f} frames/s, integration "
                  f"{r['integrate_ms']:6.1f} ms/frame, peak RSS {r['peak_rss_mib']:6.0f} MiB, "
                  f"CPU {r['cpu_s']:5.1f} s, "
                  f"load {r['loadavg']:.1f}", flush=True)
    off = [r for r in runs if not r["view"]]
    on = [r for r in runs if r["view"]]
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    summary = {f"{k}_{name}": med(rs, k) for k in ("fps", "integrate_ms", "peak_rss_mib", "cpu_s")
               for name, rs in (("off", off), ("on", on))}
    summary["slowdown_percent"] = 100.0 * (1.0 - summary["fps_on"] / summary["fps_off"])
    # pairs run back to back see about the same load: the ratio of each pair
    pairs = [b["fps"] / a["fps"] for a, b in zip(off, on)]
    summary["fps_ratio_on_off_per_rep"] = pairs
    print(f"\nlive view cost, synthetic room 640x480, {args.frames} frames, {args.voxel * 100:g} cm, "
          f"{os.cpu_count()} cores (shared machine: runs interleaved ABBA, medians)")
    print(f"{'view':<5} {'frames/s':>9} {'integration ms':>15} {'process CPU s':>14} {'peak RSS MiB':>13}")
    for name in ("off", "on"):
        print(f"{name:<5} {summary['fps_' + name]:>9.2f} {summary['integrate_ms_' + name]:>15.1f} "
              f"{summary['cpu_s_' + name]:>14.1f} {summary['peak_rss_mib_' + name]:>13.0f}")
    print(f"slowdown {summary['slowdown_percent']:.1f} % (medians); per-rep on/off frames/s ratios "
          + ", ".join(f"{x:.2f}" for x in pairs))
    return {"config": vars(args), "runs": runs, "summary": summary}


def mode_node(args) -> dict:
    import bench_ros
    import numpy as np
    from neural_mapping.types import CameraIntrinsics

    frames = bench_ros.load_frames(bench_ros.DATA, min(int(args.duration * args.rate), 300))
    msgs = bench_ros.prebuilt_messages(frames)
    intr = CameraIntrinsics(640, 480, 585.0, 585.0, 320.0, 240.0)
    runs = []
    for rep in range(args.reps):
        for port in (0, args.port):
            ns = argparse.Namespace(duration=args.duration, rate=args.rate, voxel=args.voxel,
                                    device="cpu", input_qos="reliable", fastdds_xml=args.fastdds_xml or None,
                                    node_params={"web_view_port": port})
            r = bench_ros.run_node(msgs, intr, ns, "external")
            r = {k: r.get(k) for k in ("frames_integrated", "frames_processed_per_s", "poses_per_s",
                                       "latency_stamp_to_pose_ms", "node_cpu_percent", "drops",
                                       "node_exit_code")}
            r.update(view=bool(port), rep=rep, loadavg=os.getloadavg()[0])
            runs.append(r)
            lp = r["latency_stamp_to_pose_ms"] or {}
            print(f"rep {rep} web_view_port={port:<5} {r['frames_processed_per_s'] or 0:5.1f} frames/s, "
                  f"pose p50/p95 {lp.get('p50') or float('nan'):.0f}/{lp.get('p95') or float('nan'):.0f} ms, "
                  f"CPU {r['node_cpu_percent'] or 0:.0f} %, load {r['loadavg']:.1f}", flush=True)
    del np
    return {"config": vars(args), "runs": runs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("cli")
    c.add_argument("--frames", type=int, default=60)
    c.add_argument("--voxel", type=float, default=0.02)
    c.add_argument("--reps", type=int, default=3)
    n = sub.add_parser("node")
    n.add_argument("--duration", type=float, default=20.0)
    n.add_argument("--rate", type=float, default=15.0)
    n.add_argument("--voxel", type=float, default=0.02)
    n.add_argument("--reps", type=int, default=1)
    n.add_argument("--fastdds-xml", default=str(REPO / "config" / "fastdds_shm.xml"),
                   help="Fast DDS profile of both processes ('' = Fast DDS defaults, where raw "
                        "640x480 images starve the poses on one machine)")
    for q in (c, n):
        q.add_argument("--port", type=int, default=9870, help="view port (uses it and the next two)")
        q.add_argument("--out", default=str(REPO / "bench" / "results" / "view.json"))
    args = p.parse_args(argv)
    report = {"mode": args.mode, "cpu_count": os.cpu_count(), "loadavg_before": os.getloadavg()}
    report.update(mode_cli(args) if args.mode == "cli" else mode_node(args))
    report["loadavg_after"] = os.getloadavg()
    out = Path(args.out)
    if args.mode == "node":
        out = out.with_name(out.stem + "_node.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report["config"] = {k: v for k, v in report["config"].items()}
    out.write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
