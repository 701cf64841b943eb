"""Depth image operations of the tracker: edge-preserving downsampling, vertex and normal
maps, and the coarse-to-fine point pyramid of a frame (TorchScript kernels in
:mod:`neural_mapping.kernels`)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from neural_mapping import kernels
from neural_mapping.types import CameraIntrinsics

FAR = 1.0e4  # coordinate written into invalid model pixels: fails every distance test
CHUNK = 1024  # the ICP kernel's chunk of points; levels are padded to a multiple of it


def to_tensor(x, device, dtype=torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


def scaled_to(intr: CameraIntrinsics, w: int, h: int) -> CameraIntrinsics:
    """``intr`` for the same camera at ``w x h`` pixels (pixel-centre convention)."""
    sx, sy = w / intr.width, h / intr.height
    return CameraIntrinsics(w, h, intr.fx * sx, intr.fy * sy,
                            (intr.cx + 0.5) * sx - 0.5, (intr.cy + 0.5) * sy - 0.5)


def downsample_depth(d: torch.Tensor, f: int, rel_tol: float = 0.03) -> torch.Tensor:
    """Block ``f x f`` mean of the valid (> 0) depths; 0 where a block has no valid depth or
    spans a depth edge (valid depths differing by more than ``rel_tol * z + 1 cm``), so
    foreground and background are never mixed.  ``f`` a power of two is done as repeated
    2x2 steps (a handful of elementwise ops on strided views: cheap on one core)."""
    if f == 1:
        return d
    if f & (f - 1) == 0:
        while f > 1:
            d = kernels.down2(d, float(rel_tol), FAR)
            f //= 2
        return d
    H, W = d.shape
    h, w = H // f, W // f
    b = d[: h * f, : w * f].reshape(h, f, w, f)
    inv = (b <= 0).to(d.dtype)
    s = b.sum((1, 3))
    cnt = (f * f) - inv.sum((1, 3))
    mx = b.amax((1, 3))
    mn = (b + inv * FAR).amin((1, 3))
    ok = (cnt > 0) & (mx - mn <= rel_tol * mn + 0.01)
    return torch.where(ok, s / cnt.clamp(min=1), torch.zeros_like(s))


def vertex_map(d: torch.Tensor, K: CameraIntrinsics) -> torch.Tensor:
    """``(H, W, 3)`` camera-frame points of a depth image (0 where the depth is 0)."""
    return torch.stack(_xyz(d, K), -1)


def _xyz(d: torch.Tensor, K: CameraIntrinsics):
    H, W = d.shape
    u = (torch.arange(W, dtype=d.dtype, device=d.device) - K.cx) / K.fx
    v = (torch.arange(H, dtype=d.dtype, device=d.device) - K.cy) / K.fy
    return u[None, :] * d, v[:, None] * d, d


def normal_map(V: torch.Tensor, d: torch.Tensor, max_rel_jump: float = 0.05) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normals ``(H, W, 3)`` of a vertex map from central differences, oriented towards the
    camera, and their validity: false at borders, holes and depth discontinuities
    (neighbours differing by more than ``max_rel_jump * z + 5 mm``)."""
    nx, ny, nz, valid = kernels.normals(V[..., 0], V[..., 1], V[..., 2], d, float(max_rel_jump))
    return torch.stack((nx, ny, nz), -1), valid


class Level:
    """Frame points of one pyramid level, SoA ``(3, n)`` padded to a multiple of :data:`CHUNK`
    (padding points have z = 0 and never associate); ``A`` is the ICP kernel's scratch;
    ``lever_m`` the points' mean depth, the lever arm that makes rotations comparable to
    translations in the normal equations."""

    def __init__(self, P: torch.Tensor, N: torch.Tensor, n: int):
        self.P, self.N, self.n = P, N, n
        self.fx_sensor = 1.0
        self.A = torch.empty((7, P.shape[1]), dtype=P.dtype, device=P.device)
        self.lever_m = float(P[2, :n].mean()) if n else 1.0


def _points(d: torch.Tensor, K: CameraIntrinsics, stride: int) -> Level:
    X = _xyz(d, K)
    nx, ny, nz, nvalid = kernels.normals(X[0], X[1], X[2], d, 0.05)
    m = torch.nonzero(nvalid.reshape(-1)).squeeze(1)
    if stride > 1:
        m = m[::stride]
    n = int(m.numel())
    npad = max(CHUNK, -(-n // CHUNK) * CHUNK)
    PN = torch.zeros((6, npad), dtype=d.dtype, device=d.device)  # one gather for all six rows
    PN[:, :n] = torch.stack((X[0], X[1], X[2], nx, ny, nz)).reshape(6, -1).index_select(1, m)
    return Level(PN[:3], PN[3:], n)


def build_pyramid(d: torch.Tensor, intrinsics: CameraIntrinsics, base_width: int,
                  used: Sequence[bool], finest_stride: int, bilateral_rel: float = 0.0
                  ) -> Tuple[List[Optional[Level]], int]:
    """The frame's points, coarse to fine: the depth ``d`` (0 = invalid) block-averaged to
    about ``base_width``, then halved for each coarser level; ``used[i]`` (coarse to fine)
    says whether level ``i`` is iterated (unused levels are ``None``); ``bilateral_rel`` > 0
    filters the resampled depth (:func:`kernels.bilateral`).  Each level's ``fx_sensor`` is
    ``intrinsics.fx`` (the noise model's lateral term).  Also returns the
    number of valid depths at the finest level."""
    f = max(1, intrinsics.width // base_width)
    levels = []
    K = intrinsics
    for j in range(len(used)):
        d = downsample_depth(d, f)
        if j == 0 and bilateral_rel > 0:
            d = kernels.bilateral(d, 2, 1.5, float(bilateral_rel))
        K = scaled_to(K, d.shape[1], d.shape[0])
        levels.append((d, K))
        f = 2
    levels.reverse()  # coarse to fine
    last = len(levels) - 1
    out = [_points(d, K, finest_stride if i == last else 1) if used[i] else None
           for i, (d, K) in enumerate(levels)]
    for lvl in out:
        if lvl is not None:
            lvl.fx_sensor = float(intrinsics.fx)
    return out, int((levels[-1][0] > 0).sum())
