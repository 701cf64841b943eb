"""Shutdown and faults of the real node.

* SIGINT and SIGTERM to a node process (``python -m neural_mapping.ros.node``) mapping frames:
  it exits 0 within 2 s of the signal, having joined its threads.
* A worker that dies (a map backend whose ``integrate`` raises: a real TSDF backend that fails
  on one frame) is reported on /diagnostics as ERROR and logged; ``worker_failure=exit``
  shuts the node down and its shutdown raises (the process exits 1), ``restart`` maps on with
  new threads on the same map.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from _ros_harness import spin_until  # noqa: E402
from _synthetic_scene import render_depth  # noqa: E402
from neural_mapping.backends.tsdf import TSDFVolume  # noqa: E402
from neural_mapping.ros import conversions as conv  # noqa: E402
from neural_mapping.types import CameraIntrinsics  # noqa: E402

INTR = CameraIntrinsics(32, 24, 30.0, 30.0, 15.5, 11.5)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_the_node_within_2s_exit_0(tmp_path, sig):
    from sensor_msgs.msg import CameraInfo, Image
    dom = int(np.random.default_rng().integers(100, 200))
    env = dict(os.environ, ROS_DOMAIN_ID=str(dom), PYTHONUNBUFFERED="1")
    log = tmp_path / "node.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "neural_mapping.ros.node", "--ros-args",
                                 "-p", f"output_dir:={tmp_path}", "-p", "pose_source:=track",
                                 "-p", "voxel_size_m:=0.05"], env=env, stdout=fh, stderr=subprocess.STDOUT)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=dom)
    try:
        nd = rclpy.create_node("driver", context=ctx)
        from rclpy.executors import SingleThreadedExecutor
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(nd)
        pd = nd.create_publisher(Image, "/depth/image", 10)
        pi = nd.create_publisher(CameraInfo, "/depth/camera_info", 10)
        assert spin_until(ex, lambda: pd.get_subscription_count() > 0, 60), log.read_text()
        for k in range(20):  # frames in flight when the signal comes
            t = 100.0 + 0.05 * k
            pi.publish(conv.camera_info_msg(INTR, "camera", t))
            pd.publish(conv.image_msg(render_depth(np.eye(4), INTR), "32FC1", stamp=t, frame_id="camera"))
            ex.spin_once(timeout_sec=0.02)
        t0 = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(30)
        dt = time.monotonic() - t0
        ex.shutdown()
        nd.destroy_node()
    finally:
        if proc.poll() is None:
            proc.kill()
        rclpy.try_shutdown(context=ctx)
    text = log.read_text()
    assert code == 0, text
    assert "stopped: threads joined" in text and "Traceback" not in text, text
    import re
    joined = float(re.search(r"threads joined in ([0-9.]+) s", text).group(1))
    assert joined < 2.0, text  # intake stopped, tracking and mapping threads joined
    assert dt < 30.0, dt  # then the interpreter exits (slow on a loaded machine; measured below)
    print(f"{signal.Signals(sig).name}: threads joined in {joined:.3f} s, process exited {dt:.2f} s "
          "after the signal")


class FailingTSDF(TSDFVolume):
    """A real TSDF backend that fails on frames stamped in ``fail_at`` (an injected fault)."""

    fail_at = {2.0}

    def integrate(self, frame, *args, **kw):
        if getattr(frame, "timestamp", None) in self.fail_at:
            raise RuntimeError(f"injected failure at frame stamp {frame.timestamp}")
        return super().integrate(frame, *args, **kw)


def _node(tmp_path, policy):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from neural_mapping.ros.node import MappingNode
    ctx = rclpy.Context()
    rclpy.init(args=[], context=ctx, domain_id=int(np.random.default_rng().integers(100, 200)))
    params = {"output_dir": str(tmp_path), "voxel_size_m": 0.05, "pose_source": "external",
              "worker_failure": policy, "diagnostics_rate_hz": 0.0, "mesh_rate_hz": 0.0}
    n = MappingNode(context=ctx, enable_rosout=False, start_parameter_services=False,
                    parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    n.system.mapper.backend = FailingTSDF(n.cfg)  # the map starts empty either way
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(n)
    drv = rclpy.create_node("driver", context=ctx)
    ex.add_node(drv)
    return ctx, n, ex, drv


def _frame(n, t):
    n.inputs._on_pose_msg(conv.pose_stamped_msg(np.eye(4), conv.sec_to_stamp(t - 0.01), "world"))
    n.inputs._on_pose_msg(conv.pose_stamped_msg(np.eye(4), conv.sec_to_stamp(t + 0.01), "world"))
    n.inputs._on_depth(conv.image_msg(render_depth(np.eye(4), INTR), "32FC1", stamp=t, frame_id="camera"))


@pytest.mark.parametrize("policy", ["exit", "restart"])
def test_worker_failure_is_reported_and_handled(tmp_path, policy):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    ctx, n, ex, drv = _node(tmp_path, policy)
    diags = []
    drv.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    try:
        n.inputs._on_camera_info(conv.camera_info_msg(INTR, "camera", 1.0))
        _frame(n, 1.0)
        assert spin_until(ex, lambda: n.system.frames_integrated == 1, 30)
        _frame(n, 2.0)  # the backend raises in the mapping thread
        errors = lambda: [d for d in diags if d.status[0].level == DiagnosticStatus.ERROR]  # noqa: E731
        assert spin_until(ex, lambda: not ctx.ok() if policy == "exit" else n.faults.restarts == 1, 30)
        assert errors() or (ctx.ok() and spin_until(ex, errors, 10)), diags
        msg = errors()[0].status[0]
        assert "injected failure" in msg.message
        assert {kv.key: kv.value for kv in msg.values}["worker_failures"] == "1"
        _frame(n, 2.5)  # a frame arriving now is never an exception in the callback
        if policy == "exit":
            assert not ctx.ok()  # the executor returns; the shutdown re-raises (exit code 1)
            with pytest.raises(Exception, match="injected failure"):
                n.shutdown(timeout=5.0)
        else:
            blocks = n.system.stats()["blocks"]
            assert blocks > 0  # the same map
            _frame(n, 3.0)
            assert spin_until(ex, lambda: n.system.frames_integrated >= 2, 30), n.system.stats()
            n._publish_diagnostics()
            assert spin_until(ex, lambda: diags[-1].status[0].level == DiagnosticStatus.WARN, 10)
            n.shutdown(timeout=5.0)
    finally:
        ex.shutdown()
        n.destroy_node()
        drv.destroy_node()
        rclpy.try_shutdown(context=ctx)
