"""The typed config is the single source of truth: its views must agree."""

import argparse
import dataclasses

import pytest

from neural_mapping.config import (MappingConfig, add_config_arguments, config_from_args,
                                   flag_name, leaf_fields)


def test_leaf_names_unique_and_carry_metadata():
    names = [f.name for f in leaf_fields()]
    assert len(names) == len(set(names))
    for f in leaf_fields():
        assert f.metadata.get("help"), f"{f.name} has no description"
        if f.name.endswith("_m") or f.name.endswith("_hz") or f.name.endswith("_s"):
            assert f.metadata.get("unit"), f"{f.name} names a unit but declares none"


def test_defaults_validate_and_roundtrip_yaml(tmp_path):
    cfg = MappingConfig()
    cfg.validate()
    path = tmp_path / "c.yaml"
    cfg.dump_yaml(path)
    assert MappingConfig.from_yaml(path) == cfg
    assert set(cfg.to_flat()) == {f.name for f in leaf_fields()}


def test_overrides_and_errors():
    cfg = MappingConfig.from_flat({"voxel_size_m": 0.05, "pose_source": "track", "max_frames": 10})
    assert cfg.grid.voxel_size_m == 0.05 and cfg.run.pose_source == "track"
    assert cfg.truncation_m == pytest.approx(cfg.integration.truncation_vox * 0.05)
    with pytest.raises(ValueError, match="voxel_size_m"):
        MappingConfig.from_flat({"voxel_size_m": -1.0})
    with pytest.raises(ValueError, match="pose_source"):
        MappingConfig.from_flat({"pose_source": "gps"})
    with pytest.raises(ValueError, match="unknown config key"):
        MappingConfig.from_flat({"voxel_size": 0.02})
    with pytest.raises(ValueError, match="depth_min_m"):
        MappingConfig.from_flat({"depth_min_m": 5.0, "depth_max_m": 3.0})
    with pytest.raises(ValueError, match="integer"):
        MappingConfig.from_flat({"max_frames": 1.5})
    # the base config is not mutated by an overlay
    base = MappingConfig()
    MappingConfig.from_flat({"voxel_size_m": 0.1}, base)
    assert base.grid.voxel_size_m == MappingConfig().grid.voxel_size_m


def test_cli_flags_cover_every_field():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    flags = {a for action in parser._actions for a in action.option_strings}
    for f in leaf_fields():
        assert flag_name(f.name) in flags
    args = parser.parse_args(["--voxel-size-m", "0.04", "--integrate-color", "false",
                              "--pose-source", "external+refine"])
    cfg = config_from_args(args)
    assert cfg.grid.voxel_size_m == 0.04
    assert cfg.integration.integrate_color is False
    assert cfg.run.pose_source == "external+refine"
    # unset flags keep the defaults
    assert cfg.integration.depth_max_m == MappingConfig().integration.depth_max_m
    with pytest.raises(SystemExit):
        parser.parse_args(["--pose-source", "gps"])


def test_sections_are_dataclasses():
    for sec in MappingConfig().sections():
        assert dataclasses.is_dataclass(sec)
