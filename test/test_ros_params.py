"""ROS parameters generated from the typed config, declared on a real rclpy node."""

import argparse
import dataclasses
import random
from pathlib import Path

import pytest
import yaml

rclpy = pytest.importorskip("rclpy", reason="rclpy (PyPI ROS 2 wheels) is not installed")
from rclpy.context import Context  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from neural_mapping.config import (MappingConfig, RunConfig, add_config_arguments,  # noqa: E402
                                   leaf_fields)
from neural_mapping.ros import params as P  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ctx():
    c = Context()
    rclpy.init(args=[], context=c, domain_id=random.randint(100, 200))
    yield c
    rclpy.shutdown(context=c)


@pytest.fixture
def make_node(ctx):
    nodes = []

    def make(overrides=(), cli_args=None):
        node = rclpy.create_node(P.NODE_NAME, context=ctx, parameter_overrides=list(overrides),
                                 cli_args=cli_args, use_global_arguments=False,
                                 start_parameter_services=False, enable_rosout=False)
        nodes.append(node)
        return node

    yield make
    for n in nodes:
        n.destroy_node()


def test_names_disjoint_documented_and_tunables_known():
    core = {f.name for f in leaf_fields()}
    node = {f.name for f in P.node_leaf_fields()}
    assert not core & node
    assert not (core | node) & P.RESERVED
    assert P.RUNTIME_TUNABLE <= core | node
    for f in P.node_leaf_fields():
        assert f.metadata.get("help"), f.name
        if f.name.endswith(("_m", "_s", "_hz")):
            assert f.metadata.get("unit"), f"{f.name} names a unit but declares none"
    # the contract names
    for name in ("pose_source", "pose_topic_type", "voxel_size_m", "output_dir", "map_frame",
                 "input_qos", "odom_frame"):
        assert name in core | node
    assert {"PoseStamped", "Odometry", "TransformStamped"} == set(P.POSE_TOPIC_TYPES)


def test_declare_read_back_defaults_and_descriptors(make_node):
    node = make_node()
    P.declare_config_parameters(node)
    # the node's core defaults: the core's own, but realtime sync (a live stream)
    assert P.config_from_node(node) == P.node_core_defaults()
    assert P.node_core_defaults().system.sync_mode == "realtime"
    assert MappingConfig().system.sync_mode == "strict"
    assert P.node_config_from_node(node) == P.NodeConfig()
    declared = set(node.get_parameters_by_prefix("")) - P.RESERVED
    assert declared == {f.name for _, f in P.parameter_fields()}

    d = node.describe_parameter("voxel_size_m")
    assert d.type == Parameter.Type.DOUBLE.value
    assert d.read_only
    assert "unit: m" in d.description and "voxel" in d.description
    (r,) = d.floating_point_range
    assert (r.from_value, r.to_value) == (0.001, 1.0)
    d = node.describe_parameter("block_size_vox")
    assert d.type == Parameter.Type.INTEGER.value
    (r,) = d.integer_range
    assert (r.from_value, r.to_value) == (2, 32)
    d = node.describe_parameter("max_frames")  # one-sided range
    (r,) = d.integer_range
    assert r.from_value == 0 and r.to_value == 2**63 - 1
    d = node.describe_parameter("pose_source")
    assert d.type == Parameter.Type.STRING.value
    assert "external+refine" in d.additional_constraints and "track" in d.additional_constraints
    d = node.describe_parameter("pose_topic_type")
    assert "TransformStamped" in d.additional_constraints
    d = node.describe_parameter("depth_max_m")
    assert not d.read_only
    assert node.describe_parameter("integrate_color").type == Parameter.Type.BOOL.value


def test_declared_defaults_follow_the_given_config(make_node):
    node = make_node()
    base = MappingConfig.from_flat({"voxel_size_m": 0.04, "sync_mode": "strict"})
    P.declare_config_parameters(node, base, P.NodeConfig(map_frame="world"))
    assert P.config_from_node(node) == base
    assert P.node_config_from_node(node).map_frame == "world"


def test_overrides_produce_the_config(make_node):
    node = make_node([
        Parameter("voxel_size_m", value=0.05), Parameter("pose_source", value="track"),
        Parameter("max_frames", value=10), Parameter("integrate_color", value=False),
        Parameter("depth_max_m", value=5),  # an integer for a double (as YAML writes "5")
        Parameter("pose_topic_type", value="Odometry"), Parameter("map_frame", value="world"),
        Parameter("input_qos", value="sensor_data"), Parameter("output_dir", value="/tmp/x"),
    ])
    P.declare_config_parameters(node)
    cfg = P.config_from_node(node)
    assert cfg == MappingConfig.from_flat({"voxel_size_m": 0.05, "pose_source": "track",
                                           "max_frames": 10, "integrate_color": False,
                                           "depth_max_m": 5.0, "output_dir": "/tmp/x"},
                                          P.node_core_defaults())
    assert isinstance(cfg.integration.depth_max_m, float)
    ncfg = P.node_config_from_node(node)
    assert (ncfg.pose_topic_type, ncfg.map_frame, ncfg.input_qos) == ("Odometry", "world",
                                                                       "sensor_data")
    text = P.format_effective_config(cfg, ncfg)
    assert "* grid" in text and "voxel_size_m = 0.05 m" in text
    assert "  grid        block_size_vox = 8 voxels" in text


@pytest.mark.parametrize("overrides, names", [
    ([Parameter("voxel_size_m", value=5.0)], ["voxel_size_m"]),
    ([Parameter("pose_source", value="gps")], ["pose_source"]),
    ([Parameter("pose_topic_type", value="Pose")], ["pose_topic_type"]),
    ([Parameter("block_size_vox", value="big")], ["block_size_vox"]),
    ([Parameter("frame_queue_size", value=0), Parameter("input_qos", value="fast"),
      Parameter("mesh_rate_hz", value=-1.0)], ["frame_queue_size", "input_qos", "mesh_rate_hz"]),
])
def test_invalid_overrides_rejected_with_every_problem_named(make_node, overrides, names):
    node = make_node(overrides)
    with pytest.raises(P.ParameterConfigError) as ei:
        P.declare_config_parameters(node)
    msg = str(ei.value)
    for name in names:
        assert name in msg
    assert "--ros-args -p" in msg


def test_unknown_overrides_reported(make_node):
    node = make_node([Parameter("voxel_size", value=0.05), Parameter("use_sim_time", value=False),
                      Parameter("qos_overrides./x.publisher.depth", value=3)])
    P.declare_config_parameters(node)
    assert P.unknown_overrides(node) == ["voxel_size"]
    assert P.config_from_node(node) == P.node_core_defaults()


def test_cross_field_rules_checked_when_reading_back(make_node):
    node = make_node([Parameter("depth_min_m", value=4.0)])  # > default depth_max_m 3.0
    P.declare_config_parameters(node)
    with pytest.raises(P.ParameterConfigError, match="depth_min_m"):
        P.config_from_node(node)


def test_invalid_default_caught_by_config_from_node(make_node):
    node = make_node()
    bad = MappingConfig(run=RunConfig(pose_source="gps"))  # dataclasses do not validate
    P.declare_config_parameters(node, bad)  # rclpy has no notion of choices
    with pytest.raises(P.ParameterConfigError, match="pose_source='gps' is not one of"):
        P.config_from_node(node)


def test_the_node_installs_runtime_validation(ctx, tmp_path):
    """The production node (not a bare node) validates runtime changes as a whole and applies
    node settings; the DDS round trip and the map side are in test_ros_runtime_params.py."""
    from neural_mapping.ros.node import MappingNode
    node = MappingNode(context=ctx, start_parameter_services=False, enable_rosout=False,
                       parameter_overrides=[Parameter("device", value="cpu"),
                                            Parameter("output_dir", value=str(tmp_path)),
                                            Parameter("publish_tf", value=False)])
    try:
        # read-only (structural) parameter
        (r,) = node.set_parameters([Parameter("voxel_size_m", value=0.05)])
        assert not r.successful and "read-only" in r.reason
        # out of the descriptor's range: rclpy itself refuses
        (r,) = node.set_parameters([Parameter("depth_max_m", value=500.0)])
        assert not r.successful
        # cross-field rule: depth_min_m < depth_max_m, with the reason, the value kept
        (r,) = node.set_parameters([Parameter("depth_min_m", value=3.5)])
        assert not r.successful and "depth_min_m" in r.reason, r.reason
        assert node.get_parameter("depth_min_m").value == 0.1
        # a node setting is applied
        (r,) = node.set_parameters([Parameter("path_max_poses", value=5)])
        assert r.successful, r.reason
        assert node.ncfg.path_max_poses == 5
    finally:
        node.shutdown()
        node.destroy_node()


def test_on_change_sees_the_whole_config_and_can_veto(make_node):
    node = make_node([Parameter("mesh_rate_hz", value=3.0)])
    P.declare_config_parameters(node)
    seen = []
    P.install_parameter_validation(node, lambda cfg, ncfg, names: seen.append((cfg, ncfg, names)))
    assert [r.successful for r in node.set_parameters([Parameter("depth_max_m", value=6.0)])] == [True]
    assert [r.successful for r in node.set_parameters([Parameter("depth_min_m", value=3.5)])] == [True]
    cfg, ncfg, names = seen[-1]
    assert (cfg.integration.depth_min_m, cfg.integration.depth_max_m) == (3.5, 6.0)
    assert ncfg.mesh_rate_hz == 3.0 and names == ["depth_min_m"]
    from rclpy.exceptions import ParameterNotDeclaredException
    with pytest.raises(ParameterNotDeclaredException):
        node.set_parameters([Parameter("not_ours", value=1)])
    # a raise in on_change rejects the change with its message (the node's system.reconfigure)
    node2 = make_node()
    P.declare_config_parameters(node2)

    def veto(cfg, ncfg, names):
        raise ValueError("cannot apply now")
    P.install_parameter_validation(node2, veto)
    (r,) = node2.set_parameters([Parameter("max_weight", value=10.0)])
    assert not r.successful and "cannot apply now" in r.reason
    assert node2.get_parameter("max_weight").value == 64.0


def test_default_yaml_is_the_generated_one():
    path = REPO / "config" / "default.yaml"
    assert path.read_text() == P.default_yaml_text(), (
        "config/default.yaml is out of date: run "
        "`python -m neural_mapping.ros.params --write config/default.yaml`")
    data = yaml.safe_load(path.read_text())
    assert data == P.default_yaml_dict()
    values = data["neural_mapping"]["ros__parameters"]
    assert list(values) == [f.name for _, f in P.parameter_fields()]
    cfg, ncfg = P.load_yaml(path)
    assert cfg == P.node_core_defaults() and ncfg == P.NodeConfig()
    # the core part is what MappingConfig itself writes
    core, node_part, unknown = P.split_flat(values)
    assert core == P.node_core_defaults().to_flat() and node_part == P.NodeConfig().to_flat()
    assert not unknown


def test_write_default_yaml(tmp_path):
    out = tmp_path / "d.yaml"
    P.write_default_yaml(out)
    assert out.read_text() == P.default_yaml_text()
    assert P.main(["--write", str(tmp_path / "e.yaml")]) == 0
    assert (tmp_path / "e.yaml").read_text() == out.read_text()


def test_params_files_through_rcl(make_node, tmp_path):
    """The real rcl YAML parser reads config/default.yaml and a user file on top of it."""
    user = tmp_path / "user.yaml"
    user.write_text("neural_mapping:\n  ros__parameters:\n    voxel_size_m: 0.03\n"
                    "    depth_max_m: 4\n    pose_topic_type: TransformStamped\n"
                    "    camera_frame: cam_optical\n    integrate_color: false\n")
    node = make_node(cli_args=["--ros-args", "--params-file", str(REPO / "config" / "default.yaml"),
                               "--params-file", str(user)])
    P.declare_config_parameters(node)
    cfg, ncfg = P.config_from_node(node), P.node_config_from_node(node)
    assert cfg == MappingConfig.from_flat({"voxel_size_m": 0.03, "depth_max_m": 4.0,
                                           "integrate_color": False}, P.node_core_defaults())
    assert ncfg == P.NodeConfig(pose_topic_type="TransformStamped", camera_frame="cam_optical")


def test_cli_flags_cover_the_core_parameters(make_node):
    node = make_node()
    P.declare_config_parameters(node)
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    dests = {a.dest for a in parser._actions if a.option_strings and a.dest != "help"}
    node_names = {f.name for f in P.node_leaf_fields()}
    ros_core = set(node.get_parameters_by_prefix("")) - P.RESERVED - node_names
    assert dests == ros_core
    # and a value given both ways gives the same config
    # (the node's realtime default is a CLI flag offline)
    args = parser.parse_args(["--voxel-size-m", "0.04", "--pose-source", "track",
                              "--sync-mode", "realtime"])
    from neural_mapping.config import config_from_args
    node2 = make_node([Parameter("voxel_size_m", value=0.04), Parameter("pose_source", value="track")])
    P.declare_config_parameters(node2)
    assert config_from_args(args) == P.config_from_node(node2)


def test_node_config_without_ros():
    cfg = P.NodeConfig.from_flat({"mesh_rate_hz": "2", "publish_tf": "false"})
    assert cfg.mesh_rate_hz == 2.0 and cfg.publish_tf is False
    with pytest.raises(ValueError, match="input_qos"):
        P.NodeConfig.from_flat({"input_qos": "best"})
    with pytest.raises(ValueError, match="unknown node parameter"):
        P.NodeConfig.from_flat({"voxel_size_m": 0.1})
    assert dataclasses.asdict(P.NodeConfig()) == P.NodeConfig().to_flat()
