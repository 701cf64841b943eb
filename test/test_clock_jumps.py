"""Time: stale frames dropped and counted, backward clock jumps detected (buffers cleared, map
kept or reset by parameter), nothing integrated out of order.  The real node in process, its
subscription callbacks fed directly."""

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from _synthetic_scene import render_depth  # noqa: E402
from neural_mapping.ros import conversions as conv  # noqa: E402
from neural_mapping.system.clock_guard import JUMP, OK, STALE, ClockGuard  # noqa: E402
from neural_mapping.types import CameraIntrinsics  # noqa: E402

INTR = CameraIntrinsics(32, 24, 30.0, 30.0, 15.5, 11.5)


def test_clock_guard_verdicts():
    g = ClockGuard(1.0)
    assert [g.check(t) for t in (5.0, 5.1, 5.1, 5.0, 4.2, 3.9, 4.0, float("nan"), 4.05)] == \
        [OK, OK, STALE, STALE, STALE, JUMP, OK, STALE, OK]
    assert g.jumps == 1
    loose = ClockGuard(1.0, strict_order=False)
    assert [loose.check(t) for t in (5.0, 5.0, 4.5, 3.0)] == [OK, OK, OK, JUMP]


def _node(tmp_path, **params):
    from rclpy.parameter import Parameter
    from neural_mapping.ros.node import MappingNode
    ctx = rclpy.Context()
    rclpy.init(args=[], context=ctx, domain_id=int(np.random.default_rng().integers(100, 200)))
    base = {"output_dir": str(tmp_path), "voxel_size_m": 0.05, "pose_source": "external",
            "pose_wait_timeout_s": 0.5, "diagnostics_rate_hz": 0.0, "mesh_rate_hz": 0.0}
    base.update(params)
    return ctx, MappingNode(context=ctx, enable_rosout=False, start_parameter_services=False,
                            parameter_overrides=[Parameter(k, value=v) for k, v in base.items()])


def _send(n, t, x=0.0):
    T = np.eye(4)
    T[0, 3] = x
    n.inputs._on_pose_msg(conv.pose_stamped_msg(T, conv.sec_to_stamp(t - 0.01), "world"))
    n.inputs._on_pose_msg(conv.pose_stamped_msg(T, conv.sec_to_stamp(t + 0.01), "world"))
    n.inputs._on_depth(conv.image_msg(render_depth(T, INTR), "32FC1", stamp=t, frame_id="camera"))
    assert n.system.flush(timeout=30)


@pytest.mark.parametrize("reset_map", [False, True])
def test_stale_frames_dropped_and_clock_jump_handled(tmp_path, reset_map):
    ctx, n = _node(tmp_path, clock_jump_reset_map=reset_map)
    integrated = []
    n.system.on_integrated = lambda index, version: integrated.append(index)
    try:
        n.inputs._on_camera_info(conv.camera_info_msg(INTR, "camera", 1000.0))
        for k in range(3):
            _send(n, 1000.0 + 0.1 * k, 0.01 * k)
        assert n.system.frames_integrated == 3
        blocks = n.system.stats()["blocks"]
        # older than the last frame, and a repeat of it: dropped and counted, not integrated
        _send(n, 1000.05)
        _send(n, 1000.2)
        assert n.inputs.drop_counts()["stale_stamp"] == 2 and n.system.frames_integrated == 3
        # the bag loops: stamps back to 10 s
        for k in range(3):
            _send(n, 10.0 + 0.1 * k, 0.01 * k)
        assert n.inputs.frame_clock.jumps == 1
        stats = n.system.stats()
        if reset_map:
            assert n.system.frames_integrated == 3  # counted from the reset
            assert stats["blocks"] <= blocks
        else:
            assert n.system.frames_integrated == 6 and stats["blocks"] >= blocks
        assert stats.get("dropped_pose_too_old", 0) == 0  # post-jump poses were usable
        # nothing out of order: frame indices (submit order) integrated ascending, and the
        # stamps ascend within each epoch
        assert integrated == sorted(integrated) and len(integrated) == 6
        stamps = [p.stamp for p in n.system.trajectory if p.ok]
        assert stamps[-3:] == [10.0, 10.1, 10.2]
        assert stamps[:-3] == ([] if reset_map else [1000.0, 1000.1, 1000.2])  # reset clears it
    finally:
        n.shutdown(timeout=10.0)
        n.destroy_node()
        rclpy.try_shutdown(context=ctx)
