"""TUM RGB-D benchmark sequence folder.

::

    rgb.txt            timestamp filename      ('#' lines skipped)
    depth.txt          timestamp filename
    groundtruth.txt    timestamp tx ty tz qx qy qz qw   (camera-to-world, ~100 Hz; optional)
    rgb/*.png|jpg      8-bit RGB
    depth/*.png        16-bit, 5000 units per metre, 0 = invalid

Frames are driven by the **depth** stream (the geometry): every depth image is
paired with the colour image nearest in time, if one lies within
``max_color_dt_s`` (20 ms, as TUM's ``associate.py``); depth images without a
match are dropped and counted in ``dropped_no_color``.  ``association="nearest"``
(default) lets two depth images share a colour image (fr1/xyz: all 798 depth
frames kept); ``"one_to_one"`` is the greedy unique matching of ``associate.py``
(fr1/xyz: 792 pairs).

Ground truth is interpolated to the depth stamp (translation lerp, rotation
slerp) between the two bracketing mocap samples; a frame outside the
ground-truth span, or whose bracketing samples are more than ``max_gt_gap_s``
apart, gets ``pose=None`` (never extrapolated) and is counted in
``no_ground_truth``.

Camera: the Freiburg camera is picked from the folder name (``freiburg1``/``fr1``,
``freiburg2``/``fr2``, ``freiburg3``/``fr3``; Freiburg 1 when the name says
nothing, with a warning) or given with ``camera=``.  Depth is registered to the
colour camera, so one set of intrinsics serves both.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from neural_mapping.geometry import pose_at_stamp, pose_from_tq
from neural_mapping.io.images import image_size, read_color, read_depth_png, read_tum_list
from neural_mapping.types import CameraIntrinsics, RGBDFrame
from neural_mapping.datasets.base import Dataset, DatasetError, select_indices, stack_poses

# fx, fy, cx, cy, (k1, k2, p1, p2, k3) -- TUM "file formats" page (ROS plumb_bob order).
TUM_CAMERAS: Dict[str, Tuple[Tuple[float, float, float, float], Tuple[float, ...]]] = {
    "fr1": ((517.3, 516.5, 318.6, 255.3), (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)),
    "fr2": ((520.9, 521.0, 325.1, 249.7), (0.2312, -0.7849, -0.0033, -0.0001, 0.9172)),
    "fr3": ((535.4, 539.2, 320.1, 247.6), (0.0, 0.0, 0.0, 0.0, 0.0)),
    # TUM's recommendation for the pre-registered depth: uncalibrated ROS defaults, no distortion.
    "ros_default": ((525.0, 525.0, 319.5, 239.5), (0.0, 0.0, 0.0, 0.0, 0.0)),
}


def is_tum(path: Path) -> bool:
    path = Path(path)
    return (path / "rgb.txt").is_file() and (path / "depth.txt").is_file()


def detect_camera(path: Path) -> Optional[str]:
    name = str(Path(path).resolve()).lower()
    m = re.search(r"(?:freiburg|fr)([123])(?![0-9])", name)
    return f"fr{m.group(1)}" if m else None


def associate(stamps_a: np.ndarray, stamps_b: np.ndarray, max_dt: float,
              one_to_one: bool = False) -> np.ndarray:
    """``match[i]`` = index into ``stamps_b`` of the partner of ``stamps_a[i]``, or -1.

    Default: the nearest stamp of ``b`` within ``max_dt`` (a ``b`` may serve several ``a``).
    ``one_to_one``: greedy unique matching by increasing time difference (TUM ``associate.py``).
    """
    a = np.asarray(stamps_a, dtype=np.float64)
    b = np.asarray(stamps_b, dtype=np.float64)
    order = np.argsort(b, kind="stable")
    bs = b[order]
    if len(b) == 0:
        return np.full(len(a), -1, dtype=np.int64)
    if not one_to_one:
        j = np.searchsorted(bs, a)
        jr = np.clip(j, 0, len(bs) - 1)
        jl = np.clip(j - 1, 0, len(bs) - 1)
        pick = np.where(np.abs(bs[jl] - a) <= np.abs(bs[jr] - a), jl, jr)
        ok = np.abs(bs[pick] - a) <= max_dt
        return np.where(ok, order[pick], -1).astype(np.int64)
    cand = []
    lo = np.searchsorted(bs, a - max_dt, side="left")
    hi = np.searchsorted(bs, a + max_dt, side="right")
    for i in range(len(a)):
        for j in range(lo[i], hi[i]):
            cand.append((abs(a[i] - bs[j]), i, int(order[j])))
    cand.sort()
    match = np.full(len(a), -1, dtype=np.int64)
    used_b = np.zeros(len(b), dtype=bool)
    for _, i, j in cand:
        if match[i] < 0 and not used_b[j]:
            match[i] = j
            used_b[j] = True
    return match


class Undistorter:
    """Precomputed remap from a plumb_bob-distorted image to the pinhole image with the same K.

    For every output pixel ``(u, v)`` (pixel centres at integer coordinates) the
    normalised ray ``x = (u - cx) / fx, y = (v - cy) / fy`` is distorted with
    ``(k1, k2, p1, p2, k3)`` and projected back with K to a source position.
    Depth is sampled nearest-neighbour (never mixes foreground and background;
    distortion moves the pixel, not the z value, so the value stays the depth),
    colour bilinearly.  Output pixels whose source falls outside the image are
    invalid (depth 0, colour black).
    """

    def __init__(self, intrinsics: CameraIntrinsics, dist: Sequence[float]):
        k1, k2, p1, p2, k3 = [float(v) for v in dist]
        W, H = intrinsics.width, intrinsics.height
        u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
        x = (u - intrinsics.cx) / intrinsics.fx
        y = (v - intrinsics.cy) / intrinsics.fy
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        us = intrinsics.fx * xd + intrinsics.cx
        vs = intrinsics.fy * yd + intrinsics.cy
        self.map_u, self.map_v = us, vs
        # nearest (depth)
        un, vn = np.rint(us).astype(np.int64), np.rint(vs).astype(np.int64)
        ok = (un >= 0) & (un < W) & (vn >= 0) & (vn < H)
        self._near_idx = np.where(ok, vn * W + un, 0).ravel()
        self._near_ok = ok.ravel()
        # bilinear (color): 4 taps, weights zero outside
        ok_b = (us >= 0) & (us <= W - 1) & (vs >= 0) & (vs <= H - 1)
        u0 = np.clip(np.floor(us), 0, max(W - 2, 0)).astype(np.int64)
        v0 = np.clip(np.floor(vs), 0, max(H - 2, 0)).astype(np.int64)
        fu = np.clip(us - u0, 0, 1).astype(np.float32)
        fv = np.clip(vs - v0, 0, 1).astype(np.float32)
        base = (v0 * W + u0).ravel()
        self._bil_idx = np.stack([base, base + 1, base + W, base + W + 1])
        w = np.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv]).reshape(4, -1)
        self._bil_w = (w * ok_b.ravel()[None]).astype(np.float32)
        self.shape = (H, W)
        self.valid_fraction = float(ok.mean())

    def depth(self, depth: np.ndarray) -> np.ndarray:
        out = depth.ravel()[self._near_idx]
        out = np.where(self._near_ok, out, np.float32(0)).astype(np.float32)
        return out.reshape(self.shape)

    def color(self, color: np.ndarray) -> np.ndarray:
        flat = color.reshape(-1, 3).astype(np.float32)
        acc = np.zeros((self._bil_idx.shape[1], 3), dtype=np.float32)
        for k in range(4):
            acc += flat[self._bil_idx[k]] * self._bil_w[k][:, None]
        return np.clip(np.rint(acc), 0, 255).astype(np.uint8).reshape(self.shape + (3,))


class TUMRGBD(Dataset):
    """TUM RGB-D sequence folder (see the module docstring).

    ``camera``: ``"fr1"``, ``"fr2"``, ``"fr3"`` (TUM's calibrated colour intrinsics and
    plumb_bob distortion) or ``"ros_default"`` (525/525/319.5/239.5, no distortion);
    ``None`` picks the Freiburg camera from the folder name.

    ``undistort`` (default ``True``): Freiburg 1/2 images are *not* undistorted, and
    fr1's coefficients are strong (about 6 % radial displacement, ~25 px, in the image
    corners), while the whole core uses a pinhole model.  With ``True`` a precomputed
    remap (nearest for depth, bilinear for colour, see :class:`Undistorter`) turns both
    images into pinhole images with the same K.  TUM's own page recommends the
    uncalibrated ROS defaults without undistortion for the pre-registered depth,
    because the driver's registration makes the depth distortion unclear.  We measured
    instead: on fr1/xyz, reprojecting each frame's depth into a frame 40-90 frames later
    with the ground-truth poses, the median depth disagreement is 14.2 mm with
    fr1 intrinsics + undistortion, 16.1 mm with fr1 intrinsics raw, 15.8 mm with the ROS
    defaults raw (and 39 % vs 34 % vs 34 % of pixels agree within 1 cm);
    ``test_datasets.py::test_tum_undistortion_improves_multiview_consistency`` keeps the
    check.  ``undistort=False`` keeps the raw images (the shortcut of many evaluations).
    Freiburg 3 and ``ros_default`` have zero coefficients, so the flag does nothing there.
    """

    def __init__(self, path, max_frames: Optional[int] = None, stride: int = 1, *,
                 undistort: bool = True, camera: Optional[str] = None,
                 max_color_dt_s: float = 0.02, association: str = "nearest",
                 max_gt_gap_s: float = 0.5,
                 depth_scale: float = 5000.0, load_color: bool = True):
        self.root = Path(path)
        if not self.root.is_dir():
            raise DatasetError(f"TUM folder {self.root} does not exist")
        for f in ("rgb.txt", "depth.txt"):
            if not (self.root / f).is_file():
                raise DatasetError(f"{self.root}: {f} is missing (TUM RGB-D layout)")
        try:
            rgb = read_tum_list(self.root / "rgb.txt")
            dep = read_tum_list(self.root / "depth.txt")
        except ValueError as e:
            raise DatasetError(str(e)) from None
        if not dep:
            raise DatasetError(f"{self.root}: depth.txt lists no images")
        rgb_t = np.array([float(r[0]) for r in rgb])
        dep_t = np.array([float(r[0]) for r in dep])
        order = np.argsort(dep_t, kind="stable")
        dep_t = dep_t[order]
        dep_files = [dep[k][1] for k in order]

        if association not in ("nearest", "one_to_one"):
            raise ValueError(f"association must be 'nearest' or 'one_to_one', got {association!r}")
        if load_color:
            match = associate(dep_t, rgb_t, max_color_dt_s, one_to_one=association == "one_to_one")
            keep = np.nonzero(match >= 0)[0]
        else:
            match = np.full(len(dep_t), -1)
            keep = np.arange(len(dep_t))
        self.num_depth_images = len(dep_t)
        self.num_color_images = len(rgb_t)
        self.dropped_no_color = int(len(dep_t) - len(keep)) if load_color else 0
        self.num_associated = int(len(keep))
        if len(keep) == 0:
            raise DatasetError(f"{self.root}: no depth image has a colour image within "
                               f"{max_color_dt_s * 1000:.0f} ms")
        sel = keep[select_indices(len(keep), max_frames, stride)]
        if len(sel) == 0:
            raise DatasetError(f"{self.root}: no frames selected (max_frames={max_frames}, stride={stride})")
        self._depth_files = [self.root / dep_files[k] for k in sel]
        self._color_files = [self.root / rgb[match[k]][1] if match[k] >= 0 else None for k in sel]
        self._color_stamps = np.array([rgb_t[match[k]] if match[k] >= 0 else np.nan for k in sel])
        self._source_index = sel
        self.timestamps = dep_t[sel]
        self.depth_scale = float(depth_scale)

        # camera
        cam = camera or detect_camera(self.root)
        if cam is None:
            warnings.warn(f"{self.root}: cannot tell the Freiburg camera from the folder name; "
                          "assuming Freiburg 1 (pass camera='fr1'|'fr2'|'fr3')")
            cam = "fr1"
        if cam not in TUM_CAMERAS:
            raise DatasetError(f"unknown TUM camera {cam!r}; known: {sorted(TUM_CAMERAS)}")
        self.camera = cam
        (fx, fy, cx, cy), dist = TUM_CAMERAS[cam]
        self.distortion = tuple(dist)
        first = self._depth_files[0]
        if not first.is_file():
            raise DatasetError(f"{self.root}: {first.relative_to(self.root)} is missing")
        w, h = image_size(first)
        self.intrinsics = CameraIntrinsics(w, h, fx, fy, cx, cy)
        self.undistort = bool(undistort) and any(abs(d) > 0 for d in dist)
        self._undistorter = Undistorter(self.intrinsics, dist) if self.undistort else None
        self.name = f"tum:{self.root.name}"

        # ground truth
        gt_file = self.root / "groundtruth.txt"
        self.has_ground_truth = gt_file.is_file()
        self.no_ground_truth = 0
        if self.has_ground_truth:
            try:
                rows = read_tum_list(gt_file, columns=8)
            except ValueError as e:
                raise DatasetError(str(e)) from None
            vals = np.array([[float(v) for v in r[:8]] for r in rows])
            o = np.argsort(vals[:, 0], kind="stable")
            vals = vals[o]
            self.gt_stamps = vals[:, 0]
            self.gt_raw_poses = np.stack([pose_from_tq(v[1:4], v[4:8]) for v in vals])
            self._poses = [pose_at_stamp(self.gt_stamps, self.gt_raw_poses, t, max_gt_gap_s)[1]
                           for t in self.timestamps]
            self.no_ground_truth = sum(p is None for p in self._poses)
            if self.no_ground_truth == len(self._poses):
                self.has_ground_truth = False
        else:
            self._poses = [None] * len(self.timestamps)

    def _load(self, i: int) -> RGBDFrame:
        dfile = self._depth_files[i]
        if not dfile.is_file():
            raise DatasetError(f"{self.root}: {dfile.relative_to(self.root)} is missing")
        depth = read_depth_png(dfile, self.depth_scale)
        color = None
        cfile = self._color_files[i]
        if cfile is not None:
            if not cfile.is_file():
                raise DatasetError(f"{self.root}: {cfile.relative_to(self.root)} is missing")
            color = read_color(cfile)
        if self._undistorter is not None:
            depth = self._undistorter.depth(depth)
            if color is not None:
                color = self._undistorter.color(color)
        pose = self._poses[i]
        return RGBDFrame(depth=depth, intrinsics=self.intrinsics, color=color,
                         timestamp=float(self.timestamps[i]),
                         pose=None if pose is None else pose.copy(), index=i,
                         meta={"source_index": int(self._source_index[i]), "dataset": self.name,
                               "depth_stamp": float(self.timestamps[i]),
                               "color_stamp": float(self._color_stamps[i]),
                               "depth_file": str(dfile), "color_file": str(cfile) if cfile else None})

    def gt_poses(self) -> np.ndarray:
        return stack_poses(self._poses)
