"""``MappingConfig``: all sections together, with the flat views (YAML, ROS parameters, CLI flags)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Type

import yaml

from neural_mapping.config.fields import check_value, coerce, field_type, flag_name
from neural_mapping.config.neural import NeuralConfig
from neural_mapping.config.sections import (GridConfig, IntegrationConfig, OccupancyConfig, RunConfig,
                                            SystemConfig, TrackingConfig)

SECTIONS: Tuple[Type, ...] = (GridConfig, IntegrationConfig, SystemConfig, TrackingConfig, RunConfig,
                               OccupancyConfig, NeuralConfig)


@dataclass
class MappingConfig:
    grid: GridConfig = field(default_factory=GridConfig)
    integration: IntegrationConfig = field(default_factory=IntegrationConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    occupancy: OccupancyConfig = field(default_factory=OccupancyConfig)
    neural: NeuralConfig = field(default_factory=NeuralConfig)

    # ---- views -------------------------------------------------------------------------
    def sections(self) -> Iterator[Any]:
        for f in dataclasses.fields(self):
            yield getattr(self, f.name)

    def to_flat(self) -> Dict[str, Any]:
        """``{leaf_name: value}`` over all sections (leaf names are unique)."""
        out: Dict[str, Any] = {}
        for sec in self.sections():
            for f in dataclasses.fields(sec):
                out[f.name] = getattr(sec, f.name)
        return out

    def to_yaml_dict(self) -> Dict[str, Any]:
        return {"neural_mapping": {"ros__parameters": self.to_flat()}}

    def dump_yaml(self, path) -> None:
        with open(path, "w") as fh:
            yaml.safe_dump(self.to_yaml_dict(), fh, sort_keys=False)

    @classmethod
    def from_flat(cls, values: Dict[str, Any], base: Optional["MappingConfig"] = None) -> "MappingConfig":
        """Overlay ``{leaf_name: value}`` on ``base`` (defaults), validating every value."""
        cfg = dataclasses.replace(base) if base is not None else cls()
        cfg = cls(**{f.name: dataclasses.replace(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)})
        index = {spec.name: (sec, spec) for sec, spec in cfg._leaves()}
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known keys: {sorted(index)}")
        for name, value in values.items():
            sec, spec = index[name]
            setattr(sec, name, coerce(spec, value))
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path, base: Optional["MappingConfig"] = None) -> "MappingConfig":
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
        if "neural_mapping" in data:
            data = data["neural_mapping"]
        if "ros__parameters" in data:
            data = data["ros__parameters"]
        return cls.from_flat(data, base)

    def _leaves(self) -> Iterator[Tuple[Any, dataclasses.Field]]:
        for sec in self.sections():
            for f in dataclasses.fields(sec):
                yield sec, f

    def validate(self) -> None:
        for sec, f in self._leaves():
            check_value(f, getattr(sec, f.name))
        i = self.integration
        if i.depth_min_m >= i.depth_max_m:
            raise ValueError(f"depth_min_m ({i.depth_min_m}) must be < depth_max_m ({i.depth_max_m})")
        if self.grid.initial_capacity_blocks > self.grid.max_capacity_blocks:
            raise ValueError("initial_capacity_blocks must be <= max_capacity_blocks")
        if self.grid.map_max_blocks > self.grid.max_capacity_blocks:
            raise ValueError("map_max_blocks must be <= max_capacity_blocks")
        o = self.occupancy
        if o.occupancy_min_z_m >= o.occupancy_max_z_m:
            raise ValueError(f"occupancy_min_z_m ({o.occupancy_min_z_m}) must be < "
                             f"occupancy_max_z_m ({o.occupancy_max_z_m})")
        if o.costmap_inscribed_radius_m > o.costmap_inflation_radius_m > 0:
            raise ValueError("costmap_inscribed_radius_m must be <= costmap_inflation_radius_m")
        if o.map_up_source == "vector" and o.map_up_x ** 2 + o.map_up_y ** 2 + o.map_up_z ** 2 < 1e-12:
            raise ValueError("map_up_x/y/z must not all be 0 with map_up_source=vector")

    @property
    def truncation_m(self) -> float:
        return self.integration.truncation_vox * self.grid.voxel_size_m


def leaf_fields() -> List[dataclasses.Field]:
    """All config fields, in declaration order."""
    return [f for sec in SECTIONS for f in dataclasses.fields(sec)]


def add_config_arguments(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """Add one ``--flag`` per config field (default: unset, i.e. keep the config's value)."""
    group = parser.add_argument_group("map configuration (defaults shown; also settable in --config YAML)")
    for f in leaf_fields():
        if f.name in skip:
            continue
        md = f.metadata
        t = field_type(f)
        extra = []
        if md.get("unit"):
            extra.append(f"unit: {md['unit']}")
        if md.get("lo") is not None or md.get("hi") is not None:
            extra.append(f"range: [{md.get('lo')}, {md.get('hi')}]")
        helptext = f"{md['help']} (default: {f.default}" + ("; " + "; ".join(extra) if extra else "") + ")"
        kwargs: Dict[str, Any] = dict(dest=f.name, default=None, help=helptext)
        if md.get("choices") is not None:
            kwargs["choices"] = list(md["choices"])
        if t is bool:
            kwargs["type"] = lambda s, _f=f: coerce(_f, s)
            kwargs["metavar"] = "{true,false}"
        else:
            kwargs["type"] = t
        group.add_argument(flag_name(f.name), **kwargs)


def config_from_args(args: argparse.Namespace, base: Optional[MappingConfig] = None) -> MappingConfig:
    values = {f.name: getattr(args, f.name) for f in leaf_fields()
              if getattr(args, f.name, None) is not None}
    return MappingConfig.from_flat(values, base)
