"""Runtime parameter changes of the real node, over DDS with a real parameter client
(``rcl_interfaces/srv/SetParameters`` on ``/neural_mapping/set_parameters``): invalid values
are rejected with their reason and leave the value, valid ones reach the map (the next
integrated frame honours them) and the node's own settings (timer rates)."""

import random

import numpy as np
import pytest
import torch

rclpy = pytest.importorskip("rclpy", reason="rclpy (PyPI ROS 2 wheels) is not installed")
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from _ros_harness import spin_until  # noqa: E402
from neural_mapping.datasets.seven_scenes import SevenScenes  # noqa: E402
from neural_mapping.ros.node import MappingNode  # noqa: E402

NEW_DEPTH_MAX_M = 1.5


@pytest.fixture
def running(tmp_path):
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=random.randint(100, 200))
    overrides = {"pose_source": "external", "voxel_size_m": 0.04, "device": "cpu",
                 "initial_capacity_blocks": 1024, "output_dir": str(tmp_path),
                 "publish_tf": False}
    node = MappingNode(context=ctx, parameter_overrides=[Parameter(k, value=v)
                                                         for k, v in overrides.items()])
    client = rclpy.create_node("param_client", context=ctx, start_parameter_services=False,
                               enable_rosout=False)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    ex.add_node(client)
    cli = client.create_client(SetParameters, "/neural_mapping/set_parameters")
    assert spin_until(ex, cli.service_is_ready), "no /neural_mapping/set_parameters service"

    def set_params(**values):
        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                for k, v in values.items()])
        # Fast DDS may drop the reply of a client whose reader is not matched yet: resend
        # (setting the same values again is idempotent)
        for _ in range(3):
            fut = cli.call_async(req)
            if spin_until(ex, fut.done, 10):
                return fut.result().results
        raise AssertionError("no reply from /neural_mapping/set_parameters")

    yield node, set_params, ex
    node.shutdown()
    ex.shutdown()
    client.destroy_node()
    node.destroy_node()
    rclpy.try_shutdown(context=ctx)


def block_depths_m(node, T_world_cam) -> np.ndarray:
    """Depth (camera z) of the centre of every allocated block."""
    with node.system.read_map() as field:
        grid = field.grid
        coords = grid.active_coords().to(torch.float64).cpu().numpy()
        size = grid.block_size_m
    centres = (coords + 0.5) * size
    R, t = T_world_cam[:3, :3], T_world_cam[:3, 3]
    return (centres - t) @ R[:, 2]


def test_runtime_parameters_over_dds(running, redkitchen):
    node, set_params, ex = running
    assert node.system.backend.depth_max_m == 3.0

    # a valid change of the map's depth range is accepted and reaches the backend
    (r,) = set_params(depth_max_m=NEW_DEPTH_MAX_M)
    assert r.successful, r.reason
    assert node.get_parameter("depth_max_m").value == NEW_DEPTH_MAX_M

    # cross-field rule (depth_min_m < depth_max_m): rejected with the reason, value kept
    (r,) = set_params(depth_min_m=2.0)
    assert not r.successful and "depth_min_m" in r.reason and "depth_max_m" in r.reason, r.reason
    assert node.get_parameter("depth_min_m").value == 0.1
    # out of the typed config's range (rclpy checks the descriptor built from lo/hi)
    (r,) = set_params(depth_max_m=500.0)
    assert not r.successful and r.reason, r.reason
    assert node.get_parameter("depth_max_m").value == NEW_DEPTH_MAX_M
    # structural parameters are read-only
    (r,) = set_params(voxel_size_m=0.02)
    assert not r.successful and "read-only" in r.reason, r.reason

    # the next integrated frame honours the new range: no block beyond depth_max_m (plus
    # the truncation band and half a block diagonal), though the frame sees up to 3.5 m
    frame = SevenScenes(redkitchen, max_frames=1)[0]
    node.system.submit_pose(frame.timestamp, frame.pose)
    assert node.system.submit(frame)
    assert node.system.flush(timeout=120)
    assert node.system.frames_integrated == 1
    assert node.system.backend.depth_max_m == NEW_DEPTH_MAX_M
    assert node.system.backend.depth_min_m == 0.1
    z = block_depths_m(node, frame.pose)
    with node.system.read_map() as field:
        margin = field.truncation_m + np.sqrt(3) / 2 * field.grid.block_size_m
    assert len(z) > 10
    assert z.max() <= NEW_DEPTH_MAX_M + margin, (z.max(), NEW_DEPTH_MAX_M + margin)
    # ... while the frame itself reaches well beyond it
    assert (frame.depth > NEW_DEPTH_MAX_M + margin + 0.5).mean() > 0.2

    # node settings apply too: a timer rate and the mesh byte budget
    (r,) = set_params(mesh_rate_hz=5.0)
    assert r.successful, r.reason
    timer = node.outputs.timers["mesh"].timer
    assert timer is not None and timer.timer_period_ns == 200_000_000
    (r,) = set_params(mesh_max_mbytes_per_update=2.0)
    assert r.successful, r.reason
    assert node.outputs.mesh_state.max_bytes_per_update == 2_000_000
    (r,) = set_params(mesh_rate_hz=0.0)  # off
    assert r.successful and node.outputs.timers["mesh"].timer is None
