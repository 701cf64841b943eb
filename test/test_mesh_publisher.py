"""~/mesh publishing state: MeshUpdates -> serialized MarkerArray bytes, checked by deserializing
with rclpy (ids, points, colors, deletes), against the slow object-built message, within the
byte budget, replayed into a subscriber-side marker store that must equal the current mesh,
and received over DDS."""


import numpy as np
import pytest
import torch

rclpy = pytest.importorskip("rclpy", reason="rclpy (PyPI ROS 2 wheels) is not installed")
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from _ros_harness import ros_node, spin_until  # noqa: E402
from neural_mapping.grid.field import FIELD_ATTRIBUTES, VoxelField  # noqa: E402
from neural_mapping.grid.voxel_grid import VoxelBlockGrid  # noqa: E402
from neural_mapping.products.meshing import MeshCache, MeshUpdate  # noqa: E402
from neural_mapping.ros import fast_cdr as fc  # noqa: E402
from neural_mapping.ros.mesh_publisher import MeshPublisherState  # noqa: E402
from neural_mapping.grid.voxel_grid import voxel_offsets  # noqa: E402


# ------------------------------------------------------------------ scene
TRUNC_M = 0.15


def make_field(vs=0.05, B=4, half=0.8) -> VoxelField:
    grid = VoxelBlockGrid(vs, B, attributes=FIELD_ATTRIBUTES, device="cpu", initial_capacity=64)
    n = int(np.ceil(half / (vs * B)))
    r = np.arange(-n, n)
    coords = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    grid.allocate(torch.as_tensor(coords, dtype=torch.int32))
    return VoxelField.of_grid(grid, TRUNC_M)


def write_sphere(field, centre, radius):
    B, vs = field.block_size, field.voxel_size_m
    vox = field.grid.active_coords().to(torch.int64)[:, None, :] * B + voxel_offsets(B, "cpu")[None]
    p = (vox.to(torch.float32) + 0.5) * vs
    d = (p - torch.tensor(centre, dtype=torch.float32)).norm(dim=-1) - radius
    n = field.num_blocks
    field.sdf[:n] = (d / field.truncation_m).clamp(-1, 1).reshape(n, B, B, B)
    field.weight[:n] = 1.0
    field.color[:n] = ((p * 131.0) % 255.0).reshape(n, B, B, B, 3)


def remesh(cache, field, centre, radius):
    write_sphere(field, centre, radius)
    cache.mark_all_dirty(field)
    return cache.update(field)


class Subscriber:
    """What a marker display holds: (ns, id) -> (points, colors), applying ADD / DELETE /
    DELETEALL in message order."""

    def __init__(self):
        self.markers = {}
        self.messages = 0

    def receive(self, data: bytes):
        msg = deserialize_message(data, MarkerArray)
        self.messages += 1
        for m in msg.markers:
            if m.action == Marker.DELETEALL:
                self.markers.clear()
            elif m.action == Marker.DELETE:
                assert (m.ns, m.id) in self.markers, f"DELETE of unknown marker {m.id}"
                del self.markers[(m.ns, m.id)]
            else:
                assert m.action == Marker.ADD and m.type == Marker.TRIANGLE_LIST
                self.markers[(m.ns, m.id)] = (points(m), colors(m))
        return msg


def points(m):
    return np.array([[p.x, p.y, p.z] for p in m.points]).reshape(-1, 3)


def colors(m):
    return np.array([[c.r, c.g, c.b, c.a] for c in m.colors], np.float32).reshape(-1, 4)


def assert_subscriber_matches(sub: Subscriber, state: MeshPublisherState, cache: MeshCache, ns="mesh"):
    pieces = cache.pieces()
    assert set(sub.markers) == {(ns, state.marker_id(k)) for k in pieces}
    for k, piece in pieces.items():
        pts, cols = sub.markers[(ns, state.marker_id(k))]
        np.testing.assert_array_equal(pts, piece.vertices.astype(np.float64))
        np.testing.assert_allclose(cols[:, :3], piece.colors / 255.0, atol=1e-7)
        assert (cols[:, 3] == 1.0).all()


# ------------------------------------------------------------------ tests
def test_update_to_markers_fields_and_slow_path_equality():
    field = make_field()
    cache = MeshCache()
    upd = remesh(cache, field, (0.0, 0.05, 0.0), 0.45)
    state = MeshPublisherState(frame_id="odom_map", ns="mesh", max_bytes_per_update=None)
    state.apply(upd)
    assert state.pending_blocks == len(upd.changed) == len(cache) > 20
    data = state.next_message(stamp=12.25)
    assert isinstance(data, bytes) and state.next_message() is None and not state.has_pending()
    msg = deserialize_message(data, MarkerArray)
    assert len(msg.markers) == len(upd.changed)
    ids = [state.marker_id(k) for k in upd.changed]
    assert sorted(ids) == list(range(len(ids)))  # dense ids, first sight
    for m, (k, piece) in zip(msg.markers, upd.changed.items()):
        assert (m.ns, m.id, m.type, m.action) == ("mesh", state.marker_id(k), Marker.TRIANGLE_LIST,
                                                  Marker.ADD)
        assert m.header.frame_id == "odom_map"
        assert (m.header.stamp.sec, m.header.stamp.nanosec) == (12, 250_000_000)
        assert m.pose.orientation.w == 1.0 and m.scale.x == 1.0
        np.testing.assert_array_equal(points(m), piece.vertices.astype(np.float64))
        np.testing.assert_allclose(colors(m)[:, :3], piece.colors / 255.0, atol=1e-7)
    # the same content built from Point/ColorRGBA objects (the slow reference)
    chunks = [fc.MeshChunk(state.marker_id(k), p.vertices, p.colors) for k, p in upd.changed.items()]
    slow = fc.marker_array_msg(chunks, frame_id="odom_map", stamp=12.25, ns="mesh")
    assert msg == deserialize_message(serialize_message(slow), MarkerArray)
    assert state.last_info["markers"] == len(chunks) and state.last_info["bytes"] == len(data)
    assert state.message_bytes_bound(list(upd.changed.values())) >= len(data)


def test_deletes_budget_oldest_first_and_replay_equals_the_cache():
    field = make_field()
    cache = MeshCache()
    state = MeshPublisherState(max_bytes_per_update=40_000)
    sub = Subscriber()
    sent_order = []
    sizes = []
    centres = [(-0.3, 0.0, 0.0), (0.3, 0.1, 0.0), (0.3, 0.1, 0.0), (0.0, -0.3, 0.2), (0.1, 0.0, 0.0)]
    first_seen = {}
    saw_delete = False
    for step, c in enumerate(centres):
        upd = remesh(cache, field, c, 0.35 if step != 2 else 0.25)
        state.apply(upd)
        for k in upd.changed:
            first_seen.setdefault(k, step)
        # drain this update (and whatever is left) within the budget, checking each message
        while True:
            data = state.next_message(stamp=float(step))
            if data is None:
                break
            sizes.append(len(data))
            msg = sub.receive(data)
            dels = [m for m in msg.markers if m.action == Marker.DELETE]
            adds = [m for m in msg.markers if m.action == Marker.ADD]
            saw_delete |= bool(dels)
            # deletes come first, then adds
            assert [m.action for m in msg.markers] == [Marker.DELETE] * len(dels) + [Marker.ADD] * len(adds)
            if len(msg.markers) > 1:
                assert len(data) <= 40_000
            sent_order.extend(m.id for m in adds)
        assert_subscriber_matches(sub, state, cache)
    assert saw_delete and len(sizes) > 2 * len(centres)  # the budget split the updates
    assert max(sizes) <= 40_000


def test_budget_keeps_the_rest_pending_in_age_order():
    field = make_field()
    cache = MeshCache()
    state = MeshPublisherState(max_bytes_per_update=30_000)
    upd1 = remesh(cache, field, (-0.2, 0.0, 0.0), 0.3)
    state.apply(upd1)
    first = deserialize_message(state.next_message(), MarkerArray)
    n1 = len(first.markers)
    assert 0 < n1 < len(upd1.changed) and state.pending_blocks == len(upd1.changed) - n1
    # a second update: blocks still pending keep their place (and take the newest triangles)
    upd2 = remesh(cache, field, (-0.2, 0.0, 0.05), 0.3)
    state.apply(upd2)
    order_expected = [state.marker_id(k) for k in list(upd1.changed)[n1:]]
    order_expected = [i for i in order_expected if i in {state.marker_id(k) for k in cache.pieces()}]
    got = []
    sub = Subscriber()
    sub.receive(serialize_message(first))
    while (data := state.next_message()) is not None:
        got.extend(m.id for m in sub.receive(data).markers if m.action == Marker.ADD)
    still = [i for i in got if i in set(order_expected)]
    assert still[:len(order_expected)] == order_expected[:len(still)]
    assert_subscriber_matches(sub, state, cache)
    # a block changed again while pending keeps its place in the queue
    q = MeshPublisherState(max_bytes_per_update=None)
    keys = list(upd2.changed)
    q.apply(MeshUpdate(changed={k: upd2.changed[k] for k in keys[:4]}))
    q.apply(MeshUpdate(changed={keys[0]: upd1.changed.get(keys[0], upd2.changed[keys[0]]),
                                keys[5]: upd2.changed[keys[5]]}))
    ids = [m.id for m in deserialize_message(q.next_message(), MarkerArray).markers]
    assert ids == [q.marker_id(k) for k in keys[:4] + [keys[5]]]
    # a single block larger than the whole budget still goes out (alone)
    tiny = MeshPublisherState(max_bytes_per_update=10)
    tiny.apply(upd2)
    m = deserialize_message(tiny.next_message(), MarkerArray)
    assert len(m.markers) == 1


def test_full_for_a_new_subscriber_and_republish():
    field = make_field()
    cache = MeshCache()
    state = MeshPublisherState(max_bytes_per_update=50_000)
    old_sub = Subscriber()
    for c in [(0.0, 0.0, 0.0), (0.2, 0.0, 0.0)]:
        state.apply(remesh(cache, field, c, 0.4))
        old_sub.receive(state.next_message())  # only part of it, the rest pending
    assert state.has_pending()
    # a new subscriber gets everything in messages of at most 60 kB, DELETEALL first
    msgs = state.full(stamp=3.0, max_bytes=60_000)
    assert len(msgs) > 1 and all(len(b) <= 60_000 for b in msgs)
    new_sub = Subscriber()
    first = deserialize_message(msgs[0], MarkerArray)
    assert first.markers[0].action == Marker.DELETEALL
    actions = [m.action for b in msgs for m in deserialize_message(b, MarkerArray).markers]
    assert actions.count(Marker.DELETEALL) == 1
    for b in msgs:
        new_sub.receive(b)
        old_sub.receive(b)
    assert_subscriber_matches(new_sub, state, cache)
    assert_subscriber_matches(old_sub, state, cache)
    assert not state.has_pending()
    # reset: every published block deleted, and the empty map's full() is a lone DELETEALL
    field.grid.reset()  # new (empty) storage: a new field on it
    field = VoxelField.of_grid(field.grid, TRUNC_M)
    cache.invalidate(field)
    upd = cache.update(field)
    state.apply(upd)
    data = state.next_message()
    msg = new_sub.receive(data)
    assert {m.action for m in msg.markers} == {Marker.DELETE} and len(msg.markers) == len(upd.emptied)
    assert new_sub.markers == {}
    (only,) = state.full()
    assert [m.action for m in deserialize_message(only, MarkerArray).markers] == [Marker.DELETEALL]


def test_emptied_before_published_sends_no_delete():
    state = MeshPublisherState(max_bytes_per_update=None)
    field = make_field()
    cache = MeshCache()
    upd = remesh(cache, field, (0.0, 0.0, 0.0), 0.3)
    state.apply(upd)
    keys = list(upd.changed)
    state.apply(MeshUpdate(emptied=keys[:3]))
    msg = deserialize_message(state.next_message(), MarkerArray)
    assert all(m.action == Marker.ADD for m in msg.markers)
    assert len(msg.markers) == len(keys) - 3
    state.apply(MeshUpdate(emptied=keys[3:5]))
    msg = deserialize_message(state.next_message(), MarkerArray)
    assert [(m.action, m.id) for m in msg.markers] == [(Marker.DELETE, state.marker_id(k)) for k in keys[3:5]]


def test_mesh_bytes_over_dds():
    field = make_field()
    cache = MeshCache()
    state = MeshPublisherState(max_bytes_per_update=None)
    state.apply(remesh(cache, field, (0.0, 0.0, 0.0), 0.4))
    data = state.next_message(stamp=1.0)
    with ros_node("mesh_publisher_test") as (node, ex):
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
        got = []
        pub = node.create_publisher(MarkerArray, "mesh_test", qos)
        node.create_subscription(MarkerArray, "mesh_test", got.append, qos)
        assert spin_until(ex, lambda: pub.get_subscription_count() == 1), "DDS discovery failed"
        pub.publish(data)
        assert spin_until(ex, lambda: got), "nothing received"
        sub = Subscriber()
        sub.receive(serialize_message(got[0]))
        assert_subscriber_matches(sub, state, cache)
        assert got[0] == deserialize_message(data, MarkerArray)
