"""Numpy-built CDR bytes (MarkerArray mesh chunks, PointCloud2) against rclpy's serializer,
and through a real DDS publisher/subscriber pair."""

import logging
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (PyPI ROS 2 wheels) is not installed")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402
from nav_msgs.msg import Path  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

import _ros_harness  # noqa: E402
from _ros_harness import spin_until  # noqa: E402
from neural_mapping.ros import conversions as cv  # noqa: E402
from neural_mapping.ros import cdr_markers  # noqa: E402
from neural_mapping.ros import fast_cdr as fc  # noqa: E402
from neural_mapping.types import CameraIntrinsics  # noqa: E402


def _mesh(n_vertices, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n_vertices, 3)).astype(np.float32)
    c = rng.integers(0, 256, size=(n_vertices, 3), dtype=np.uint8)
    return v, c


def _points(marker):
    return np.array([[p.x, p.y, p.z] for p in marker.points]).reshape(-1, 3)


def _colors(marker):
    return np.array([[c.r, c.g, c.b, c.a] for c in marker.colors], dtype=np.float32).reshape(-1, 4)


def assert_markers_equal(fast: MarkerArray, slow: MarkerArray):
    assert len(fast.markers) == len(slow.markers)
    for a, b in zip(fast.markers, slow.markers):
        assert a.header == b.header
        assert (a.ns, a.id, a.type, a.action) == (b.ns, b.id, b.type, b.action)
        assert a.pose == b.pose and a.scale == b.scale and a.lifetime == b.lifetime
        for ch in "rgba":  # float32 on the wire
            assert getattr(a.color, ch) == pytest.approx(getattr(b.color, ch), abs=1e-7)
        assert a.frame_locked == b.frame_locked
        np.testing.assert_array_equal(_points(a), _points(b))
        np.testing.assert_allclose(_colors(a), _colors(b), atol=1e-7)
        assert (a.text, a.mesh_resource, a.texture_resource) == (b.text, b.mesh_resource,
                                                                b.texture_resource)
        assert list(a.uv_coordinates) == list(b.uv_coordinates)
        assert a.texture == b.texture and a.mesh_file == b.mesh_file


# ------------------------------------------------------------------ generic CDR writer
@pytest.mark.parametrize("make", [
    lambda: Marker(),
    lambda: cv.camera_info_msg(CameraIntrinsics(64, 48, 50.0, 51.0, 31.5, 23.5), "cam_x", 1.5),
    lambda: cv.odometry_msg(np.eye(4), 2.0, "odom", "base_link", linear=[1, 2, 3]),
    lambda: cv.occupancy_grid_msg(np.arange(-1, 14, dtype=np.int8).reshape(3, 5), 0.05, (1, 2), "map", 3),
    lambda: cv.image_msg(np.ones((3, 5), np.float32), "16UC1", frame_id="abc", row_padding=1),
    lambda: DiagnosticArray(status=[DiagnosticStatus(name="n", level=b"\x01", message="m",
                                                     values=[KeyValue(key="k", value="vv")])]),
    lambda: cv.path_append(cv.path_append(Path(), cv.pose_stamped_msg(np.eye(4), 1.0, "m")),
                           cv.pose_stamped_msg(np.eye(4), 2.0, "m")),
])
def test_generic_writer_matches_rclpy(make):
    msg = make()
    w = fc.CdrWriter()
    b = fc.serialize(msg, writer=w)
    assert fc.compare_with_rclpy(b, msg, w.padding) == ""


def test_fast_path_enabled_on_this_installation():
    assert fc.fast_path_ok(), fc.fast_path_reason()


def test_layout_follows_installed_marker_definition():
    # Kilted's Marker has texture / uv_coordinates / mesh_file after colors; the writer walks
    # whatever the installed definition says, so a template with those set round-trips too.
    m = Marker()
    fields = Marker.get_fields_and_field_types()
    assert list(fields)[:2] == ["header", "ns"] and "points" in fields
    if "texture" in fields:
        m.texture.format = "png"
        m.texture.data = b"\x01\x02\x03"
        m.mesh_file.filename = "f.dae"
        from visualization_msgs.msg import UVCoordinate
        m.uv_coordinates = [UVCoordinate(u=0.5, v=0.25)]
    m.text = "hello"
    w = fc.CdrWriter()
    assert fc.compare_with_rclpy(fc.serialize(m, writer=w), m, w.padding) == ""


# ------------------------------------------------------------------------ MarkerArray
@pytest.mark.parametrize("n, max_v, vdtype, colors", [
    (999, 300, np.float32, "uint8"), (30, 65535, np.float64, "float"), (0, 65535, np.float32, "uint8"),
    (12, 6, np.float64, None), (9, 9, np.float32, "rgba_uint8")])
def test_marker_array_bytes_equal_slow_message(n, max_v, vdtype, colors):
    v, c = _mesh(n)
    v = v.astype(vdtype)
    if colors == "float":
        c = c.astype(np.float32) / 255.0
    elif colors == "rgba_uint8":
        c = np.concatenate([c, np.full((n, 1), 128, np.uint8)], axis=1)
    elif colors is None:
        c = None
    chunks = fc.chunk_triangles(v, c, max_vertices=max_v, first_id=5)
    kw = dict(frame_id="odom_x", stamp=1700000000.123456789, ns="mesh_blk")
    for deletes, delete_all in (([], False), ([1, 2, 3], False), ([42], True)):
        fast = fc.marker_array_bytes(chunks, deletes, delete_all=delete_all, **kw)
        slow = fc.marker_array_msg(chunks, deletes, delete_all=delete_all, **kw)
        got = deserialize_message(fast, MarkerArray)
        assert_markers_equal(got, slow)
        assert len(fast) == len(serialize_message(slow))
        actions = [m.action for m in got.markers]
        assert actions == [Marker.DELETEALL] * delete_all + [Marker.DELETE] * len(deletes) + \
            [Marker.ADD] * len(chunks)
        adds = [m for m in got.markers if m.action == Marker.ADD]
        assert [m.id for m in adds] == list(range(5, 5 + len(chunks)))
        assert all(m.type == Marker.TRIANGLE_LIST and m.ns == "mesh_blk" for m in got.markers)
        if n:
            np.testing.assert_array_equal(np.concatenate([_points(m) for m in adds]),
                                          v.astype(np.float64))
        if c is not None and n:
            cols = np.concatenate([_colors(m) for m in adds])
            expect = c.astype(np.float32) / 255.0 if c.dtype == np.uint8 else c
            np.testing.assert_allclose(cols[:, :expect.shape[1]], expect, atol=1e-6)
            if expect.shape[1] == 3:
                assert (cols[:, 3] == 1.0).all()
        else:
            assert all(len(m.colors) == 0 for m in adds)


@pytest.mark.parametrize("seed", range(6))
def test_templated_markers_equal_generic_writer(seed):
    """Per-marker templates (one per alignment phase) give the generic writer's exact bytes,
    whatever the string lengths, deletes, empty chunks and color kinds."""
    rng = np.random.default_rng(seed)
    chunks = []
    for i in range(int(rng.integers(1, 12))):
        n = 3 * int(rng.integers(0, 20))
        v, c = _mesh(n, seed * 100 + i)
        kind = rng.integers(0, 3)
        c = None if kind == 0 else (c if kind == 1 else c.astype(np.float32) / 255.0)
        chunks.append(fc.MeshChunk(int(rng.integers(-5, 10_000)), v, c))
    kw = dict(frame_id="f" * int(rng.integers(0, 9)), stamp=float(rng.uniform(0, 2e9)),
              ns="n" * int(rng.integers(0, 9)), delete_all=bool(rng.integers(0, 2)),
              color=(0.1, 0.2, 0.3, 1.0))
    deletes = [int(x) for x in rng.integers(0, 100, int(rng.integers(0, 4)))]
    generic = cdr_markers.marker_array_generic(chunks, deletes, **kw)
    assert fc.marker_array_bytes(chunks, deletes, **kw) == generic
    w = fc.CdrWriter()
    cdr_markers.marker_array_generic(chunks, deletes, writer=w, **kw)
    assert fc.compare_with_rclpy(generic, fc.marker_array_msg(chunks, deletes, **kw), w.padding) == ""


def test_packed_form_equals_chunks():
    v, c = _mesh(3 * 400)
    counts = [0, 3, 597, 300, 300]
    ids = [9, 3, 1, 7, 2]
    chunks, start = [], 0
    for i, n in zip(ids, counts):
        chunks.append(fc.MeshChunk(i, v[start:start + n], c[start:start + n]))
        start += n
    kw = dict(frame_id="map", stamp=3.0, ns="blocks")
    assert fc.marker_array_bytes_packed(ids, counts, v, c, [5], **kw) == \
        fc.marker_array_bytes(chunks, [5], **kw)
    nocolor = [fc.MeshChunk(ch.id, ch.vertices, None) for ch in chunks]
    assert fc.marker_array_bytes_packed(ids, counts, v, None, **kw) == fc.marker_array_bytes(nocolor, **kw)
    with pytest.raises(ValueError, match="sum to"):
        fc.marker_array_bytes_packed(ids, [3, 3, 3, 3, 3], v, c)
    with pytest.raises(ValueError, match="multiple of 3"):
        fc.marker_array_bytes_packed([1, 2], [1, 1199], v, c)


def test_chunk_triangles():
    v, c = _mesh(3 * 1000)
    chunks = fc.chunk_triangles(v, c, max_vertices=100)  # 99 vertices = 33 triangles each
    assert all(len(ch.vertices) <= 100 and len(ch.vertices) % 3 == 0 for ch in chunks)
    assert [ch.id for ch in chunks] == list(range(len(chunks)))
    np.testing.assert_array_equal(np.concatenate([ch.vertices for ch in chunks]), v)
    np.testing.assert_array_equal(np.concatenate([ch.colors for ch in chunks]), c)
    big = fc.chunk_triangles(*_mesh(300_000))
    assert max(len(ch.vertices) for ch in big) == fc.MAX_MARKER_VERTICES == 65535
    with pytest.raises(ValueError):
        fc.chunk_triangles(v, c, max_vertices=2)


def test_bad_mesh_inputs():
    v, c = _mesh(9)
    with pytest.raises(ValueError, match="multiple of 3"):
        fc.marker_array_bytes([fc.MeshChunk(0, v[:8], None)])
    with pytest.raises(ValueError, match="colors"):
        fc.marker_array_bytes([fc.MeshChunk(0, v, c[:6])])
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        fc.marker_array_bytes([fc.MeshChunk(0, v[:, :2], None)])


# ------------------------------------------------------------------------ PointCloud2
@pytest.mark.parametrize("rgb, fields", [(False, None), (True, None), (False, "distance"),
                                         (True, "distance")])
def test_pointcloud2_bytes_equal_slow_message(rgb, fields):
    v, c = _mesh(1001)
    v[3] = np.nan
    extra = {"distance": np.linalg.norm(v, axis=1).astype(np.float32)} if fields else None
    kw = dict(rgb=c if rgb else None, fields=extra, frame_id="map", stamp=12.75)
    fast = fc.pointcloud2_bytes(v, **kw)
    slow = fc.pointcloud2_msg(v, **kw)
    got = deserialize_message(fast, PointCloud2)
    assert got == deserialize_message(serialize_message(slow), PointCloud2)  # field by field (==)
    names = ["x", "y", "z"] + ["rgb"] * rgb + ["distance"] * bool(fields)
    assert [f.name for f in got.fields] == names
    assert [f.offset for f in got.fields] == [4 * i for i in range(len(names))]
    assert all(f.datatype == PointField.FLOAT32 and f.count == 1 for f in got.fields)
    assert (got.height, got.width, got.point_step) == (1, 1001, 4 * len(names))
    assert got.row_step == got.point_step * 1001 and not got.is_bigendian
    assert got.is_dense is False  # a NaN point
    cols = fc.pointcloud2_to_array(got)
    np.testing.assert_array_equal(np.stack([cols["x"], cols["y"], cols["z"]], 1), v)
    if rgb:
        packed = cols["rgb"].view(np.uint32)
        np.testing.assert_array_equal(packed >> 16 & 255, c[:, 0])
        np.testing.assert_array_equal(packed >> 8 & 255, c[:, 1])
        np.testing.assert_array_equal(packed & 255, c[:, 2])
    if fields:
        np.testing.assert_array_equal(cols["distance"], extra["distance"])


def test_pointcloud2_empty_and_errors():
    got = deserialize_message(fc.pointcloud2_bytes(np.zeros((0, 3), np.float32)), PointCloud2)
    assert got.width == 0 and len(got.data) == 0 and got.is_dense
    with pytest.raises(ValueError):
        fc.pointcloud2_bytes(np.zeros((4, 2)))
    with pytest.raises(ValueError):
        fc.pointcloud2_bytes(np.zeros((4, 3)), rgb=np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="duplicate"):
        fc.pointcloud2_bytes(np.zeros((4, 3)), fields={"x": np.zeros(4)})


# ----------------------------------------------------------------------- self-check
def test_fallback_when_the_writer_disagrees(monkeypatch, caplog):
    monkeypatch.setattr(fc, "_check_result", None)
    monkeypatch.setattr(fc, "_probe", lambda: "simulated layout difference")
    with caplog.at_level(logging.WARNING, logger=fc.__name__):
        assert not fc.fast_path_ok()
    assert "simulated layout difference" in caplog.text
    v, c = _mesh(12)
    chunks = fc.chunk_triangles(v, c)
    # (rclpy leaves alignment padding uninitialised: compare the messages, not the bytes)
    b = fc.marker_array_bytes(chunks, [3], frame_id="map", stamp=1.0)
    slow = fc.marker_array_msg(chunks, [3], frame_id="map", stamp=1.0)
    assert len(b) == len(serialize_message(slow))
    assert_markers_equal(deserialize_message(b, MarkerArray), slow)
    b = fc.marker_array_bytes_packed([0, 1], [6, 6], v, c, [3], frame_id="map", stamp=1.0)
    slow = fc.marker_array_msg(fc.chunk_triangles(v, c, max_vertices=6), [3], frame_id="map",
                               stamp=1.0)
    assert_markers_equal(deserialize_message(b, MarkerArray), slow)
    b = fc.pointcloud2_bytes(v, rgb=c)
    assert deserialize_message(b, PointCloud2) == deserialize_message(
        serialize_message(fc.pointcloud2_msg(v, rgb=c)), PointCloud2)


def test_compare_detects_differences():
    msg = cv.odometry_msg(np.eye(4), 2.0, "odom", "base")
    w = fc.CdrWriter()
    b = fc.serialize(msg, writer=w)
    assert fc.compare_with_rclpy(b[:-1], msg).startswith("length")
    bad = bytearray(b)
    bad[20] ^= 0xFF  # inside the frame_id string, not padding
    assert fc.compare_with_rclpy(bytes(bad), msg, w.padding) != ""


# ------------------------------------------------------------------------------ DDS
@pytest.fixture(scope="module")
def ros_node():
    with _ros_harness.ros_node("fast_cdr_test") as (node, ex):
        yield node, ex


MAP_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


def test_publish_bytes_over_dds(ros_node):
    node, ex = ros_node
    v, c = _mesh(3 * 700)
    chunks = fc.chunk_triangles(v, c, max_vertices=999)
    slow = fc.marker_array_msg(chunks, [77], frame_id="map", stamp=5.5, ns="mesh")
    cloud_v, cloud_c = _mesh(500, seed=3)
    got = {"mesh": [], "mesh_raw": [], "cloud": []}
    pub_mesh = node.create_publisher(MarkerArray, "fast_cdr/mesh", MAP_QOS)
    pub_cloud = node.create_publisher(PointCloud2, "fast_cdr/cloud", MAP_QOS)
    node.create_subscription(MarkerArray, "fast_cdr/mesh", got["mesh"].append, MAP_QOS)
    node.create_subscription(MarkerArray, "fast_cdr/mesh", got["mesh_raw"].append, MAP_QOS, raw=True)
    node.create_subscription(PointCloud2, "fast_cdr/cloud", got["cloud"].append, MAP_QOS)
    assert spin_until(ex, lambda: pub_mesh.get_subscription_count() == 2 and
                       pub_cloud.get_subscription_count() == 1), "DDS discovery failed"
    fast = fc.marker_array_bytes(chunks, [77], frame_id="map", stamp=5.5, ns="mesh")
    assert isinstance(fast, bytes)  # Publisher.publish only takes exactly bytes
    pub_mesh.publish(fast)
    pub_cloud.publish(fc.pointcloud2_bytes(cloud_v, rgb=cloud_c, frame_id="map", stamp=5.5))
    assert spin_until(ex, lambda: all(got.values())), {k: len(v) for k, v in got.items()}
    assert_markers_equal(got["mesh"][0], slow)
    assert got["mesh_raw"][0] == fast  # the subscriber sees exactly the bytes we wrote
    assert_markers_equal(deserialize_message(got["mesh_raw"][0], MarkerArray), slow)
    cloud = got["cloud"][0]
    assert cloud == deserialize_message(serialize_message(
        fc.pointcloud2_msg(cloud_v, rgb=cloud_c, frame_id="map", stamp=5.5)), PointCloud2)
    with pytest.raises(TypeError):
        pub_mesh.publish(bytearray(fast))  # rclpy: only bytes (or the message type)


def test_triangle_throughput_300k_vertices(ros_node, capsys):
    """Measured, not asserted: build + publish + receive 300 k vertices (100 k triangles)."""
    node, ex = ros_node
    v, c = _mesh(300_000)
    chunks = fc.chunk_triangles(v, c)
    received = []
    pub = node.create_publisher(MarkerArray, "fast_cdr/mesh300k", MAP_QOS)
    node.create_subscription(MarkerArray, "fast_cdr/mesh300k",
                             lambda b: received.append(time.perf_counter()), MAP_QOS, raw=True)
    assert spin_until(ex, lambda: pub.get_subscription_count() == 1)
    rows = []
    for i in range(5):
        t0 = time.perf_counter()
        b = fc.marker_array_bytes(chunks, frame_id="map", stamp=float(i))
        t1 = time.perf_counter()
        pub.publish(b)
        t2 = time.perf_counter()
        assert spin_until(ex, lambda: len(received) == i + 1)
        rows.append((t1 - t0, t2 - t1, received[-1] - t0))
    # many small markers (one per map block): 5000 blocks x 20 triangles, packed form
    blocks_v, blocks_c = _mesh(5000 * 60, seed=7)
    t0 = time.perf_counter()
    fc.marker_array_bytes_packed(np.arange(5000), np.full(5000, 60), blocks_v, blocks_c)
    blocks_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    fc.marker_array_msg(chunks[:1], frame_id="map", stamp=0.0)
    slow_per_vertex = (time.perf_counter() - t0) / len(chunks[0].vertices)
    build, publish, total = (float(np.median(col)) for col in zip(*rows))
    tri = 100_000
    with capsys.disabled():
        print(f"\n300k vertices / {len(chunks)} markers / {len(b) / 1e6:.1f} MB: build "
              f"{build * 1e3:.1f} ms, publish {publish * 1e3:.1f} ms, build+publish+receive "
              f"{total * 1e3:.1f} ms -> {tri / (build + publish) / 1e6:.2f} M tri/s published, "
              f"{tri / total / 1e6:.2f} M tri/s end to end; slow object path "
              f"{slow_per_vertex * 300_000:.2f} s per 300k vertices; 5000 block markers x 20 "
              f"triangles (packed): build {blocks_build * 1e3:.1f} ms")
