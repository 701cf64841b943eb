"""Settings of the live web view (:mod:`neural_mapping.view`): one typed dataclass, the single
source of the CLI flags (``--view-port``, ...) and of the node's view (``web_view_port`` picks
the port, the rest are these defaults).  No rerun import here: the view is an optional extra."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict

from neural_mapping.config.fields import coerce, field_type, flag_name, param, check_value


@dataclass
class ViewConfig:
    """The live 3D view in the browser (Rerun's web viewer, served from this machine)."""

    view_port: int = param(9090, "HTTP port of the live view page (http://127.0.0.1:PORT); the "
                           "map data is served over gRPC on view_port + 1 and Rerun's viewer "
                           "files on view_port + 2.", unit="port", lo=1, hi=65533)
    view_hold_s: float = param(0.0, "After an offline run, keep serving the view this long "
                               "(0 = until Ctrl-C).", unit="s", lo=0.0, hi=1e7)
    view_memory_limit_mib: float = param(
        40.0, "Memory the view server keeps for browsers that join late; past it the oldest "
        "per-frame data (images, poses) is dropped and the newest is sent first. The map is "
        "logged static and never dropped.", unit="MiB", lo=1.0, hi=1e6)
    view_rate_hz: float = param(5.0, "How often the view's logging thread takes the newest frame, "
                                "pose and mesh changes (it never waits for the mapping threads "
                                "beyond the mesh update of view_mesh_max_blocks blocks).",
                                unit="Hz", lo=0.1, hi=100.0)
    view_mesh_period_s: float = param(
        1.0, "Period of the mesh updates (a block that changes again within it is logged once; "
        "every logged version is replayed to a browser that joins later).", unit="s", lo=0.0,
        hi=3600.0)
    view_mesh_max_blocks: int = param(128, "Changed blocks re-meshed per logging step (oldest "
                                      "first; the rest wait for the next step).", unit="blocks",
                                      lo=1, hi=10_000_000)
    view_image_width_px: int = param(320, "Color and depth images are downsampled to at most this "
                                     "width before logging.", unit="px", lo=16, hi=4096)
    view_occupancy_period_s: float = param(2.0, "Period of the 2D occupancy image (computed from "
                                           "a map snapshot, only when the map changed).",
                                           unit="s", lo=0.1, hi=3600.0)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            check_value(f, getattr(self, f.name))

    def to_flat(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_flat(cls, values: Dict[str, Any]) -> "ViewConfig":
        index = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise ValueError(f"unknown view setting(s) {unknown}; known: {sorted(index)}")
        cfg = cls(**{k: coerce(index[k], v) for k, v in values.items()})
        cfg.validate()
        return cfg


def add_view_arguments(parser: argparse.ArgumentParser) -> None:
    """``--view`` and one ``--view-*`` flag per :class:`ViewConfig` field."""
    g = parser.add_argument_group("live view (needs: pip install neural_mapping[view])")
    g.add_argument("--view", action="store_true",
                   help="serve a live 3D view of the run in the browser (Rerun web viewer, "
                        "offline) and print its URL")
    for f in dataclasses.fields(ViewConfig):
        md = f.metadata
        unit = f"; unit: {md['unit']}" if md.get("unit") else ""
        g.add_argument(flag_name(f.name), dest=f.name, type=field_type(f), default=None,
                       metavar=f.name.rsplit("_", 1)[-1].upper() if md.get("unit") else None,
                       help=f"{md['help']} (default: {f.default}{unit})")


def view_config_from_args(args: argparse.Namespace) -> ViewConfig:
    """The :class:`ViewConfig` of the parsed flags (unset flags keep the defaults)."""
    return ViewConfig.from_flat({f.name: getattr(args, f.name) for f in dataclasses.fields(ViewConfig)
                                 if getattr(args, f.name, None) is not None})
