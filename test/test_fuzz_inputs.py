"""Generated bad input through the node's decode + submit path (Hypothesis), in process.

One real :class:`~neural_mapping.ros.node.MappingNode` (rclpy, its own context, realtime
mode, external poses) receives generated ``Image`` (depth and color), ``CameraInfo`` and pose
messages (``PoseStamped``, ``Odometry``, ``TransformStamped``) straight into its subscription
callbacks: NaN/Inf/negative depth, zero and huge sizes, ``step`` too small/large/odd, wrong
``len(data)``, unknown encodings, both byte orders, ``K`` zero or non-finite, inconsistent
ROI/binning, zero/denormal/non-finite quaternions, zero/equal/backward/far-ahead stamps,
empty or odd ``frame_id``.  A second node, configured with ``depth_transport:
compressedDepth`` and ``color_transport: compressed`` (:mod:`neural_mapping.io.compressed`),
receives generated ``CompressedImage`` messages: format strings valid, invalid, empty or
random; compressedDepth 12-byte config headers with NaN/Inf/zero/negative quantisation and
wrong format enums (or no room for one); valid, truncated, bit-flipped and garbage PNG (8- and
16-bit, gray and colour), JPEG and RVL payloads; PNG/JPEG headers declaring huge sizes; RVL
streams with huge declared sizes, empty runs and garbage words.

Invariants, per message: no exception escapes the callback; the message is either used (a
frame submitted or waiting for its partner, intrinsics replaced, a pose accepted) or counted
under a reason.  After each batch: good frames are still mapped, and nothing non-finite
reached the map, the mesh, the occupancy grid or a pose.

Case counts: ``NM_FUZZ_SCALE`` (default 1: about 10 000 raw cases, a couple of minutes on the
CI machine, + about 2 000 compressed ones, well under a minute) multiplies every test's
``max_examples`` for a longer run.
"""

import contextlib
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


@contextlib.contextmanager
def _fuzz_node(tmp_path_factory, name, **extra):
    """A real MappingNode (own rclpy context, external poses, no timers) for one module;
    ``extra`` parameters on top of the common ones; shut down on exit."""
    from rclpy.parameter import Parameter
    from neural_mapping.ros.node import MappingNode
    out = tmp_path_factory.mktemp(name)
    ctx = rclpy.Context()
    rclpy.init(args=[], context=ctx, domain_id=int(np.random.default_rng().integers(100, 200)))
    params = {"output_dir": str(out), "voxel_size_m": 0.05, "pose_source": "external",
              "pose_wait_timeout_s": 0.01, "diagnostics_rate_hz": 0.0, "mesh_rate_hz": 0.0,
              "depth_max_m": 3.0, **extra}
    n = MappingNode(context=ctx, enable_rosout=False, start_parameter_services=False,
                    parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    n.stamp = 1000.0
    try:
        yield n
    finally:
        n.shutdown(timeout=10.0)
        n.destroy_node()
        rclpy.try_shutdown(context=ctx)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    with _fuzz_node(tmp_path_factory, "fuzz") as n:
        yield n


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


def _send_pending_on(n, color) -> None:
    """Before the good frames: a good camera_info, then ``color`` stamped newer than every
    fuzzed depth/color still waiting for a partner, so those leave now (alone; their unordered
    stamps may read as a clock jump, which clears newer poses) instead of pairing with, or
    crowding out, a good frame. ``n.stamp`` then starts after anything the fuzz sent (or,
    past the int32 range, at a backward clock jump): a good frame older than the last mapped
    one would rightly be dropped as stale."""
    n.inputs._on_camera_info(conv.camera_info_msg(INTR, "camera", n.stamp))
    pending = [s for q in (n.inputs._depths, n.inputs._colors) for s, *_ in q]
    color.header.stamp = conv.sec_to_stamp(max(pending + [0.0]) + 1.0)
    n.inputs._on_color(color)
    assert n.system.flush(timeout=30)
    last = max(v for v in (n.inputs.frame_clock.last, n.inputs.pose_clock.last, 0.0,
                           *[s for s, _ in n.inputs._colors]) if v is not None)
    n.stamp = last + 10.0 if last + 10.0 < 2.0e9 else 1000.0


def _raw_frame(j, d):
    """Frame ``j`` as sensor_msgs/Image: 32FC1 depth (metres), rgb8 color."""
    return (conv.image_msg(d, "32FC1", frame_id="camera"),
            conv.image_msg(np.full(d.shape + (3,), 120, np.uint8), "rgb8", frame_id="camera"))


def _good_frames_still_mapped(n, first_color, encode=_raw_frame, k=3):
    """After ``first_color`` (:func:`_send_pending_on`): good camera_info + ``k`` frames with
    poses, each encoded by ``encode(j, depth) -> (depth_msg, color_msg)``: all integrated;
    nothing non-finite in the map, mesh, occupancy or poses."""
    import torch
    from neural_mapping.products.occupancy import OccupancyMap2D
    from _synthetic_scene import render_depth
    _send_pending_on(n, first_color)
    done0 = n.system.frames_integrated
    for j in range(k):
        n.stamp += 0.05
        T = np.eye(4)
        T[0, 3] = 0.01 * j
        n.inputs._on_pose_msg(conv.pose_stamped_msg(T, conv.sec_to_stamp(n.stamp), "world"))
        n.inputs._on_pose_msg(conv.pose_stamped_msg(T, conv.sec_to_stamp(n.stamp + 0.01), "world"))
        dm, cm = encode(j, render_depth(T, INTR))
        for m in (dm, cm):
            m.header.stamp, m.header.frame_id = conv.sec_to_stamp(n.stamp), "camera"
        n.inputs._on_color(cm)
        n.inputs._on_depth(dm)
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
    _good_frames_still_mapped(node, conv.image_msg(np.zeros((INTR.height, INTR.width, 3), np.uint8), "rgb8",
                                                   frame_id="camera"))
    drops = node.inputs.drop_counts()
    assert drops and all(k.replace("_", "").isalnum() for k in drops), drops
    assert sum(drops.values()) > 100


# ------------------------------------------------------------------ compressed transports
@pytest.fixture(scope="module")
def cnode(tmp_path_factory):
    """A node subscribed to ``depth/image/compressedDepth`` and ``color/image/compressed``."""
    from neural_mapping.io import compressed
    with _fuzz_node(tmp_path_factory, "fuzz_compressed", depth_transport="compressedDepth",
                    color_transport="compressed") as n:
        assert n.inputs._depth_decode is compressed.depth_from_compressed
        assert n.inputs._color_decode is compressed.color_from_compressed
        yield n


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(w: int, h: int, bits: int, color_type: int, body: bytes) -> bytes:
    """A PNG whose IHDR says ``w x h`` (any size) with ``body`` zlib-compressed as its IDAT."""
    import struct
    import zlib
    from neural_mapping.io.compressed import PNG_MAGIC
    ihdr = struct.pack(">IIBBBBB", w & 0xFFFFFFFF, h & 0xFFFFFFFF, bits, color_type, 0, 0, 0)
    return (PNG_MAGIC + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(body))
            + _png_chunk(b"IEND", b""))


def _encoded(arr: np.ndarray, fmt: str) -> bytes:
    import io as _io
    from PIL import Image as PILImage
    buf = _io.BytesIO()
    PILImage.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


SMALL = st.tuples(st.integers(1, 6), st.integers(1, 6)) | st.just((INTR.height, INTR.width))


@st.composite
def image_payloads(draw):
    """Bytes of an image file: valid (small or the camera's size), mangled, or declaring a huge
    size; PNG 8/16-bit gray/colour, JPEG, RVL, or nothing at all."""
    from neural_mapping.io import compressed
    kind = draw(st.sampled_from(["png16", "png8", "pngrgb", "jpeg", "jpeg_gray", "rvl", "rvl_raw",
                                 "huge_png", "huge_jpeg", "garbage", "magic_garbage", "empty"]))
    h, w = draw(SMALL)
    if kind == "png16":
        data = compressed._png16_bytes(np.asarray(draw(st.lists(st.integers(0, 65535), min_size=h * w,
                                                                max_size=h * w)), np.uint16).reshape(h, w))
    elif kind in ("png8", "pngrgb", "jpeg", "jpeg_gray"):
        shape = (h, w) if kind in ("png8", "jpeg_gray") else (h, w, 3)
        px = np.frombuffer(draw(st.binary(min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))), np.uint8)
        data = _encoded(px.reshape(shape), "PNG" if kind.startswith("png") else "JPEG")
    elif kind == "rvl":
        data = compressed.rvl_encode(np.asarray(draw(st.lists(st.integers(0, 65535) | st.just(0),
                                                              min_size=h * w, max_size=h * w)),
                                                np.uint16).reshape(h, w))
    elif kind == "rvl_raw":  # declared size (0, huge, ...) + garbage / zero / empty-run words
        import struct
        cols = draw(st.sampled_from([0, 1, 4, INTR.width, 8000, 2**16, 2**32 - 1]) | st.integers(0, 2**32 - 1))
        rows = draw(st.sampled_from([0, 1, 3, INTR.height, 8000, 2**32 - 1]) | st.integers(0, 2**32 - 1))
        words = draw(st.sampled_from([b"", b"\0" * 4000, b"\xff" * 64]) |
                     st.binary(max_size=200) |
                     st.builds(lambda z: struct.pack("<I", z), st.integers(0, 2**32 - 1)))
        data = struct.pack("<II", cols, rows) + words
    elif kind == "huge_png":  # IHDR says huge (a decompression bomb when the body is zeros)
        dims = draw(st.sampled_from([(10000, 10000), (2**31 - 1, 1), (1, 2**31 - 1), (70000, 70000),
                                     (0, 5), (8192, 8192), (4096, 8192)]))
        bits, ct = draw(st.sampled_from([(16, 0), (8, 0), (8, 2), (16, 2), (1, 0), (8, 3)]))
        body = draw(st.sampled_from([b"", b"\0" * 20000, b"\x00\xff" * 10]))
        data = _png_declaring(dims[0], dims[1], bits, ct, body)
    elif kind == "huge_jpeg":  # a valid JPEG whose SOF0 height/width are patched
        import struct
        data = bytearray(_encoded(np.zeros((8, 8, 3), np.uint8), "JPEG"))
        sof = data.find(b"\xff\xc0")
        hh, ww = draw(st.sampled_from([(65535, 65535), (0, 0), (65535, 1), (30000, 30000), (8, 65535)]))
        data[sof + 5:sof + 9] = struct.pack(">HH", hh, ww)
        data = bytes(data)
    elif kind == "garbage":
        data = draw(st.binary(max_size=300))
    elif kind == "magic_garbage":
        data = draw(st.sampled_from([compressed.PNG_MAGIC, b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\0"])) \
            + draw(st.binary(max_size=200))
    else:
        data = b""
    cut = draw(st.sampled_from([None, None, None, "truncate", "flip"]))
    if cut == "truncate" and data:
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif cut == "flip" and data:
        b = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            b[draw(st.integers(0, len(b) - 1))] ^= 1 << draw(st.integers(0, 7))
        data = bytes(b)
    return data


DEPTH_FORMATS = ["16UC1; compressedDepth png", "16UC1; compressedDepth rvl", "32FC1; compressedDepth png",
                 "mono16; compressedDepth png", "16UC1; compressedDepth", "32FC1; compressedDepth rvl",
                 "8UC1; compressedDepth png", "16UC1; compressedDepth zstd", "compressedDepth",
                 "; compressedDepth png", "16UC1; png", "png", "jpeg", "", "16UC1; compressed png"]
COLOR_FORMATS = ["rgb8; jpeg compressed bgr8", "bgr8; png compressed bgr8", "jpeg", "png", "",
                 "16UC1; compressedDepth png", "mono8; jpeg compressed mono8"]


@st.composite
def compressed_images(draw, depth: bool):
    import struct
    from sensor_msgs.msg import CompressedImage
    from neural_mapping.io import compressed
    m = CompressedImage()
    m.format = draw(st.sampled_from(DEPTH_FORMATS if depth else COLOR_FORMATS) | st.text(max_size=30))
    payload = draw(image_payloads())
    header = b""
    if depth and draw(st.integers(0, 4)):  # the 12-byte ConfigHeader (or a cut one)
        enum = draw(st.sampled_from([compressed.INV_DEPTH, compressed.RVL, 2, -1, 2**31 - 1]) |
                    st.integers(-2**31, 2**31 - 1))
        qa, qb = draw(FLOATS), draw(FLOATS)
        if draw(st.booleans()):  # the transport's 32FC1 defaults, mostly
            qa, qb = 10100.0, 1.0 - 10100.0 / 10.0
        header = struct.pack("<iff", enum, qa, qb)[:draw(st.sampled_from([12, 12, 12, 0, 4, 11]))]
    m.data = header + payload
    m.header.frame_id = draw(FRAME_IDS)
    m.header.stamp = conv.sec_to_stamp(draw(st.floats(990.0, 1100.0)))
    return m


def _compressed_frame(j, d):
    """Frame ``j`` as sensor_msgs/CompressedImage: compressedDepth PNG 16UC1, RVL 16UC1 or PNG
    32FC1 (inverse depth) in turn, JPEG color."""
    from neural_mapping.io import compressed
    from sensor_msgs.msg import CompressedImage
    raw = [np.rint(d * 1000).astype(np.uint16), np.rint(d * 1000).astype(np.uint16), d.astype(np.float32)][j % 3]
    dm, cm = CompressedImage(), CompressedImage()
    dm.format, dm.data = compressed.compress_depth(raw, ["png", "rvl", "png"][j % 3])
    cm.format, cm.data = compressed.compress_color(np.full(d.shape + (3,), 120, np.uint8), "jpeg")
    return dm, cm


def _compressed_black():
    from neural_mapping.io import compressed
    from sensor_msgs.msg import CompressedImage
    cm = CompressedImage()
    cm.format, cm.data = compressed.compress_color(np.zeros((INTR.height, INTR.width, 3), np.uint8), "png")
    return cm


@_settings(1300)
@given(compressed_images(depth=True))
def test_fuzz_compressed_depth(cnode, msg):
    _deliver(cnode, cnode.inputs._on_depth, msg)


@_settings(800)
@given(compressed_images(depth=False))
def test_fuzz_compressed_color(cnode, msg):
    _deliver(cnode, cnode.inputs._on_color, msg)


def test_fuzz_compressed_then_good_frames_are_mapped(cnode):
    """After the compressed fuzz (same node): good compressed frames are mapped, nothing
    non-finite anywhere, and the payloads were rejected under the compressed reasons."""
    _good_frames_still_mapped(cnode, _compressed_black(), _compressed_frame)
    drops = cnode.inputs.drop_counts()
    assert drops.get("compressed_payload", 0) > 50 and drops.get("compressed_format", 0) > 50, drops
    assert all(k.replace("_", "").isalnum() for k in drops), drops
