"""File I/O shared by the dataset loaders, the offline pipeline and the CLI.

* images: 16-bit depth PNG -> float32 metres, color (PNG/JPEG) -> uint8 RGB, PNG writing (PIL);
* TUM text lists (``timestamp filename``) and TUM trajectories
  (``timestamp tx ty tz qx qy qz qw``, camera-to-world, quaternion x y z w);
* JSON with numpy scalars.

Errors name the file and what was wrong (``ValueError`` for malformed content,
``FileNotFoundError`` for missing files).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, List, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from neural_mapping.geometry import format_tum_line, pose_from_tum
from neural_mapping.types import depth_from_uint16

PathLike = Union[str, Path]


# ------------------------------------------------------------------ images
def read_depth_png(path: PathLike, scale: float) -> np.ndarray:
    """16-bit depth PNG (``scale`` units per metre) -> (H, W) float32 metres, invalid = 0.

    0 and 65535 (saturation marker of some sensors) are invalid.
    """
    with Image.open(path) as im:
        if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise ValueError(f"{path}: expected a 16-bit depth PNG, got PIL mode {im.mode!r}")
        raw = np.asarray(im)
    if raw.dtype != np.uint16:
        if raw.min() < 0 or raw.max() > 65535:
            raise ValueError(f"{path}: depth values outside the uint16 range")
        raw = raw.astype(np.uint16)
    return depth_from_uint16(raw, scale)


def read_color(path: PathLike) -> np.ndarray:
    """Color image (any PIL format) -> (H, W, 3) uint8 RGB."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))  # a writable copy (torch.from_numpy warns on read-only)


def image_size(path: PathLike) -> Tuple[int, int]:
    """``(width, height)`` from the image header (no decode)."""
    with Image.open(path) as im:
        return im.size


def save_png(path: PathLike, image: np.ndarray) -> None:
    """Write (H, W) or (H, W, 3) uint8 as PNG."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"save_png expects uint8, got {image.dtype}")
    Image.fromarray(image).save(str(path))


# --------------------------------------------------------------- TUM lists
def read_tum_list(path: PathLike, columns: int = 2) -> List[List[str]]:
    """Rows of a TUM text file: ``#`` comments and blank lines skipped, whitespace split.

    Every row must have at least ``columns`` fields; the first must parse as a float.
    """
    path = Path(path)
    rows: List[List[str]] = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.replace(",", " ").split()
            if len(parts) < columns:
                raise ValueError(f"{path}:{lineno}: expected {columns} fields, got {len(parts)}: {line!r}")
            try:
                float(parts[0])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: timestamp {parts[0]!r} is not a number") from None
            rows.append(parts)
    return rows


def read_tum_trajectory(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """``(stamps [N] float64, poses [N, 4, 4] float64)`` from a TUM trajectory file.

    Lines: ``timestamp tx ty tz qx qy qz qw`` (camera-to-world), ``#`` comments skipped.
    """
    stamps, poses = [], []
    for parts in read_tum_list(path, columns=8):
        vals = [float(v) for v in parts[:8]]
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"{path}: non-finite value in trajectory row {parts}")
        stamp, T = pose_from_tum(vals)
        stamps.append(stamp)
        poses.append(T)
    if not poses:
        raise ValueError(f"{path}: no poses in TUM trajectory file")
    return np.asarray(stamps, dtype=np.float64), np.stack(poses)


def write_tum_trajectory(path: PathLike, stamps: Sequence[float], poses: Sequence[np.ndarray],
                         header: str = "") -> None:
    """Write ``timestamp tx ty tz qx qy qz qw`` lines (camera-to-world)."""
    stamps = np.asarray(stamps, dtype=np.float64).reshape(-1)
    if len(stamps) != len(poses):
        raise ValueError(f"{len(stamps)} stamps but {len(poses)} poses")
    with open(path, "w") as fh:
        fh.write("# timestamp tx ty tz qx qy qz qw" + (f"  ({header})" if header else "") + "\n")
        for s, T in zip(stamps, poses):
            fh.write(format_tum_line(T, float(s)) + "\n")


# -------------------------------------------------------------------- JSON
def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN/inf
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: PathLike, data: Any) -> None:
    with open(path, "w") as fh:
        json.dump(_jsonable(data), fh, indent=2)
        fh.write("\n")
