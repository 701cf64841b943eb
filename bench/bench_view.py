#!/usr/bin/env python3
"""Cost of the live view (issue 16): mapping with and without it, interleaved in one run.

``cli``: the offline pipeline (``app.pipeline.run``, strict mode, the synthetic room at 640x480)
maps the same frames ``--reps`` times without and with the live view attached, alternating
(the machine is shared: interleaving spreads its load over both).  Reported: end-to-end
frames/s and integration ms/frame per run, the median of each, the slowdown; the view's own
counters (blocks logged, frames logged / skipped); the resident memory of the process before
the view server starts, after it started and after the runs (the serving process is this one).
No browser is connected (a browser's gRPC stream costs the server a little more; the browser
itself is another process).

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
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def rss_mib() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2 ** 20


def mode_cli(args) -> dict:
    from neural_mapping.app.pipeline import run
    from neural_mapping.config import MappingConfig
    from neural_mapping.config.view import ViewConfig
    from neural_mapping.view.live import LiveView
    from neural_mapping.view.session import open_view

    cfg = MappingConfig.from_flat({"voxel_size_m": args.voxel, "max_frames": args.frames})
    kw = {"num_frames": args.frames, "width": 640, "height": 480}
    out = tempfile.mkdtemp(prefix="bench_view_")
    run("synthetic", cfg, out, progress=False, dataset_kwargs=kw, render_views=False)  # warm-up
    mem = {"before_view_mib": rss_mib()}
    session = open_view(ViewConfig(view_port=args.port), cfg)
    mem["view_started_mib"] = rss_mib()
    runs = []
    for rep in range(args.reps):
        for with_view in (False, True):
            view = None
            if with_view:
                session.live = LiveView(session.server.rec, session.cfg, cfg)
                view = session
            res = run("synthetic", cfg, out, progress=False, dataset_kwargs=kw, render_views=False,
                      view=view)
            m = res.metrics
            r = {"rep": rep, "view": with_view, "fps": m["fps"], "integrate_ms": m["integrate_ms_mean"],
                 "frames": m["frames"], "loadavg": os.getloadavg()[0]}
            if with_view:
                r.update(session.live.logger.counts, frames_skipped=session.live.frames_skipped,
                         view_errors=session.live.errors)
            runs.append(r)
            print(f"rep {rep} view={'on ' if with_view else 'off'} {m['fps']:6.2f} frames/s, "
                  f"integration {m['integrate_ms_mean']:6.1f} ms/frame, load {r['loadavg']:.1f}",
                  flush=True)
    mem["after_runs_mib"] = rss_mib()
    session.close()
    off = [r for r in runs if not r["view"]]
    on = [r for r in runs if r["view"]]
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    summary = {"fps_off": med(off, "fps"), "fps_on": med(on, "fps"),
               "integrate_ms_off": med(off, "integrate_ms"), "integrate_ms_on": med(on, "integrate_ms")}
    summary["slowdown_percent"] = 100.0 * (1.0 - summary["fps_on"] / summary["fps_off"])
    print(f"\nlive view cost, synthetic room 640x480, {args.frames} frames, {args.voxel * 100:g} cm, "
          f"{os.cpu_count()} cores (shared machine: runs interleaved)")
    print(f"{'view':<5} {'frames/s (median)':>18} {'integration ms':>15}")
    print(f"{'off':<5} {summary['fps_off']:>18.2f} {summary['integrate_ms_off']:>15.1f}")
    print(f"{'on':<5} {summary['fps_on']:>18.2f} {summary['integrate_ms_on']:>15.1f}")
    print(f"slowdown {summary['slowdown_percent']:.1f} %; process memory {mem['before_view_mib']:.0f} MiB "
          f"-> {mem['view_started_mib']:.0f} MiB (view server up) -> {mem['after_runs_mib']:.0f} MiB "
          f"(after {args.reps} runs with the view)")
    return {"config": vars(args), "runs": runs, "summary": summary, "memory": mem}


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
                                    device="cpu", input_qos="reliable", fastdds_xml=None,
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
