"""Generated bad messages over real DDS to a running node (subprocess), interleaved with good
frames: the node stays up, maps every good frame, counts the bad ones per reason on
/diagnostics and logs each reason once.  (The large generated run is in-process:
test_fuzz_inputs.py; this one proves the same over the wire.)"""

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from hypothesis import HealthCheck, given, settings  # noqa: E402

import test_fuzz_inputs as tfi  # noqa: E402  (strategies; not collected from here)
import test_ros_node as trn  # noqa: E402  (the node harness)
from _synthetic_scene import render_depth  # noqa: E402
from neural_mapping.ros import conversions as conv  # noqa: E402

INTR = tfi.INTR
N_BAD = int(120 * tfi.SCALE)


@pytest.fixture(scope="module")
def h(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz_dds")
    h = trn.Harness(tmp, trn.node_params(tmp / "out", pose_source="external", voxel_size_m=0.05,
                                         diagnostics_rate_hz=5.0, mesh_rate_hz=0.0,
                                         pose_wait_timeout_s=2.0))
    h.good = 0
    h.t = 5000.0
    h.pubs("reliable")
    try:
        yield h
    finally:
        h.stop_and_check()


def _good(h, timeout_s: float = 30.0):
    """A good frame (pose, camera_info, color, depth) and wait until it is mapped."""
    pd, pi, pc, pp = h.pubs("reliable")
    h.t += 0.1
    T = np.eye(4)
    T[0, 3] = 0.002 * h.good
    pp.publish(conv.pose_stamped_msg(T, h.t - 0.01, "world"))
    pp.publish(conv.pose_stamped_msg(T, h.t + 0.01, "world"))
    pi.publish(conv.camera_info_msg(INTR, "camera", h.t))
    d = render_depth(T, INTR)
    pc.publish(conv.image_msg(np.full(d.shape + (3,), 99, np.uint8), "rgb8", stamp=h.t, frame_id="camera"))
    pd.publish(conv.image_msg(d, "32FC1", stamp=h.t, frame_id="camera"))
    h.good += 1
    key = round(h.t, 6)
    assert h.spin_until(lambda: key in h.pose_stamps, timeout_s), (trn.last_diag(h.diags), h.logs()[-3000:])


@settings(max_examples=N_BAD, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(tfi.images(tfi.DEPTH_ENC), tfi.images(tfi.COLOR_ENC), tfi.camera_infos(), tfi.poses("PoseStamped"))
def test_bad_messages_over_dds_between_good_frames(h, depth, color, info, pose):
    pd, pi, pc, pp = h.pubs("reliable")
    for pub, msg in ((pd, depth), (pc, color), (pi, info), (pp, pose)):
        pub.publish(msg)
    h.executor.spin_once(timeout_sec=0.0)
    if h.proc.poll() is not None:
        raise AssertionError(f"node died:\n{h.logs()[-4000:]}")
    if (h.good * 10) < N_BAD and np.random.default_rng(h.good).random() < 0.15:
        _good(h)


def test_node_alive_counts_reasons_and_maps_good_frames(h):
    # Let the fuzz still in flight reach the node first: a late fuzzed pose stamped before the
    # good frame's (a clock jump back) clears the pose history by design and orphans that frame.
    h.spin_until(lambda: h.proc.poll() is not None, 3.0)
    try:  # one resync frame may be lost to a clock jump back (counted in clock_jumps)
        _good(h, timeout_s=5.0)
    except AssertionError:
        pass
    for _ in range(3):
        _good(h)
    d = h.diag_after(lambda d: trn.dget(d, "queue_map") == 0 and trn.dget(d, "queue_frames") == 0)
    drops = {k: trn.dget(d, k) for k in d if k.startswith("input_dropped_")}
    for reason in ("size_mismatch", "depth_encoding", "bad_camera_info", "bad_pose"):
        assert drops.get(f"input_dropped_{reason}", 0) > 0, drops
    logs = h.logs()
    for k in drops:
        assert logs.count(f"dropping input ({k[len('input_dropped_'):]})") <= 1, k
    assert h.proc.poll() is None
