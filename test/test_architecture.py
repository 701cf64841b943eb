"""The layout rules, checked on the source (an import-linter in a few lines of ``ast``).

* The core (``neural_mapping/`` outside ``ros/``) never imports rclpy, ROS client or message
  packages: it is a library that runs without ROS.
* Only the TSDF backend knows TSDF internals: nothing outside ``backends/`` imports
  ``neural_mapping.backends.tsdf`` (other backends may compose it through its package),
  nothing outside ``grid/`` and ``backends/`` subscripts a grid's attribute pools
  (``x.attrs[...]``): products read a ``VoxelField``; and no other backend reads the TSDF's
  pools (``tsdf``, ``weight``, ``color``) by name.
* No module imports another module's private names (``from a import _b``), and nothing
  outside ``grid/`` touches a grid's private index (``._index``...).
* Source files stay readable: at most ~400 lines.
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "neural_mapping"
ROS_PREFIXES = ("rclpy", "rcl_interfaces", "builtin_interfaces", "tf2_ros", "tf2_msgs", "cv_bridge",
                "message_filters", "rosbag2_py", "launch", "launch_ros", "sensor_msgs_py",
                "ament_index_python")


TSDF_POOLS = ("tsdf", "weight", "color")  # the TSDF backend's storage (a backend reads its own)


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        yield rel, ast.parse(path.read_text(), filename=str(path))


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name, None
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                yield node, node.module, a.name


def _is_ros(module: str) -> bool:
    top = module.split(".")[0]
    return top in ROS_PREFIXES or top.endswith("_msgs") or top.endswith("_srvs")


def test_core_never_imports_ros():
    bad = [f"{rel}:{node.lineno} imports {mod}" for rel, tree in _modules() if rel.parts[0] != "ros"
           for node, mod, _ in _imports(tree) if _is_ros(mod)]
    assert not bad, bad


def test_only_the_tsdf_backend_knows_tsdf_internals():
    bad = []
    for rel, tree in _modules():
        inside_backends = rel.parts[0] == "backends"
        for node, mod, _ in _imports(tree):
            if mod.startswith("neural_mapping.backends.tsdf") and not (
                    rel.parts[:2] == ("backends", "tsdf")
                    or (inside_backends and mod == "neural_mapping.backends.tsdf")):
                bad.append(f"{rel}:{node.lineno} imports {mod}")
        if rel.parts[0] == "grid" or rel.parts[:2] == ("backends", "tsdf"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) \
                    and node.value.attr == "attrs" and (
                        not inside_backends or (isinstance(node.slice, ast.Constant)
                                                and node.slice.value in TSDF_POOLS)):
                bad.append(f"{rel}:{node.lineno} reads a grid attribute pool (use a VoxelField)")
    assert not bad, bad


def test_no_private_names_across_modules():
    bad = []
    for rel, tree in _modules():
        for node, mod, name in _imports(tree):
            if name and name.startswith("_") and mod.startswith("neural_mapping"):
                bad.append(f"{rel}:{node.lineno} imports {mod}.{name}")
        if rel.parts[0] == "grid":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_index") and not (
                    isinstance(node.value, ast.Name) and node.value.id == "self"):
                bad.append(f"{rel}:{node.lineno} touches a grid's private .{node.attr}")
    assert not bad, bad


@pytest.mark.parametrize("limit", [420])
def test_source_files_stay_short(limit):
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > limit}
    assert not long, long
