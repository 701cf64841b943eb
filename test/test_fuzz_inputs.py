"""Generated bad input through the node's decode + submit path (Hypothesis), in process.

One real :class:`~neural_mapping.ros.node.MappingNode` (rclpy, its own context, realtime
mode, external poses) receives generated ``Image`` (depth and color), ``CameraInfo`` and pose
messages (``PoseStamped``, ``Odometry``, ``TransformStamped``) straight into its subscription
callbacks: NaN/Inf/negative depth, zero and huge sizes, ``step`` too small/large/odd, wrong
``len(data)``, unknown encodings, both byte orders, ``K`` zero or non-finite, inconsistent
ROI/binning, zero/denormal/non-finite quaternions, zero/equal/backward/far-ahead stamps,
empty or odd ``frame_id``.  ``CompressedImage`` is not an input of the node on this branch.

Invariants, per message: no exception escapes the callback; the message is either used (a
frame submitted or waiting for its partner, intrinsics replaced, a pose accepted) or counted
under a reason.  After each batch: good frames are still mapped, and nothing non-finite
reached the map, the mesh, the occupancy grid or a pose.

Case counts: ``NM_FUZZ_SCALE`` (default 1: about 10 000 cases, a couple of minutes on the CI
machine) multiplies every test's ``max_examples`` for a longer run.
"""

import math
import os

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from neural_mapping.ros import conversions as conv  # noqa: E402
from neural_mapping.types import CameraIntrinsics  # noqa: E402

SCALE = float(os.environ.get("NM_FUZZ_SCALE", "1"))
INTR = CameraIntrinsics(32, 24, 30.0, 30.0, 15.5, 11.5)


def _settings(n):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    from rclpy.parameter import Parameter
    from neural_mapping.ros.node import MappingNode
    out = tmp_path_factory.mktemp("fuzz")
    ctx = rclpy.Context()
    rclpy.init(args=[], context=ctx, domain_id=int(np.random.default_rng().integers(100, 200)))
    params = {"output_dir": str(out), "voxel_size_m": 0.05, "pose_source": "external",
              "pose_wait_timeout_s": 0.01, "diagnostics_rate_hz": 0.0, "mesh_rate_hz": 0.0,
              "depth_max_m": 3.0}
    n = MappingNode(context=ctx, enable_rosout=False, start_parameter_services=False,
                    parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    n.stamp = 1000.0
    try:
        yield n
    finally:
        n.shutdown(timeout=10.0)
        n.destroy_node()
        rclpy.try_shutdown(context=ctx)


# ------------------------------------------------------------------ bookkeeping
def _counted(n) -> int:
    """Every drop counter of the node and the core, summed."""
    st_ = n.system.stats()
    core = sum(v for k, v in st_.items() if isinstance(v, int) and
               (k.startswith("dropped_") or k.startswith("pose_dropped_") or k == "expired"))
    return sum(n.inputs.drop_counts().values()) + core


def _used(n):
    i = n.inputs
    b = n.system.external_poses.buffer
    return (n.system.stats().get("received", 0), len(i._depths), id(i._depths[-1]) if i._depths else 0,
            len(i._colors), id(i._colors[-1]) if i._colors else 0, id(i._intrinsics),
            b.accepted, b.replaced)


def _deliver(n, callback, msg):
    before = (_counted(n), _used(n))
    callback(msg)  # an exception here fails the case: nothing may escape a callback
    after = (_counted(n), _used(n))
    assert after != before, f"message neither used nor counted: {msg}"


def _good_frames_still_mapped(n, k=3):
    """Good camera_info + k frames with poses: all integrated; nothing non-finite anywhere."""
    import torch
    from neural_mapping.products.occupancy import OccupancyMap2D
    from _synthetic_scene import render_depth
    # stamps after anything the fuzz sent (or, past the int32 range, a backward clock jump):
    # a good frame older than the last mapped one would rightly be dropped as stale
    last = max(v for v in (n.inputs.frame_clock.last, n.inputs.pose_clock.last, 0.0) if v is not None)
    n.stamp = last + 10.0 if last + 10.0 < 2.0e9 else 1000.0
    n.inputs._on_camera_info(conv.camera_info_msg(INTR, "camera", n.stamp))
    done0 = n.system.frames_integrated
    for j in range(k):
        n.stamp += 0.05
        T = np.eye(4)
        T[0, 3] = 0.01 * j
        n.inputs._on_pose_msg(conv.pose_stamped_msg(T, conv.sec_to_stamp(n.stamp), "world"))
        n.inputs._on_pose_msg(conv.pose_stamped_msg(T, conv.sec_to_stamp(n.stamp + 0.01), "world"))
        d = render_depth(T, INTR)
        c = np.full(d.shape + (3,), 120, np.uint8)
        n.inputs._on_color(conv.image_msg(c, "rgb8", stamp=n.stamp, frame_id="camera"))
        n.inputs._on_depth(conv.image_msg(d, "32FC1", stamp=n.stamp, frame_id="camera"))
        assert n.system.flush(timeout=30)
    assert n.system.frames_integrated - done0 == k, (n.system.stats(), n.inputs.drop_counts())
    with n.system.read_map() as f:
        w = f.weight[: f.grid.num_blocks]
        assert bool(torch.isfinite(w).all()) and bool(torch.isfinite(f.sdf[: f.grid.num_blocks][w > 0]).all())
    mesh = n.system.mesh()
    assert np.isfinite(mesh.vertices).all() and mesh.num_triangles > 0
    grid = OccupancyMap2D(n.cfg, np.eye(4)).update(n.system.snapshot().field)
    assert grid is None or np.isin(grid.data, (-1, 0, 100)).all()  # None: nothing in the band
    assert all(np.isfinite(p.T_world_cam).all() for p in n.system.trajectory if p.T_world_cam is not None)
    n.stamp += 1.0


# ------------------------------------------------------------------ strategies
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from([0.0, -0.0, 1e-45, -1.0, 0.5, 2.0, 1e30, float("nan"), float("inf")]))
DEPTH_ENC = ["16UC1", "mono16", "32FC1"]
COLOR_ENC = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"]
ANY_ENC = st.one_of(st.sampled_from(DEPTH_ENC + COLOR_ENC + ["8UC3", "16SC1", "32FC2", "yuv422", "", "RGB8"]),
                    st.text(max_size=8))
FRAME_IDS = st.one_of(st.just(""), st.just("camera"), st.just("other"), st.text(max_size=12))
STAMP = st.tuples(st.integers(-2**31, 2**31 - 1), st.integers(0, 2**32 - 1))
BPP = {"16UC1": 2, "mono16": 2, "32FC1": 4, "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


@st.composite
def images(draw, encodings):
    from sensor_msgs.msg import Image
    m = Image()
    enc = draw(st.one_of(st.sampled_from(encodings), ANY_ENC))
    bpp = BPP.get(enc, draw(st.integers(1, 4)))
    if draw(st.booleans()):  # mostly consistent, then bent
        h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        if draw(st.integers(0, 3)) == 0:
            h, w = INTR.height, INTR.width
        pad = draw(st.sampled_from([0, 0, 1, 3, 8]))
        step = w * bpp + pad
        big = draw(st.booleans())
        if enc == "32FC1":
            vals = np.asarray(draw(st.lists(FLOATS, min_size=h * w, max_size=h * w)), ">f4" if big else "<f4")
        elif bpp == 2:
            vals = np.asarray(draw(st.lists(st.integers(0, 65535), min_size=h * w, max_size=h * w)),
                              ">u2" if big else "<u2")
        else:
            vals = np.frombuffer(draw(st.binary(min_size=h * w * bpp, max_size=h * w * bpp)), np.uint8)
        rows = vals.view(np.uint8).reshape(h, w * bpp)
        data = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1).tobytes()
        cut = draw(st.sampled_from([0, 0, 0, -1, 1, -step]))
        data = data[:len(data) + cut] if cut < 0 else data + b"\0" * cut
        step += draw(st.sampled_from([0, 0, 0, -1, 1, -step, 2**31]))
        m.height, m.width, m.step, m.is_bigendian = h, w, max(0, min(step, 2**32 - 1)), int(big)
        m.data = data
    else:  # anything
        m.height = draw(st.one_of(st.integers(0, 8), st.integers(0, 2**32 - 1)))
        m.width = draw(st.one_of(st.integers(0, 8), st.integers(0, 2**32 - 1)))
        m.step = draw(st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1)))
        m.is_bigendian = draw(st.integers(0, 255))
        m.data = draw(st.binary(max_size=300))
    m.encoding = enc
    m.header.frame_id = draw(FRAME_IDS)
    s = draw(st.one_of(STAMP, st.just(None)))
    m.header.stamp = conv.sec_to_stamp(draw(st.floats(990.0, 1100.0))) if s is None else \
        type(m.header.stamp)(sec=s[0], nanosec=s[1])
    return m


@st.composite
def camera_infos(draw):
    from sensor_msgs.msg import CameraInfo
    good = draw(st.booleans())
    m = conv.camera_info_msg(INTR, "camera", draw(st.floats(990.0, 1100.0))) if good else CameraInfo()
    if not good or draw(st.booleans()):
        m.width = draw(st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1)))
        m.height = draw(st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1)))
    k = list(m.k)
    for i in draw(st.lists(st.integers(0, 8), max_size=4)):
        k[i] = draw(FLOATS)
    m.k = [float(v) for v in k]
    m.binning_x, m.binning_y = draw(st.integers(0, 2**32 - 1) | st.integers(0, 4)), draw(st.integers(0, 4))
    m.roi.x_offset, m.roi.y_offset = draw(st.integers(0, 64)), draw(st.integers(0, 64))
    m.roi.width, m.roi.height = draw(st.integers(0, 64)), draw(st.integers(0, 64))
    m.roi.do_rectify = draw(st.booleans())
    m.distortion_model = draw(st.sampled_from(["plumb_bob", "", "equidistant", "rational_polynomial"]))
    m.d = [float(v) for v in draw(st.lists(FLOATS, max_size=8))]
    m.header.frame_id = draw(FRAME_IDS)
    return m


QUATS = st.one_of(st.tuples(FLOATS, FLOATS, FLOATS, FLOATS),
                  st.sampled_from([(0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1e-310), (0.0, 0.0, 0.0, 1.0),
                                   (0.0, 0.0, 0.0, -1.0), (1e-300, 0.0, 0.0, 1e-300), (0.0, 0.0, 0.0, 1.05)]))


@st.composite
def poses(draw, kind):
    from geometry_msgs.msg import PoseStamped, TransformStamped
    from nav_msgs.msg import Odometry
    m = {"PoseStamped": PoseStamped, "Odometry": Odometry, "TransformStamped": TransformStamped}[kind]()
    t = [draw(FLOATS) if draw(st.integers(0, 3)) == 0 else draw(st.floats(-5, 5)) for _ in range(3)]
    q = draw(QUATS)
    if kind == "TransformStamped":
        m.transform.translation.x, m.transform.translation.y, m.transform.translation.z = t
        r = m.transform.rotation
    else:
        p = m.pose.pose if kind == "Odometry" else m.pose
        p.position.x, p.position.y, p.position.z = t
        r = p.orientation
    r.x, r.y, r.z, r.w = (float(v) for v in q)
    m.header.frame_id = draw(FRAME_IDS)
    which = draw(st.integers(0, 5))
    if which == 0:
        m.header.stamp = conv.sec_to_stamp(0.0)
    else:
        s = draw(st.one_of(STAMP, st.floats(990.0, 1100.0)))
        m.header.stamp = conv.sec_to_stamp(s) if isinstance(s, float) else \
            type(m.header.stamp)(sec=s[0], nanosec=s[1])
    return m


# ------------------------------------------------------------------ tests
@_settings(3000)
@given(images(DEPTH_ENC))
def test_fuzz_depth_images(node, msg):
    _deliver(node, node.inputs._on_depth, msg)


@_settings(1500)
@given(images(COLOR_ENC))
def test_fuzz_color_images(node, msg):
    _deliver(node, node.inputs._on_color, msg)


@_settings(2000)
@given(camera_infos())
def test_fuzz_camera_info(node, msg):
    _deliver(node, node.inputs._on_camera_info, msg)


@pytest.mark.parametrize("kind", ["PoseStamped", "Odometry", "TransformStamped"])
def test_fuzz_pose_messages(node, kind):
    node.ncfg.pose_topic_type = kind  # the decoder the pose callback uses

    @_settings(1000)
    @given(poses(kind))
    def run(msg):
        _deliver(node, node.inputs._on_pose_msg, msg)
    try:
        run()
    finally:
        node.ncfg.pose_topic_type = "PoseStamped"


@_settings(500)
@given(st.lists(st.tuples(st.sampled_from(["depth", "color", "info", "pose"]),
                          st.floats(-2e9, 2.1e9) | st.sampled_from([0.0, 1000.0, 1000.0])), max_size=12))
def test_fuzz_interleaved_stamps(node, seq):
    """Good messages with zero, equal, backward and far-ahead stamps, interleaved."""
    from _synthetic_scene import render_depth
    d = render_depth(np.eye(4), INTR)
    c = np.zeros(d.shape + (3,), np.uint8)
    for kind, t in seq:
        if kind == "depth":
            _deliver(node, node.inputs._on_depth, conv.image_msg(d, "32FC1", stamp=t, frame_id="camera"))
        elif kind == "color":
            _deliver(node, node.inputs._on_color, conv.image_msg(c, "rgb8", stamp=t, frame_id="camera"))
        elif kind == "info":
            node.inputs._on_camera_info(conv.camera_info_msg(INTR, "camera", t))
        else:
            _deliver(node, node.inputs._on_pose_msg, conv.pose_stamped_msg(np.eye(4), conv.sec_to_stamp(t), "world"))


def test_fuzz_then_good_frames_are_mapped(node):
    """Runs after the fuzz tests above (same node): it still maps good frames, and nothing
    non-finite reached the map, mesh, occupancy or poses; every reason is a stable key."""
    _good_frames_still_mapped(node, k=3)
    drops = node.inputs.drop_counts()
    assert drops and all(k.replace("_", "").isalnum() for k in drops), drops
    assert sum(drops.values()) > 100
