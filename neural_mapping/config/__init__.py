"""Typed configuration: the single source of truth.

Every tunable is a field of one of the section dataclasses below, declared with
:func:`param` (default, description, units, range or choices).  Field names are
unique across sections and carry their unit (``voxel_size_m``), so the same flat
name is used everywhere a user meets it:

* ROS parameters (``voxel_size_m``), generated with descriptors by ``neural_mapping.ros``;
* ``config/*.yaml`` (``neural_mapping: ros__parameters: {voxel_size_m: ...}``);
* CLI flags (``--voxel-size-m``).

``test/test_config.py`` checks that these views agree.
"""

from neural_mapping.config.fields import check_value, coerce, field_type, flag_name, param
from neural_mapping.config.mapping import (SECTIONS, MappingConfig, add_config_arguments,
                                           config_from_args, leaf_fields)
from neural_mapping.config.neural import NeuralConfig
from neural_mapping.config.sections import (GridConfig, IntegrationConfig, OccupancyConfig, RunConfig,
                                            SystemConfig, TrackingConfig)

__all__ = ["param", "coerce", "check_value", "field_type", "flag_name", "SECTIONS", "MappingConfig",
           "add_config_arguments", "config_from_args", "leaf_fields", "GridConfig",
           "IntegrationConfig", "RunConfig", "SystemConfig", "TrackingConfig", "OccupancyConfig",
           "NeuralConfig"]
