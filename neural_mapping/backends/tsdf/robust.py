"""Outlier-robust TSDF fusion: the two pieces :mod:`~neural_mapping.backends.tsdf.integrate`
adds when ``IntegrationConfig.robust_fusion`` is on (the default is off; ``bench/bench_quality.py``
measures both).

1. **Depth segment filter** (:func:`filter_depth`, per frame, before allocation, so dropped
   pixels allocate nothing).  A pixel is a *far-side edge* when a 4-neighbour is nearer by more
   than ``jump_ratio * depth``.  The valid non-edge pixels are split into 4-connected segments
   (``scipy.ndimage.label``; the filter runs in numpy on the CPU, before the depth goes to the map's device); segments smaller
   than ``min_segment_px`` pixels are dropped: isolated pixels, outlier blobs (a blob moved in
   front of or behind its surroundings is cut off by the edge ring around it) and small
   fragments of flying pixels.  An edge pixel is kept when a 4-neighbour within
   ``jump_ratio * depth`` of it belongs to a kept segment (so the far side of a depth edge keeps
   its own surface; flying pixels between two surfaces, farther than that from both, go).
   Thin structures seen in front of a background stay: their pixels are on the near side.

2. **Free-space carving** (:func:`carve_slots`): plain projective fusion updates only the blocks
   around the measured depth, so a surface created by an outlier is never seen as free again.
   Here every ``carve_stride_px``-th pixel's ray is sampled from ``depth_min`` to
   ``depth - truncation`` every half block, and the *already allocated* blocks it crosses join
   the frame's update (nothing is allocated) when no voxel of theirs has reached weight
   ``carve_below_weight``: blocks a surface was fused into many times are not rewritten (this
   keeps the cost near plain fusion: such blocks hold no one-frame outliers).  Their voxels get the ordinary projective update:
   a voxel whose pixel sees far past it gets ``+1`` (free), averaged with what is stored, so a
   one-frame outlier surface is outvoted by the next views that look through it.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch
from scipy import ndimage

from neural_mapping.grid.voxel_grid import VoxelBlockGrid
from neural_mapping.types import CameraIntrinsics

__all__ = ["filter_depth", "carve_slots"]

_SHIFTS = ((0, 1), (2, 1), (1, 0), (1, 2))  # (dy, dx) into a 1-padded image: up, down, left, right


def filter_depth(depth: np.ndarray, *, jump_ratio: float, min_segment_px: int, depth_min_m: float,
                 depth_max_m: float) -> Tuple[np.ndarray, int]:
    """``(filtered depth float32, dropped pixel count)``; dropped pixels are 0 (module docstring).
    Runs on the CPU in numpy (a few passes over the image and one ``ndimage.label``)."""
    d = np.asarray(depth, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        valid = (d >= max(depth_min_m, 1e-6)) & (d <= depth_max_m)  # NaN fails both
    d0 = np.where(valid, d, np.float32(0))
    H, W = d.shape
    pad = np.pad(d0, 1)
    tol = d0 * np.float32(jump_ratio)
    nbs = [pad[dy:dy + H, dx:dx + W] for dy, dx in _SHIFTS]
    edge = np.zeros((H, W), dtype=bool)
    for nb in nbs:
        edge |= (nb > 0) & (d0 - nb > tol)
    core = valid & ~edge
    labels, n = ndimage.label(core)
    if n == 0:
        return np.zeros_like(d0), int(valid.sum())
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    big = sizes >= int(min_segment_px)
    big[0] = False
    keep = big[labels]
    kpad = np.pad(keep, 1)
    attach = np.zeros((H, W), dtype=bool)
    for (dy, dx), nb in zip(_SHIFTS, nbs):
        attach |= kpad[dy:dy + H, dx:dx + W] & (np.abs(nb - d0) <= tol)
    keep |= edge & valid & attach
    return np.where(keep, d0, np.float32(0)), int(valid.sum()) - int(keep.sum())


def carve_slots(grid: VoxelBlockGrid, depth: torch.Tensor, intr: CameraIntrinsics, T_world_cam: torch.Tensor,
                *, truncation_m: float, depth_min_m: float, depth_max_m: float, stride: int,
                below_weight: float = 0.0) -> torch.Tensor:
    """Slots (int64, unique) of allocated blocks crossed by the free part of the rays of every
    ``stride``-th pixel: from ``depth_min_m`` to ``depth - truncation_m``; with ``below_weight
    > 0`` only blocks whose largest voxel weight is below it."""
    from neural_mapping.backends.tsdf.integrate import pixel_rays, valid_depth  # (imports us)
    device = grid.device
    rays, pix = pixel_rays(intr, stride, device)
    d = depth.reshape(-1).index_select(0, pix)
    keep = (valid_depth(d, depth_min_m, depth_max_m) & (d - truncation_m > depth_min_m)).nonzero().squeeze(1)
    if keep.numel() == 0 or grid.num_blocks == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    d = d.index_select(0, keep)
    T = T_world_cam.to(device=device, dtype=torch.float32)
    dirs = T[:3, :3] @ rays.index_select(1, keep)  # [3, n] world, per unit camera z
    # clip each ray's free segment [depth_min, d - trunc] to the box of the allocated blocks
    bs = grid.block_size_m
    ac = grid.active_coords()
    lo = ac.min(dim=0).values.to(torch.float32) * bs
    hi = (ac.max(dim=0).values.to(torch.float32) + 1) * bs
    z0 = torch.full_like(d, depth_min_m)
    z1 = d - truncation_m
    for a in range(3):
        inv = 1.0 / torch.where(dirs[a].abs() < 1e-9, torch.full_like(dirs[a], 1e-9), dirs[a])
        ta, tb = (lo[a] - T[a, 3]) * inv, (hi[a] - T[a, 3]) * inv
        z0 = torch.maximum(z0, torch.minimum(ta, tb))
        z1 = torch.minimum(z1, torch.maximum(ta, tb))
    ok = (z1 > z0).nonzero().squeeze(1)
    if ok.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    z0, z1, dirs = z0.index_select(0, ok), z1.index_select(0, ok), dirs.index_select(1, ok)
    ns = int(math.ceil(float((z1 - z0).max()) / (0.5 * bs))) + 1  # samples <= half a block apart
    frac = torch.linspace(0.0, 1.0, ns, device=device)
    z = z0[:, None] + (z1 - z0)[:, None] * frac[None, :]  # [n, ns]
    inv_b = 1.0 / bs
    b = [torch.floor((T[a, 3] + z * dirs[a][:, None]) * inv_b).to(torch.int32) for a in range(3)]
    slots = grid.lookup_xyz(b[0], b[1], b[2]).reshape(-1)
    slots = slots[slots >= 0]
    if slots.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    slots = torch.unique(slots).to(torch.int64)
    if below_weight > 0:  # only blocks no voxel of which was observed that often
        nv = grid.block_size ** 3
        wmax = grid.attrs["weight"].view(grid.capacity, nv).index_select(0, slots).amax(dim=1)
        slots = slots[wmax < below_weight]
    return slots
