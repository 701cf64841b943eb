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

from typing import Tuple

import numpy as np
import torch
from scipy import ndimage

from neural_mapping.grid.voxel_grid import VoxelBlockGrid
from neural_mapping.kernels import script
from neural_mapping.types import CameraIntrinsics

__all__ = ["filter_depth", "carve_slots"]

def filter_depth(depth: np.ndarray, *, jump_ratio: float, min_segment_px: int, depth_min_m: float,
                 depth_max_m: float) -> Tuple[np.ndarray, int]:
    """``(filtered depth float32, dropped pixel count)``; dropped pixels are 0 (module docstring).
    Runs on the CPU in numpy: a few passes over the image, one ``ndimage.label``; the re-attach
    test touches only the (few) edge pixels."""
    d = np.asarray(depth, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        valid = (d >= max(depth_min_m, 1e-6)) & (d <= depth_max_m)  # NaN fails both
    H, W = d.shape
    Wp = W + 2
    pad = np.zeros((H + 2, Wp), np.float32)  # invalid = 0, one pixel all around
    d0 = pad[1:-1, 1:-1]
    np.copyto(d0, d, where=valid)
    tol = d0 * np.float32(jump_ratio)
    # far-side edge: the nearest valid 4-neighbour (invalid = +inf) is nearer by more than tol
    padi = np.where(pad > 0, pad, np.float32(np.inf))
    near = np.minimum(np.minimum(padi[:-2, 1:-1], padi[2:, 1:-1]), np.minimum(padi[1:-1, :-2], padi[1:-1, 2:]))
    edge = (d0 - near) > tol
    core = valid & ~edge
    labels, n = ndimage.label(core)
    nvalid = int(np.count_nonzero(valid))
    if n == 0:
        return np.zeros((H, W), np.float32), nvalid
    big = np.bincount(labels.ravel(), minlength=n + 1) >= int(min_segment_px)
    big[0] = False
    kpad = np.zeros((H + 2, Wp), bool)
    keep = kpad[1:-1, 1:-1]
    np.take(big, labels, out=keep)
    # an edge pixel stays when a 4-neighbour within tol of it belongs to a kept segment
    kf, df = kpad.ravel(), pad.ravel()
    idx = np.flatnonzero((edge & valid).ravel())
    if idx.size:
        ey, ex = np.divmod(idx, W)
        p = (ey + 1) * Wp + (ex + 1)  # index into the padded image
        de, te = df[p], tol.ravel()[idx]
        att = np.zeros(p.size, bool)
        for o in (-Wp, Wp, -1, 1):
            att |= kf[p + o] & (np.abs(df[p + o] - de) <= te)
        kf[p[att]] = True
    return d0 * keep, nvalid - int(np.count_nonzero(keep))


def _carve_cells(d: torch.Tensor, rays: torch.Tensor, T: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                 depth_min_m: float, depth_max_m: float, truncation_m: float,
                 block_m: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block coordinates (three int32 ``[n, ns]``, possibly empty) of samples at most half a
    block apart on the free segment ``[depth_min, d - trunc]`` of each ray, clipped to the box
    ``[lo, hi]`` (metres).  ``d``: depth of the strided pixels, ``rays``: their camera rays
    ``[3, n]`` (z = 1).  One scripted pass: the cost is a few dozen small tensor ops."""
    keep = ((d > 0) & (d >= depth_min_m) & (d <= depth_max_m)
            & (d - truncation_m > depth_min_m)).nonzero().squeeze(1)
    d = d.index_select(0, keep)
    dirs = T[:3, :3] @ rays.index_select(1, keep)  # [3, n] world, per unit camera z
    z0 = torch.full_like(d, depth_min_m)
    z1 = d - truncation_m
    for a in range(3):
        inv = 1.0 / torch.where(dirs[a].abs() < 1e-9, torch.full_like(dirs[a], 1e-9), dirs[a])
        ta, tb = (lo[a] - T[a, 3]) * inv, (hi[a] - T[a, 3]) * inv
        z0 = torch.maximum(z0, torch.minimum(ta, tb))
        z1 = torch.minimum(z1, torch.maximum(ta, tb))
    ok = (z1 > z0).nonzero().squeeze(1)
    if ok.numel() == 0:
        e = torch.empty([0, 0], dtype=torch.int32, device=d.device)
        return e, e, e
    z0, z1, dirs = z0.index_select(0, ok), z1.index_select(0, ok), dirs.index_select(1, ok)
    ns = int(torch.ceil((z1 - z0).max() / (0.5 * block_m)).item()) + 1
    frac = torch.linspace(0.0, 1.0, ns, device=d.device)
    z = z0[:, None] + (z1 - z0)[:, None] * frac[None, :]  # [n, ns]
    inv_b = 1.0 / block_m
    bx = torch.floor((T[0, 3] + z * dirs[0][:, None]) * inv_b).to(torch.int32)
    by = torch.floor((T[1, 3] + z * dirs[1][:, None]) * inv_b).to(torch.int32)
    bz = torch.floor((T[2, 3] + z * dirs[2][:, None]) * inv_b).to(torch.int32)
    return bx, by, bz


_carve_cells = script(_carve_cells)


def carve_slots(grid: VoxelBlockGrid, depth: torch.Tensor, intr: CameraIntrinsics, T_world_cam: torch.Tensor,
                *, truncation_m: float, depth_min_m: float, depth_max_m: float, stride: int,
                below_weight: float = 0.0) -> torch.Tensor:
    """Slots (int64, unique) of allocated blocks crossed by the free part of the rays of every
    ``stride``-th pixel: from ``depth_min_m`` to ``depth - truncation_m``; with ``below_weight
    > 0`` only blocks whose largest voxel weight is below it."""
    from neural_mapping.backends.tsdf.integrate import pixel_rays  # (imports us)
    device = grid.device
    none = torch.empty(0, dtype=torch.int64, device=device)
    if grid.num_blocks == 0:
        return none
    rays, pix = pixel_rays(intr, stride, device)
    d = depth.reshape(-1).index_select(0, pix)
    T = T_world_cam.to(device=device, dtype=torch.float32)
    bs = grid.block_size_m
    ac = grid.active_coords()  # the free segments are clipped to the box of the allocated blocks
    lo = ac.amin(dim=0).to(torch.float32) * bs
    hi = (ac.amax(dim=0).to(torch.float32) + 1) * bs
    bx, by, bz = _carve_cells(d, rays, T, lo, hi, float(depth_min_m), float(depth_max_m), float(truncation_m),
                              float(bs))
    if bx.numel() == 0:
        return none
    slots = grid.lookup_xyz(bx, by, bz).reshape(-1)
    slots = slots[slots >= 0]
    if slots.numel() == 0:
        return none
    slots = torch.unique(slots).to(torch.int64)
    if below_weight > 0:  # only blocks no voxel of which was observed that often
        nv = grid.block_size ** 3
        wmax = grid.attrs["weight"].view(grid.capacity, nv).index_select(0, slots).amax(dim=1)
        slots = slots[wmax < below_weight]
    return slots
