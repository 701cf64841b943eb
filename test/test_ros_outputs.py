"""Map outputs over real DDS (in one process): incremental mesh markers, occupancy, costmap,
ESDF slice, occupied voxels, and their services."""

import random
import threading

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from nav_msgs.msg import OccupancyGrid  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from _ros_harness import spin_until  # noqa: E402
from neural_mapping.config import MappingConfig  # noqa: E402
from neural_mapping.datasets import SyntheticRoom  # noqa: E402
from neural_mapping.products import occupancy as occ  # noqa: E402
from neural_mapping.products.occupancy import load_nav2_map  # noqa: E402
from neural_mapping.ros.fast_cdr import pointcloud2_to_array  # noqa: E402
from neural_mapping.ros.outputs import MAP_QOS, MESH_QOS, MapOutputs  # noqa: E402
from neural_mapping.ros.params import NodeConfig  # noqa: E402
from neural_mapping.system.mapping_system import MappingSystem  # noqa: E402


def feed(system, room, frames):
    for i in frames:
        f = room[i]
        system.submit_pose(f.timestamp, f.pose)
        system.submit(f)
    assert system.flush(timeout=120)


class MarkerStore:
    """What RViz keeps: markers by (ns, id) after ADD/DELETE/DELETEALL."""

    def __init__(self):
        self.markers = {}
        self.messages = []

    def __call__(self, msg: MarkerArray):
        self.messages.append(msg)
        for m in msg.markers:
            if m.action == Marker.DELETEALL:
                self.markers.clear()
            elif m.action == Marker.DELETE:
                self.markers.pop((m.ns, m.id), None)
            else:
                self.markers[(m.ns, m.id)] = m

    def triangles(self):
        return sum(len(m.points) for m in self.markers.values()) // 3


@pytest.fixture
def setup(tmp_path):
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=random.randint(100, 200))
    cfg = MappingConfig.from_flat({"voxel_size_m": 0.04, "sync_mode": "strict", "device": "cpu",
                                   "pose_source": "external", "initial_capacity_blocks": 512})
    ncfg = NodeConfig.from_flat({"mesh_rate_hz": 20.0, "occupancy_rate_hz": 20.0,
                                 "occupied_voxels_rate_hz": 20.0})
    system = MappingSystem(cfg)
    node = rclpy.create_node("neural_mapping", context=ctx)
    outputs = MapOutputs(node, system, cfg, ncfg, tmp_path)
    client = rclpy.create_node("listener", context=ctx)
    from rclpy.executors import SingleThreadedExecutor
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    ex.add_node(client)
    yield system, outputs, client, ex
    system.close()
    ex.shutdown()
    node.destroy_node()
    client.destroy_node()
    rclpy.try_shutdown(context=ctx)


def test_map_outputs_over_dds(setup, tmp_path):
    system, outputs, client, ex = setup
    room = SyntheticRoom(num_frames=240, width=320, height=240, seed=0)
    feed(system, room, range(0, 20))

    store = MarkerStore()
    grids, costs, esdf, voxels = [], [], [], []
    client.create_subscription(MarkerArray, "/neural_mapping/mesh", store, MESH_QOS)
    client.create_subscription(OccupancyGrid, "/neural_mapping/occupancy", grids.append, MAP_QOS)
    client.create_subscription(OccupancyGrid, "/neural_mapping/costmap", costs.append, MAP_QOS)
    client.create_subscription(PointCloud2, "/neural_mapping/esdf_slice", esdf.append, MAP_QOS)
    client.create_subscription(PointCloud2, "/neural_mapping/occupied_voxels", voxels.append, MAP_QOS)
    assert spin_until(ex, lambda: store.messages and grids and costs and esdf and voxels), \
        (len(store.messages), len(grids), len(costs), len(esdf), len(voxels))

    # a new subscriber gets the whole mesh: DELETEALL first, then one marker per block
    assert store.messages[0].markers[0].action == Marker.DELETEALL
    assert spin_until(ex, lambda: not outputs.mesh_state.has_pending(), 30)
    full = system.mesh()
    assert store.triangles() == len(full.triangles)
    ids = [m.id for m in store.markers.values()]
    assert len(ids) == len(set(ids)) and all(len(m.points) == len(m.colors) for m in store.markers.values())

    # more frames: only re-meshed blocks travel, and the store still equals the full mesh
    n_before = len(store.messages)
    feed(system, room, range(20, 40))
    assert spin_until(ex, lambda: len(store.messages) > n_before and not outputs.mesh_state.has_pending())
    incremental = store.messages[-1]
    assert all(m.action != Marker.DELETEALL for m in incremental.markers)
    assert len(incremental.markers) < len(store.markers)  # not the whole map again
    assert store.triangles() == len(system.mesh().triangles)

    # occupancy: consistent metadata and values, the costmap and ESDF agree with it
    g = grids[-1]
    assert g.header.frame_id == "map" and g.info.resolution == pytest.approx(0.04)
    data = np.frombuffer(bytes(g.data), np.int8).reshape(g.info.height, g.info.width)
    assert set(np.unique(data)) <= {-1, 0, 100} and (data == 100).any() and (data == 0).any()
    assert g.info.origin.orientation.w == 1.0
    c = costs[-1]
    cost = np.frombuffer(bytes(c.data), np.int8).reshape(c.info.height, c.info.width)
    assert cost.shape == data.shape and (cost[data == 100] == 100).all() and (cost[data == -1] == -1).all()
    e = pointcloud2_to_array(esdf[-1])
    assert set(e) >= {"x", "y", "z", "distance"} and (e["distance"] >= 0).all()
    v = pointcloud2_to_array(voxels[-1])
    assert len(v["x"]) > 100

    # services
    def call(name):
        # a fresh client's reply reader may not be discovered by the server yet (Fast DDS then
        # drops the response): resend an unanswered call; these services are idempotent
        cli = client.create_client(Trigger, name)
        assert spin_until(ex, cli.service_is_ready, 10)
        for _ in range(3):
            fut = cli.call_async(Trigger.Request())
            if spin_until(ex, fut.done, 10):
                return fut.result()
        raise AssertionError(f"{name}: no response")

    res = call("/neural_mapping/save_occupancy")
    assert res.success, res.message
    saved = load_nav2_map(tmp_path / "occupancy.yaml")
    assert saved.resolution_m == pytest.approx(0.04) and (saved.data == 100).any()
    n_before = len(store.messages)
    assert call("/neural_mapping/republish_mesh").success
    assert spin_until(ex, lambda: len(store.messages) > n_before)
    assert store.messages[n_before].markers[0].action == Marker.DELETEALL
    assert spin_until(ex, lambda: not outputs.mesh_state.has_pending(), 30)
    assert store.triangles() == len(system.mesh().triangles)


def _lock_free(system) -> bool:
    """Whether another thread can take the map lock right now (the mapping thread could)."""
    got = []

    def take():
        ok = system.map_lock.acquire(timeout=2.0)
        got.append(ok)
        if ok:
            system.map_lock.release()
    t = threading.Thread(target=take)
    t.start()
    t.join()
    return got[0]


def test_heavy_outputs_work_on_snapshots_outside_the_map_lock(setup, monkeypatch):
    """Occupancy (+ costmap, ESDF) and occupied voxels are computed from a private copy of
    the map while the mapping thread stays free to integrate, and only once per map version."""
    system, outputs, client, ex = setup
    room = SyntheticRoom(num_frames=240, width=320, height=240, seed=0)
    feed(system, room, range(0, 10))
    calls = []
    real_update, real_voxels = occ.OccupancyMap2D.update, occ.occupied_voxels

    def spy(kind, field):
        with system.read_map() as live:
            private = field.sdf.data_ptr() != live.sdf.data_ptr()
        calls.append((kind, _lock_free(system), private, system.version))

    def update(self, field, *a, **kw):
        spy("occupancy", field)
        return real_update(self, field, *a, **kw)

    def voxels(field, *a, **kw):
        spy("voxels", field)
        return real_voxels(field, *a, **kw)
    monkeypatch.setattr(occ.OccupancyMap2D, "update", update)
    monkeypatch.setattr(occ, "occupied_voxels", voxels)

    grids, voxel_msgs, costs = [], [], []
    client.create_subscription(OccupancyGrid, "/neural_mapping/occupancy", grids.append, MAP_QOS)
    client.create_subscription(OccupancyGrid, "/neural_mapping/costmap", costs.append, MAP_QOS)
    client.create_subscription(PointCloud2, "/neural_mapping/occupied_voxels", voxel_msgs.append, MAP_QOS)
    assert spin_until(ex, lambda: grids and costs and voxel_msgs)
    spin_until(ex, lambda: False, 1.0)  # 20 more timer ticks each, the map unchanged
    assert sorted(k for k, *_ in calls) == ["occupancy", "voxels"], calls  # once per version
    assert all(free and private for _, free, private, _ in calls), calls

    feed(system, room, range(10, 14))  # a new version: computed again
    assert spin_until(ex, lambda: len(calls) == 4)
    spin_until(ex, lambda: False, 0.5)
    assert len(calls) == 4 and all(free and private for _, free, private, _ in calls), calls
