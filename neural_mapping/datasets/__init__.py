"""RGB-D dataset loaders and the synthetic generator.

:func:`open_dataset` detects the layout of a folder (or takes the name
``synthetic``) and returns a :class:`Dataset`: ``len(ds)``, ``ds[i]`` ->
:class:`~neural_mapping.types.RGBDFrame` with ground-truth ``.pose``
(``T_world_cam``), ``.timestamp`` and ``.index``; ``ds.intrinsics``, ``ds.name``,
``ds.has_ground_truth``, ``ds.timestamps``, ``ds.gt_poses()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from neural_mapping.datasets.base import Dataset, DatasetError, select_indices
from neural_mapping.datasets.rosbag import LAYOUT_HELP as _ROSBAG_LAYOUT
from neural_mapping.datasets.rosbag import RosbagDataset, is_rosbag
from neural_mapping.datasets.seven_scenes import SevenScenes, is_seven_scenes
from neural_mapping.datasets.synthetic import SyntheticRoom
from neural_mapping.datasets.tum import TUMRGBD, is_tum

__all__ = ["Dataset", "DatasetError", "SevenScenes", "TUMRGBD", "SyntheticRoom", "RosbagDataset",
           "open_dataset",
           "detect_format", "SUPPORTED_LAYOUTS", "select_indices"]

SUPPORTED_LAYOUTS = """\
  synthetic      the word 'synthetic': a procedural furnished room rendered with Open3D
                 (ground-truth poses and mesh; no files needed)
  7-Scenes       a folder with camera-intrinsics.txt and frame-XXXXXX.{color.jpg|color.png,
                 depth.png (uint16 mm), pose.txt (4x4 camera-to-world)} (7-Scenes / 3DMatch)
  TUM RGB-D      a folder with rgb.txt and depth.txt (+ groundtruth.txt, optional), depth
                 PNGs with 5000 units per metre (TUM RGB-D benchmark sequences)
""" + _ROSBAG_LAYOUT


def detect_format(path_or_name: Union[str, Path]) -> str:
    """``"synthetic"``, ``"7scenes"``, ``"tum"`` or ``"rosbag2"``; :class:`DatasetError` otherwise."""
    if str(path_or_name).strip().lower() == "synthetic":
        return "synthetic"
    path = Path(path_or_name)
    if not path.exists():
        raise DatasetError(f"dataset {str(path_or_name)!r} not found: not a folder, and not the name "
                           f"'synthetic'. Supported inputs:\n{SUPPORTED_LAYOUTS}")
    if is_rosbag(path):
        return "rosbag2"
    if not path.is_dir():
        raise DatasetError(f"dataset {str(path)!r} is a file; expected a folder. Supported inputs:\n"
                           f"{SUPPORTED_LAYOUTS}")
    if is_seven_scenes(path):
        return "7scenes"
    if is_tum(path):
        return "tum"
    raise DatasetError(f"cannot tell the layout of folder {str(path)!r}. Supported inputs:\n"
                       f"{SUPPORTED_LAYOUTS}")


def open_dataset(path_or_name: Union[str, Path], max_frames: Optional[int] = None, stride: int = 1,
                 **kwargs) -> Dataset:
    """Open ``path_or_name`` with the loader of its layout (see :data:`SUPPORTED_LAYOUTS`).

    ``max_frames`` (0/None = all) and ``stride`` select frames; other keyword arguments go
    to the loader (e.g. ``undistort=False`` for TUM, ``num_frames=``, ``width=``, ``seed=``
    for synthetic).
    """
    kind = detect_format(path_or_name)
    if kind == "synthetic":
        return SyntheticRoom(max_frames=max_frames, stride=stride, **kwargs)
    if kind == "7scenes":
        return SevenScenes(path_or_name, max_frames=max_frames, stride=stride, **kwargs)
    if kind == "rosbag2":
        return RosbagDataset(path_or_name, max_frames=max_frames, stride=stride, **kwargs)
    return TUMRGBD(path_or_name, max_frames=max_frames, stride=stride, **kwargs)
