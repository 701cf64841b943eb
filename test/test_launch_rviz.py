"""Launch files, sensor presets and the RViz config agree with the package.

``launch``/``launch_ros`` are not on PyPI: where they are importable the launch
descriptions are built for real; everywhere the files are checked statically.
"""

import ast
import re
from pathlib import Path

import pytest
import yaml

from neural_mapping.config import MappingConfig
from neural_mapping.ros.params import load_yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"


def _literal_assign(path: Path, name: str):
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in {path}")


def _console_scripts():
    setup = (REPO / "setup.py").read_text()
    return set(re.findall(r'"([\w-]+)\s*=\s*neural_mapping[\w.]*:main"', setup))


def test_launch_files_reference_existing_executables_and_configs():
    scripts = _console_scripts()
    assert "mapping_node" in scripts
    src = (LAUNCH / "mapping.launch.py").read_text()
    for exe in re.findall(r'executable="([\w-]+)"', src):
        assert exe in scripts or exe == "rviz2", exe
    assert "default.yaml" in src and (REPO / "config" / "default.yaml").is_file()
    assert (REPO / "rviz" / "mapping.rviz").is_file() and '"mapping.rviz"' in src
    assert '"fastdds_shm.xml"' in src and (REPO / "config" / "fastdds_shm.xml").is_file()
    assert 'glob("config/*.xml")' in (REPO / "setup.py").read_text()  # installed with the package
    remaps = _literal_assign(LAUNCH / "mapping.launch.py", "SENSOR_REMAPPINGS")
    presets = {p.stem for p in (REPO / "config" / "sensors").glob("*.yaml")}
    assert presets == set(remaps), (presets, set(remaps))
    for sensor, m in remaps.items():
        assert set(m) == {"depth/image", "depth/camera_info", "color/image", "pose"}, sensor
    replay = (LAUNCH / "replay.launch.py").read_text()
    assert '"mapping.launch.py"' in replay and "--clock" in replay
    # every launch argument has a description
    for path in LAUNCH.glob("*.launch.py"):
        calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                 and getattr(n.func, "id", None) == "DeclareLaunchArgument"]
        assert calls, path.name
        for call in calls:
            assert any(k.arg == "description" for k in call.keywords), (path.name, ast.unparse(call)[:60])


@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO / "config" / "sensors").glob("*.yaml")))
def test_sensor_presets_are_valid_parameters(preset):
    data = yaml.safe_load((REPO / "config" / "sensors" / preset).read_text())
    assert list(data) == ["neural_mapping"] and "ros__parameters" in data["neural_mapping"]
    cfg, node_cfg = load_yaml(REPO / "config" / "sensors" / preset)  # validates every value
    assert isinstance(cfg, MappingConfig)


def test_rviz_topics_are_the_nodes_outputs():
    rviz = yaml.safe_load((REPO / "rviz" / "mapping.rviz").read_text())
    vm = rviz["Visualization Manager"]
    assert vm["Global Options"]["Fixed Frame"] == "map"
    topics = {d["Topic"]["Value"]: d for d in vm["Displays"] if "Topic" in d}
    node_src = "".join((REPO / "neural_mapping" / "ros" / f).read_text() for f in ("node.py", "outputs.py"))
    published = {"/neural_mapping/" + t for t in re.findall(r'"~/(\w+)"', node_src)}
    for topic, display in topics.items():
        assert topic in published, f"RViz shows {topic}, which the node does not publish"
        if display["Class"] == "rviz_default_plugins/Map":
            # map outputs are reliable + transient_local (REP-2003): late RViz gets the map
            assert display["Topic"]["Durability Policy"] == "Transient Local"
        if display["Class"] == "rviz_default_plugins/MarkerArray":
            # the mesh is incremental: volatile, deep queue; a new subscriber gets the full set
            assert display["Topic"]["Durability Policy"] == "Volatile"
            assert display["Topic"]["Depth"] >= 100
    for needed in ("/neural_mapping/mesh", "/neural_mapping/path", "/neural_mapping/pose",
                   "/neural_mapping/occupancy", "/neural_mapping/occupied_voxels"):
        assert needed in topics


def test_launch_descriptions_build_where_launch_is_installed():
    pytest.importorskip("launch_ros", reason="launch_ros is not on PyPI; static checks above apply")
    import importlib.util
    for path in LAUNCH.glob("*.launch.py"):
        spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert mod.generate_launch_description().entities
