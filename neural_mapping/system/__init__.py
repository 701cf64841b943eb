"""The mapping system: pose policy, tracking and mapping threads around one map backend."""

from neural_mapping.system.mapping_system import MappingSystem, MapSnapshot, PoseResult, WorkerError

__all__ = ["MappingSystem", "MapSnapshot", "PoseResult", "WorkerError"]
