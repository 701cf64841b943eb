"""The mapping system: the per-frame step (pose policy -> backend -> next model view) and the
tracking and mapping threads around it."""

from neural_mapping.system.mapping_system import MappingSystem, MapSnapshot, WorkerError
from neural_mapping.system.pose_policy import PosePolicy, PoseResult
from neural_mapping.system.step import Mapper, ModelPrediction

__all__ = ["MappingSystem", "MapSnapshot", "Mapper", "ModelPrediction", "PosePolicy", "PoseResult",
           "WorkerError"]
