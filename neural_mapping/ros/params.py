"""ROS parameters generated from the typed config (``neural_mapping/config/``).

Two dataclass families declare every parameter, both with :func:`neural_mapping.config.param`:

* the core :class:`~neural_mapping.config.MappingConfig` sections (the single source of
  truth for the mapping core, also used offline and by the CLI flags);
* :class:`~neural_mapping.ros.node_config.NodeConfig`: settings that only exist in the ROS
  node (frames, QoS, pose message type, output rates).  Its names never collide with core
  names.  The node starts from :func:`~neural_mapping.ros.node_config.node_core_defaults`
  (the core defaults, realtime sync).

From them this module derives, with the same machinery:

* :func:`declare_config_parameters` -- one ``declare_parameter`` per field with a
  ``ParameterDescriptor`` (description with unit and range, ``FloatingPointRange`` /
  ``IntegerRange`` from ``lo``/``hi``, ``additional_constraints`` listing choices,
  ``read_only`` unless the field is in :data:`RUNTIME_TUNABLE`).  Overrides (``--ros-args
  -p``, params files, launch) are validated first, all at once, with the config's messages;
* :func:`config_from_node` / :func:`node_config_from_node` -- read back and validate;
* :func:`install_parameter_validation` -- rejects runtime ``set_parameters`` that would make
  the config invalid (e.g. ``depth_min_m >= depth_max_m``) with the reason, and hands valid
  changes to the node (which applies them: ``MappingNode._apply_parameters``);
* :func:`default_yaml_text` / :func:`write_default_yaml` -- ``config/default.yaml``
  (``python -m neural_mapping.ros.params --write config/default.yaml``).

rclpy and rcl_interfaces are imported inside the functions that need them, so
:class:`NodeConfig` and :func:`load_yaml` work without ROS.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from neural_mapping.config import MappingConfig, check_value, coerce, field_type, leaf_fields
from neural_mapping.ros.node_config import (INPUT_QOS, NODE_CORE_DEFAULTS,  # noqa: F401 (API)
                                            POSE_TOPIC_TYPES, RUNTIME_TUNABLE, NodeConfig,
                                            node_core_defaults)

NODE_NAME = "neural_mapping"

# Declared by rclpy itself; never ours.
RESERVED = frozenset({"use_sim_time", "start_type_description_service"})

_INT64 = (-2**63, 2**63 - 1)
_DBL = sys.float_info.max


class ParameterConfigError(ValueError):
    """Invalid parameter values (the message lists every problem and how to set them)."""


def node_leaf_fields() -> List[dataclasses.Field]:
    return list(dataclasses.fields(NodeConfig))


def parameter_fields() -> List[Tuple[str, dataclasses.Field]]:
    """``(section, field)`` of every parameter, core first, in declaration order."""
    out = []
    for sec in dataclasses.fields(MappingConfig):
        for f in dataclasses.fields(sec.default_factory):
            out.append((sec.name, f))
    out += [("node", f) for f in node_leaf_fields()]
    return out


def _check_names() -> None:
    core = {f.name for f in leaf_fields()}
    node = {f.name for f in node_leaf_fields()}
    clash = (core & node) | ((core | node) & RESERVED)
    if clash:
        raise RuntimeError(f"parameter names declared twice: {sorted(clash)}")
    unknown = RUNTIME_TUNABLE - core - node
    if unknown:
        raise RuntimeError(f"RUNTIME_TUNABLE names unknown parameters {sorted(unknown)}")


def _range_text(f: dataclasses.Field, with_unit: bool = True) -> str:
    md = f.metadata
    lo, hi, unit = md.get("lo"), md.get("hi"), md.get("unit") or ""
    u = f" {unit}" if unit and with_unit else ""
    if lo is not None and hi is not None:
        return f"range [{lo}, {hi}]{u}"
    if lo is not None:
        return f">= {lo}{u}"
    if hi is not None:
        return f"<= {hi}{u}"
    return ""


def describe(f: dataclasses.Field) -> str:
    """One-line description: help, unit, range, choices."""
    md = f.metadata
    extra = []
    if md.get("unit"):
        extra.append(f"unit: {md['unit']}")
    r = _range_text(f, with_unit=False)
    if r:
        extra.append(r)
    if md.get("choices") is not None:
        extra.append("one of: " + ", ".join(str(c) for c in md["choices"]))
    return md["help"] + (f" ({'; '.join(extra)})" if extra else "")


def descriptor_for(f: dataclasses.Field, read_only: Optional[bool] = None):
    """``rcl_interfaces/ParameterDescriptor`` of a config field."""
    from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                    ParameterType)
    t = field_type(f)
    md = f.metadata
    d = ParameterDescriptor()
    d.name = f.name
    d.type = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
              float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}[t]
    d.description = describe(f)
    d.read_only = (f.name not in RUNTIME_TUNABLE) if read_only is None else bool(read_only)
    constraints = []
    lo, hi = md.get("lo"), md.get("hi")
    if (lo is not None or hi is not None) and t in (int, float):
        if t is int:
            d.integer_range = [IntegerRange(
                from_value=int(lo) if lo is not None else _INT64[0],
                to_value=int(hi) if hi is not None else _INT64[1], step=0)]
        else:
            d.floating_point_range = [FloatingPointRange(
                from_value=float(lo) if lo is not None else -_DBL,
                to_value=float(hi) if hi is not None else _DBL, step=0.0)]
        constraints.append(_range_text(f))
    if md.get("choices") is not None:
        constraints.append("one of: " + ", ".join(str(c) for c in md["choices"]))
    d.additional_constraints = "; ".join(constraints)
    return d


def _overrides(node) -> Dict[str, Any]:
    """``{name: value}`` of the overrides the node was started with (params files, ``-p``,
    ``parameter_overrides=``).  rclpy keeps them in ``Node._parameter_overrides``."""
    ov = getattr(node, "_parameter_overrides", None) or {}
    return {name: p.value for name, p in ov.items()}


def _type_ok(t: type, v: Any) -> bool:
    if t is bool:
        return isinstance(v, bool)
    if t is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if t is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, str)


def _override_errors(node) -> List[str]:
    ov = _overrides(node)
    errors = []
    for _, f in parameter_fields():
        if f.name not in ov:
            continue
        try:
            v = ov[f.name]
            t = field_type(f)
            if not _type_ok(t, v):
                raise ValueError(f"{f.name}: expected a {t.__name__}, got {v!r} "
                                 f"({type(v).__name__})")
            check_value(f, coerce(f, v))
        except (TypeError, ValueError) as exc:
            errors.append(str(exc))
    return errors


def unknown_overrides(node) -> List[str]:
    """Override names that are no parameter of ours (typos in a params file are otherwise
    silently ignored by rclpy).  ``qos_overrides.*`` and rclpy's own are not reported."""
    known = {f.name for _, f in parameter_fields()} | RESERVED
    return sorted(n for n in _overrides(node) if n not in known and not n.startswith("qos_overrides."))


def _raise(errors: Sequence[str], where: str) -> None:
    raise ParameterConfigError(
        f"invalid parameter value(s) {where}:\n  " + "\n  ".join(errors) +
        "\nFix them in the params file (config/default.yaml, config/sensors/*.yaml) or on the "
        "command line (--ros-args -p name:=value); every parameter is described by "
        "'ros2 param describe /neural_mapping <name>'.")


def declare_config_parameters(node, cfg_defaults: Optional[MappingConfig] = None,
                              node_defaults: Optional[NodeConfig] = None) -> None:
    """Declare every core and node parameter on ``node`` with its descriptor.

    Defaults come from ``cfg_defaults`` / ``node_defaults`` (if None: :func:`node_core_defaults`
    and the :class:`NodeConfig` defaults).
    Overrides are checked first (type, range, choices; all problems reported together), then
    rclpy declares them (and checks the ranges again).  An integer override of a
    floating-point parameter (``voxel_size_m: 1`` in YAML) is accepted as a float.  Unknown
    override names are logged as a warning (see :func:`unknown_overrides`).
    """
    from rclpy.exceptions import ParameterException
    from rclpy.parameter import Parameter
    _check_names()
    cfg_defaults = cfg_defaults if cfg_defaults is not None else node_core_defaults()
    node_defaults = node_defaults if node_defaults is not None else NodeConfig()
    defaults = {**cfg_defaults.to_flat(), **node_defaults.to_flat()}
    ov = getattr(node, "_parameter_overrides", None)
    if ov is not None:  # int -> double for float parameters (YAML writes 1 for 1.0)
        for _, f in parameter_fields():
            p = ov.get(f.name)
            if p is not None and field_type(f) is float and p.type_ == Parameter.Type.INTEGER:
                ov[f.name] = Parameter(f.name, Parameter.Type.DOUBLE, float(p.value))
    errors = _override_errors(node)
    if errors:
        _raise(errors, "given to the node")
    decl = [(f.name, defaults[f.name], descriptor_for(f)) for _, f in parameter_fields()]
    try:
        node.declare_parameters("", decl)
    except ParameterException as exc:
        _raise([str(exc)], "rejected by rclpy")
    unknown = unknown_overrides(node)
    if unknown:
        node.get_logger().warning(f"ignoring unknown parameter(s) {unknown} (typo? known "
                                  "parameters: 'ros2 param list /neural_mapping')")


def _values(node, fields) -> Dict[str, Any]:
    return {f.name: node.get_parameter(f.name).value for f in fields}


def config_from_node(node, base: Optional[MappingConfig] = None) -> MappingConfig:
    """The core config from the node's (declared) parameters, validated."""
    try:
        return MappingConfig.from_flat(_values(node, leaf_fields()), base)
    except ValueError as exc:
        _raise([str(exc)], "for the mapping core")


def node_config_from_node(node) -> NodeConfig:
    try:
        return NodeConfig.from_flat(_values(node, node_leaf_fields()))
    except ValueError as exc:
        _raise([str(exc)], "for the node")


def install_parameter_validation(node, on_change=None):
    """Validate runtime parameter changes as a whole (ranges, choices and cross-field rules
    such as ``depth_min_m < depth_max_m``); on success call ``on_change(cfg, node_cfg,
    changed_names)`` (raising in it rejects the change).  Install it after
    :func:`declare_config_parameters`.  Returns the callback handle."""
    from rcl_interfaces.msg import SetParametersResult

    def callback(params):
        changed = {p.name: p.value for p in params}
        mine = {f.name for _, f in parameter_fields()}
        core_names = {f.name for f in leaf_fields()}
        if not all(node.has_parameter(n) for n in mine):
            # still declaring (rclpy runs these callbacks on declaration too): the complete
            # config is checked by config_from_node afterwards
            return SetParametersResult(successful=True)
        current = {n: node.get_parameter(n).value for n in mine}
        current.update({k: v for k, v in changed.items() if k in mine})
        try:
            cfg = MappingConfig.from_flat({k: v for k, v in current.items() if k in core_names})
            ncfg = NodeConfig.from_flat({k: v for k, v in current.items() if k not in core_names})
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if on_change is not None:
            try:
                on_change(cfg, ncfg, sorted(set(changed) & mine))
            except Exception as exc:  # noqa: BLE001 - reported to the caller of set_parameters
                return SetParametersResult(successful=False, reason=f"{type(exc).__name__}: {exc}")
        return SetParametersResult(successful=True)

    return node.add_on_set_parameters_callback(callback)


def format_effective_config(cfg: MappingConfig, node_cfg: NodeConfig) -> str:
    """Multi-line ``name = value [unit]`` listing (``*`` marks values differing from the
    node's defaults) for the start-up log."""
    values = {**cfg.to_flat(), **node_cfg.to_flat()}
    defaults = {**node_core_defaults().to_flat(), **NodeConfig().to_flat()}
    lines = []
    for sec, f in parameter_fields():
        v = values[f.name]
        unit = f.metadata.get("unit") or ""
        mark = "*" if v != defaults[f.name] else " "
        lines.append(f"{mark} {sec:<11} {f.name} = {v!r}{' ' + unit if unit else ''}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- YAML
def default_yaml_dict(cfg: Optional[MappingConfig] = None,
                      node_cfg: Optional[NodeConfig] = None) -> Dict[str, Any]:
    cfg = cfg if cfg is not None else node_core_defaults()
    node_cfg = node_cfg if node_cfg is not None else NodeConfig()
    return {NODE_NAME: {"ros__parameters": {**cfg.to_flat(), **node_cfg.to_flat()}}}


def _scalar(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...").strip()


def default_yaml_text(cfg: Optional[MappingConfig] = None,
                      node_cfg: Optional[NodeConfig] = None) -> str:
    """``config/default.yaml``: every parameter with its description as a comment."""
    values = default_yaml_dict(cfg, node_cfg)[NODE_NAME]["ros__parameters"]
    out = ["# Default parameters of the neural_mapping node (read without ROS by",
           "# neural_mapping.ros.params.load_yaml).",
           "# Generated from neural_mapping/config/ and neural_mapping/ros/params.py by",
           "#   python -m neural_mapping.ros.params --write config/default.yaml",
           "# Do not edit: test/test_ros_params.py checks that it equals the generated text.",
           "# Override in config/sensors/<sensor>.yaml, your own file, or with -p name:=value.",
           f"{NODE_NAME}:", "  ros__parameters:"]
    last = None
    for sec, f in parameter_fields():
        if sec != last:
            out.append(f"    # ---- {sec}")
            last = sec
        out += ["    # " + line for line in textwrap.wrap(describe(f), 94)]
        out.append(f"    {f.name}: {_scalar(values[f.name])}")
    return "\n".join(out) + "\n"


def write_default_yaml(path) -> None:
    with open(path, "w") as fh:
        fh.write(default_yaml_text())


def split_flat(values: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any], List[str]]:
    """Split ``{name: value}`` into core values, node values and unknown names."""
    core = {f.name for f in leaf_fields()}
    node = {f.name for f in node_leaf_fields()}
    return ({k: v for k, v in values.items() if k in core},
            {k: v for k, v in values.items() if k in node},
            sorted(k for k in values if k not in core and k not in node))


def load_yaml(path, base: Optional[MappingConfig] = None) -> Tuple[MappingConfig, NodeConfig]:
    """Read a ``neural_mapping: ros__parameters:`` (or ``/**:``) file holding core and node
    parameters (e.g. config/default.yaml) without ROS."""
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    for key in (NODE_NAME, "/" + NODE_NAME, "/**"):
        if key in data:
            data = data[key]
            break
    data = data.get("ros__parameters", data)
    core, node, unknown = split_flat(data)
    if unknown:
        raise ValueError(f"{path}: unknown parameter(s) {unknown}")
    return MappingConfig.from_flat(core, base), NodeConfig.from_flat(node)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Print or write the generated default parameters.")
    ap.add_argument("--write", metavar="PATH", help="write the YAML there (else print it)")
    args = ap.parse_args(argv)
    if args.write:
        write_default_yaml(args.write)
    else:
        sys.stdout.write(default_yaml_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
