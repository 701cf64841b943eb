"""Common base of the dataset loaders.

A dataset is a random-access sequence of :class:`~neural_mapping.types.RGBDFrame`
(``len(ds)``, ``ds[i]``, iteration).  Each frame carries ``.pose`` (ground-truth
``T_world_cam`` camera-to-world, or ``None`` where the dataset has none for that
frame), ``.timestamp`` (seconds) and ``.index`` (position in the *selected*
sequence, 0..len-1; the frame's number in the original recording is in
``frame.meta["source_index"]``).

Selection: ``stride`` keeps every n-th frame of the recording, then ``max_frames``
(0 or None = all) keeps the first ones of those.

Attributes every loader provides: ``name``, ``intrinsics`` (registered
depth/color), ``has_ground_truth``, ``timestamps`` ([N] float64 of the selected
frames) and ``gt_poses()`` ([N, 4, 4], NaN rows for frames without ground truth).
"""

from __future__ import annotations

from typing import Iterator, List, Optional

import numpy as np

from neural_mapping.types import CameraIntrinsics, RGBDFrame


class DatasetError(ValueError):
    """A dataset folder is missing, incomplete or malformed."""


def select_indices(total: int, max_frames: Optional[int] = None, stride: int = 1) -> np.ndarray:
    """Indices into a recording of ``total`` frames: every ``stride``-th, first ``max_frames``."""
    if stride is None:
        stride = 1
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be an integer >= 1, got {stride!r}")
    if max_frames is not None and (int(max_frames) != max_frames or max_frames < 0):
        raise ValueError(f"max_frames must be an integer >= 0 (0 = all), got {max_frames!r}")
    idx = np.arange(0, total, int(stride), dtype=np.int64)
    if max_frames:
        idx = idx[: int(max_frames)]
    return idx


class Dataset:
    """Base class: subclasses set the attributes below and implement :meth:`_load`."""

    name: str = "dataset"
    intrinsics: CameraIntrinsics
    has_ground_truth: bool = False
    timestamps: np.ndarray
    depth_scale: float = 1.0

    def __len__(self) -> int:
        return len(self.timestamps)

    def _normalise_index(self, i) -> int:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"dataset index must be an integer, got {type(i).__name__}")
        n = len(self)
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"frame index {i} out of range for {self.name} with {n} frames")
        return j

    def __getitem__(self, i) -> RGBDFrame:
        return self._load(self._normalise_index(i))

    def __iter__(self) -> Iterator[RGBDFrame]:
        for i in range(len(self)):
            yield self._load(i)

    def _load(self, i: int) -> RGBDFrame:  # pragma: no cover - abstract
        raise NotImplementedError

    def gt_poses(self) -> np.ndarray:
        """Ground-truth ``T_world_cam`` of all selected frames, ``[N, 4, 4]`` (NaN where none)."""
        raise NotImplementedError

    def describe(self) -> str:
        i = self.intrinsics
        return (f"{self.name}: {len(self)} frames, {i.width}x{i.height}, fx={i.fx:.1f} fy={i.fy:.1f} "
                f"cx={i.cx:.1f} cy={i.cy:.1f}, ground truth: {'yes' if self.has_ground_truth else 'no'}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def stack_poses(poses: List[Optional[np.ndarray]]) -> np.ndarray:
    out = np.full((len(poses), 4, 4), np.nan)
    for k, T in enumerate(poses):
        if T is not None:
            out[k] = T
    return out
