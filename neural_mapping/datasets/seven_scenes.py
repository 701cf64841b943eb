"""Microsoft 7-Scenes / 3DMatch ("tsdf-fusion") folder layout.

::

    camera-intrinsics.txt          3x3 K, row-major, whitespace separated
    frame-000000.color.jpg|png     8-bit RGB
    frame-000000.depth.png         16-bit, millimetres; 0 and 65535 invalid
    frame-000000.pose.txt          4x4 camera-to-world (T_world_cam), metres

No timestamps: frame ``k`` of the recording gets ``k / 30`` s (Kinect v1 rate).
The poses are used as stored (7-Scenes keeps ~8 digits, so ``R R^T`` is off from
identity by up to ~4e-4; that is within :data:`~neural_mapping.types.RIGID_TOL`).
Color and depth are assumed registered (in 7-Scenes they are not calibrated to
each other: color is off by a few pixels; depth-only fusion is exact).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from neural_mapping.io.images import image_size, read_color, read_depth_png
from neural_mapping.types import CameraIntrinsics, RGBDFrame, check_pose
from neural_mapping.datasets.base import Dataset, DatasetError, select_indices

_FRAME_RE = re.compile(r"^frame-(\d+)\.pose\.txt$")
FPS = 30.0


def is_seven_scenes(path: Path) -> bool:
    path = Path(path)
    return (path / "camera-intrinsics.txt").is_file() and any(path.glob("frame-*.pose.txt"))


class SevenScenes(Dataset):
    """7-Scenes / 3DMatch sequence folder (see the module docstring)."""

    depth_scale = 1000.0

    def __init__(self, path, max_frames: Optional[int] = None, stride: int = 1,
                 load_color: bool = True):
        self.root = Path(path)
        if not self.root.is_dir():
            raise DatasetError(f"7-Scenes folder {self.root} does not exist")
        kfile = self.root / "camera-intrinsics.txt"
        if not kfile.is_file():
            raise DatasetError(f"{self.root}: camera-intrinsics.txt is missing (7-Scenes layout)")
        try:
            K = np.loadtxt(kfile, dtype=np.float64)
        except ValueError as e:
            raise DatasetError(f"{kfile}: cannot parse a 3x3 matrix ({e})") from None
        if K.shape != (3, 3):
            raise DatasetError(f"{kfile}: expected a 3x3 matrix, got shape {K.shape}")

        numbers = sorted(int(m.group(1)) for p in self.root.iterdir()
                         if (m := _FRAME_RE.match(p.name)))
        if not numbers:
            raise DatasetError(f"{self.root}: no frame-XXXXXX.pose.txt files")
        self._width = len(next(self.root.glob("frame-*.pose.txt")).name.split(".")[0]) - len("frame-")
        self.num_recorded = len(numbers)
        sel = select_indices(len(numbers), max_frames, stride)
        if len(sel) == 0:
            raise DatasetError(f"{self.root}: no frames selected (max_frames={max_frames}, stride={stride})")
        self.frame_numbers = np.asarray(numbers, dtype=np.int64)[sel]
        self.load_color = load_color

        first = self._file(int(self.frame_numbers[0]), "depth.png")
        if not first.is_file():
            raise DatasetError(f"{self.root}: {first.name} is missing")
        w, h = image_size(first)
        self.intrinsics = CameraIntrinsics.from_matrix(K, w, h)
        self.name = f"7scenes:{self.root.name}"
        self.has_ground_truth = True
        self.timestamps = self.frame_numbers.astype(np.float64) / FPS

        poses = []
        for n in self.frame_numbers:
            pfile = self._file(int(n), "pose.txt")
            try:
                T = np.loadtxt(pfile, dtype=np.float64)
                if T.size == 16:
                    T = T.reshape(4, 4)
                poses.append(check_pose(T, f"{pfile.name}"))
            except (ValueError, OSError) as e:
                raise DatasetError(f"{pfile}: bad pose ({e})") from None
        self._poses = np.stack(poses)
        self._color_ext = None
        if load_color:
            for ext in ("color.jpg", "color.png"):
                if self._file(int(self.frame_numbers[0]), ext).is_file():
                    self._color_ext = ext
                    break

    def _file(self, number: int, suffix: str) -> Path:
        return self.root / f"frame-{number:0{self._width}d}.{suffix}"

    def _load(self, i: int) -> RGBDFrame:
        n = int(self.frame_numbers[i])
        dfile = self._file(n, "depth.png")
        if not dfile.is_file():
            raise DatasetError(f"{self.root}: {dfile.name} is missing")
        depth = read_depth_png(dfile, self.depth_scale)
        color = None
        if self._color_ext is not None:
            cfile = self._file(n, self._color_ext)
            if not cfile.is_file():
                raise DatasetError(f"{self.root}: {cfile.name} is missing")
            color = read_color(cfile)
        return RGBDFrame(depth=depth, intrinsics=self.intrinsics, color=color,
                         timestamp=float(self.timestamps[i]), pose=self._poses[i].copy(), index=i,
                         meta={"source_index": n, "dataset": self.name})

    def gt_poses(self) -> np.ndarray:
        return self._poses.copy()
