"""Ray casting of a :class:`~neural_mapping.grid.field.VoxelField` (model prediction, map pictures).

:func:`raycast` marches every pixel's ray through the field, vectorised over rays in torch
(any device), in three stages:

1. **Arguments** (:func:`_resolve`): the rays in the world, each ray's metric range
   ``[s_min, s_end]`` (``s`` is the metric length along the ray; depth (camera z) is
   ``s / |ray|`` with ``ray = ((u - cx) / fx, (v - cy) / fy, 1)``), and the per-pixel
   ``depth_range`` hint if given.
2. **Marching** (:func:`_march`): first in block steps on the block index alone up to the
   first allocated block (empty space is skipped in big steps, as Open3D does), then the
   fine march (``kernels.march``, TorchScript): each step reads the *nearest* voxel and
   advances by

   - ``block_size`` through unallocated blocks,
   - ``truncation`` through allocated but unobserved voxels,
   - ``max(step_fraction * sdf * truncation, voxel)`` through observed ones
     (sphere tracing on the truncated distance);

   a ray that leaves unknown space straight into an observed *negative* voxel after a big
   step has overshot the front half of the band: it backs up and continues in voxel steps
   (so big steps never skip a surface).  A ``+`` to ``-`` sign change between two observed
   samples is a hit (its bracket is kept); ``-`` to ``+`` (a back face) ends the ray as a
   miss.  The active rays are compacted after every step, so the cost follows the rays
   still marching; the last few are finished densely (``tail_fraction``).
3. **Refinement** (:func:`_refine`): hits are refined on the trilinear field
   (:func:`neural_mapping.grid.sampling.trilinear`): linear interpolation in the bracket,
   then one Newton step along the ray; the normal is the normalised trilinear gradient and
   the color the trilinear color at the refined point.

:func:`render_shaded` turns a result into a Lambertian-shaded RGB picture (Open3D's
offscreen renderer does not work headless here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from neural_mapping import kernels
from neural_mapping.grid.field import VoxelField
from neural_mapping.grid.sampling import index_args, trilinear
from neural_mapping.grid.workspace import workspace
from neural_mapping.types import CameraIntrinsics, check_pose

_BIG = 1.0e6


@dataclass
class RaycastResult:
    """Per-pixel model prediction (all tensors on the field's device).

    ``depth`` [H, W] camera z in metres (0 = miss); ``points_world`` [H, W, 3];
    ``normals_world`` [H, W, 3] unit (0 where invalid), pointing towards the
    camera side of the surface; ``color`` [H, W, 3] float 0..255 (0 where
    invalid or no color); ``valid`` [H, W] bool.
    """

    depth: torch.Tensor
    points_world: torch.Tensor
    normals_world: torch.Tensor
    color: torch.Tensor
    valid: torch.Tensor
    intrinsics: CameraIntrinsics
    T_world_cam: np.ndarray
    steps: int = 0


def raycast(field: VoxelField, intrinsics: CameraIntrinsics, T_world_cam, *,
            depth_min_m: float, depth_max_m: float, with_color: bool = True,
            depth_range: Optional[tuple] = None, march_unhinted: bool = True, fast: bool = False,
            weight_threshold: float = 0.0, step_fraction: float = 0.8, max_steps: int = 4096,
            tail_fraction: float = 0.02) -> RaycastResult:
    """Render depth / points / normals / color of ``field`` seen from ``T_world_cam``
    (4x4 camera-to-world) between camera depths ``depth_min_m`` and ``depth_max_m``.

    ``intrinsics`` may be a scaled copy (``intrinsics.scaled(0.5)``) to render at a lower
    resolution.  Voxels with ``weight <= weight_threshold`` count as unobserved.

    ``depth_range=(near, far)``: per-pixel ``[H, W]`` camera-z bounds (tensors or arrays)
    where the surface is known to lie, e.g. :func:`depth_range_from_depth` of the frame just
    integrated at this pose.  Rays with ``near > 0`` march only from ``near`` to ``far``
    (a handful of steps instead of the whole depth range); the others march as usual, or
    are misses with ``march_unhinted=False``.
    When at most ``tail_fraction`` of the rays are still marching, the rest of their
    range is sampled densely (every voxel) in a few batched passes instead.
    ``fast`` (the tracker's model view): normals (and validity) come from the trilinear
    gradient at the interpolated crossing, before the Newton step moves the point by a
    fraction of a voxel: one trilinear lookup per hit instead of two (color, if asked, at
    that crossing too).
    """
    rays = _resolve(field, intrinsics, T_world_cam, depth_min_m, depth_max_m, depth_range,
                    march_unhinted, with_color, fast, step_fraction)
    hits = _march(field, rays, weight_threshold, step_fraction, max_steps, tail_fraction)
    return _refine(field, rays, hits, with_color, fast)


# ------------------------------------------------------------------ 1. arguments
@dataclass
class _Rays:
    intrinsics: CameraIntrinsics
    T: np.ndarray  # checked 4x4 float64
    o: torch.Tensor  # [3] camera centre (world)
    dirs: torch.Tensor  # [3, N] unit directions (world)
    ray_norm: torch.Tensor  # [N] |ray| of the z = 1 ray: s = depth * ray_norm
    s_min: torch.Tensor  # [N] metric start of the range (depth_min_m)
    s_end: torch.Tensor  # [N] metric end of the range (depth_max_m or the hint's far)
    s_start: Optional[torch.Tensor]  # [N] hinted start (inf = no hint) or None
    act: torch.Tensor  # rays that march from s_min (all but the hinted ones)


def _camera_rays(intr: CameraIntrinsics, device: torch.device):
    """Unit ray directions ``[3, N]`` in the camera frame and ``|ray|`` ``[N]`` (z = 1 rays)."""

    def make():
        v, u = torch.meshgrid(torch.arange(intr.height, device=device, dtype=torch.float32),
                              torch.arange(intr.width, device=device, dtype=torch.float32),
                              indexing="ij")
        rays = torch.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy,
                            torch.ones_like(u)]).reshape(3, -1)
        norm = rays.norm(dim=0)
        return rays / norm, norm

    return workspace().cached(("cam_rays", intr, device), make)


def _resolve(field: VoxelField, intrinsics, T_world_cam, depth_min_m, depth_max_m, depth_range,
             march_unhinted, with_color, fast, step_fraction) -> _Rays:
    if not isinstance(field, VoxelField):
        raise TypeError(f"raycast needs a VoxelField, got {type(field).__name__}")
    if not isinstance(intrinsics, CameraIntrinsics):
        raise TypeError(f"intrinsics must be CameraIntrinsics, got {type(intrinsics).__name__}")
    if not (0 <= depth_min_m < depth_max_m):
        raise ValueError(f"need 0 <= depth_min_m < depth_max_m, got {depth_min_m}, {depth_max_m}")
    if not 0 < step_fraction <= 1:
        raise ValueError(f"step_fraction must be in (0, 1], got {step_fraction}")
    T = check_pose(T_world_cam.detach().cpu().numpy() if isinstance(T_world_cam, torch.Tensor)
                   else T_world_cam, "T_world_cam")
    device = field.device
    H, W = intrinsics.height, intrinsics.width
    N = H * W
    dirs_cam, ray_norm = _camera_rays(intrinsics, device)
    R = torch.as_tensor(T[:3, :3], dtype=torch.float32, device=device)
    o = torch.as_tensor(T[:3, 3], dtype=torch.float32, device=device)
    dirs = R @ dirs_cam  # [3, N] unit, world
    s_min = ray_norm * depth_min_m
    s_end = ray_norm * depth_max_m
    act = torch.arange(N, device=device)
    s_start = None
    if depth_range is not None:
        near, far = (torch.as_tensor(x, dtype=torch.float32, device=device).reshape(-1)
                     for x in depth_range)
        if near.numel() != N or far.numel() != N:
            raise ValueError(f"depth_range maps must be {H}x{W}")
        hinted = (near > 0) & (far >= near)
        near = near.clamp(min=depth_min_m)
        s_start = torch.where(hinted, near * ray_norm, torch.full_like(s_min, float("inf")))
        s_end = torch.where(hinted, torch.minimum(far.clamp(min=0) * ray_norm, s_end), s_end)
        act = (~hinted).nonzero().squeeze(1) if march_unhinted else act[:0]
    return _Rays(intrinsics, T, o, dirs, ray_norm, s_min, s_end, s_start, act)


# ------------------------------------------------------------------ 2. marching
@dataclass
class _Hits:
    hit: torch.Tensor  # [N] bool
    a: torch.Tensor  # [N] bracket [a, b] (metres along the ray) of the sign change
    b: torch.Tensor
    ta: torch.Tensor  # [N] nearest-voxel sdf at a and b
    tb: torch.Tensor
    steps: int


def _skip_empty(field: VoxelField, rays: _Rays, max_steps: int) -> Tuple[torch.Tensor, int]:
    """March in block steps on the block index alone (cheap) up to the first allocated
    block: ``s_first`` ``[N]`` (inf where none is met, or the ray is not marched) and the
    step count."""
    grid = field.grid
    block = grid.block_size_m
    o_b = (rays.o / block)[:, None]
    act = rays.act
    s = rays.s_min.index_select(0, act)
    s_first = torch.full_like(rays.s_min, float("inf"))
    steps = 0
    while act.numel() > 0 and steps < max_steps:
        steps += 1
        b = torch.addcmul(o_b, rays.dirs.index_select(1, act), s[None, :], value=1.0 / block)
        b = b.floor_().to(torch.int32)
        found = grid.lookup_xyz(b[0], b[1], b[2]) >= 0
        s_first.index_copy_(0, act, torch.where(found, s, s_first.index_select(0, act)))
        s = s + block
        keep = (~found & (s <= rays.s_end.index_select(0, act))).nonzero().squeeze(1)
        act = act.index_select(0, keep)
        s = s.index_select(0, keep)
    return s_first, steps


def _march(field: VoxelField, rays: _Rays, weight_threshold: float, step_fraction: float,
           max_steps: int, tail_fraction: float) -> _Hits:
    """Empty-space skip, then the fine march (``kernels.march``) from one block step before
    the first allocated block (or from the hinted near bound)."""
    grid = field.grid
    device = field.device
    vs = grid.voxel_size_m
    block = grid.block_size_m
    trunc = float(field.truncation_m)
    s_first, steps = _skip_empty(field, rays, max_steps)
    s_first = torch.maximum(s_first - block, rays.s_min)
    if rays.s_start is not None:
        s_first = torch.where(torch.isfinite(rays.s_start), rays.s_start, s_first)
    act = torch.isfinite(s_first).nonzero().squeeze(1)
    s0 = s_first.index_select(0, act)
    # State rows: s, prev_t (NaN = unknown), prev_s, last_step, s_end, unknown_step, dir (3).
    S = torch.empty(9, act.numel(), device=device)
    S[0] = s0
    S[1] = float("nan")
    S[2] = s0
    S[3] = 0.0
    S[4] = rays.s_end.index_select(0, act)
    S[5] = trunc  # approach in truncation steps until the first allocated voxel
    S[6:9] = rays.dirs.index_select(1, act) * (1.0 / vs)
    o_v = (rays.o * (1.0 / vs))[:, None]
    N = rays.s_min.numel()
    hits = _Hits(torch.zeros(N, dtype=torch.bool, device=device), *(torch.zeros(N, device=device)
                                                                     for _ in range(4)), 0)
    tail_rays = max(64, int(tail_fraction * N))
    # The loop runs in TorchScript (kernels.py): without the GIL, a few dozen small ops per step.
    hits.steps = kernels.march(*index_args(grid), field.sdf.view(-1), field.weight.view(-1),
                               float(weight_threshold), o_v, S, act, vs, block, trunc,
                               step_fraction * trunc, steps, max_steps, tail_rays, 32,
                               hits.hit, hits.a, hits.b, hits.ta, hits.tb)
    return hits


# ------------------------------------------------------------------ 3. refinement
def _refine(field: VoxelField, rays: _Rays, hits: _Hits, with_color: bool, fast: bool) -> RaycastResult:
    """Linear interpolation of each hit's bracket, then one Newton step along the ray on the
    trilinear field (kept only when it stays within a voxel of the bracket); normal = the
    normalised trilinear gradient (at the interpolated crossing with ``fast``)."""
    device = field.device
    vs = field.voxel_size_m
    o, dirs, ray_norm = rays.o, rays.dirs, rays.ray_norm
    N = ray_norm.numel()
    ids = hits.hit.nonzero().squeeze(1)
    sa, sb = hits.a[ids], hits.b[ids]
    dsel = dirs.index_select(1, ids)

    def tri_at(sv, **kw):
        return trilinear(field, torch.addcmul(o[:, None], dsel, sv[None, :]), **kw)

    ta, tb = hits.ta[ids], hits.tb[ids]
    s1 = sa + (sb - sa) * (ta / (ta - tb).clamp_min(1e-12))
    r1 = tri_at(s1, with_grad=True, with_color=with_color and fast)
    slope = (r1["grad"] * dsel).sum(dim=0)  # d sdf / d s, negative towards a surface
    sn = s1 - r1["sdf"] / torch.where(slope < 0, slope, -1.0)
    sm = torch.where((slope < 0) & (sn >= sa - vs) & (sn <= sb + vs), sn, s1)
    fin = r1 if fast else tri_at(sm, with_grad=True, with_color=with_color)
    g = fin["grad"]
    gn = (g[0] * g[0] + g[1] * g[1] + g[2] * g[2]).sqrt_()
    good = (fin["weight"] > 0) & (gn > 0)
    normals = g / gn.clamp_min(1e-12)

    depth = torch.zeros(N, device=device)
    pts = torch.zeros(3, N, device=device)
    nrm = torch.zeros(3, N, device=device)
    col = torch.zeros(N, 3, device=device)
    valid = torch.zeros(N, dtype=torch.bool, device=device)
    ids = ids[good]
    sm = sm[good]
    depth[ids] = sm / ray_norm[ids]
    pts[:, ids] = torch.addcmul(o[:, None], dirs.index_select(1, ids), sm[None, :])
    nrm[:, ids] = normals[:, good]
    if with_color and "color" in fin:
        col[ids] = fin["color"][good]
    valid[ids] = True
    H, W = rays.intrinsics.height, rays.intrinsics.width
    return RaycastResult(depth=depth.view(H, W), points_world=pts.T.reshape(H, W, 3),
                         normals_world=nrm.T.reshape(H, W, 3), color=col.view(H, W, 3),
                         valid=valid.view(H, W), intrinsics=rays.intrinsics, T_world_cam=rays.T,
                         steps=hits.steps)


def depth_range_from_depth(depth, intrinsics: CameraIntrinsics, margin_m: float,
                           dilate_px: int = 1) -> tuple:
    """Per-pixel ``(near, far)`` camera-z bounds at ``intrinsics``' resolution from a depth
    image (any resolution that is an integer multiple of it; 0 or non-finite = invalid):
    the min / max valid depth of each pixel's block widened by ``margin_m``; a pixel whose
    block has no valid depth takes its ``dilate_px`` neighbours' range, else ``near = 0``
    (no hint).  For :func:`raycast`'s ``depth_range`` at the pose the depth was taken from:
    the map was just fused with this depth, so its surface there lies within these bounds."""
    d = depth if isinstance(depth, torch.Tensor) else torch.as_tensor(np.asarray(depth))
    d = d.to(torch.float32)
    H, W = intrinsics.height, intrinsics.width
    fy, fx = d.shape[0] // H, d.shape[1] // W
    if fy < 1 or fx < 1 or d.shape[0] != fy * H or d.shape[1] != fx * W:
        raise ValueError(f"depth {tuple(d.shape)} is not an integer multiple of {H}x{W}")
    d = torch.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0).clamp_min_(0.0)

    def block(x, op):  # (H*fy, W*fx) -> (H, W) reduction of each fy x fx block
        return op(op(x.reshape(H * fy, W, fx), 2).reshape(H, fy, W), 1)

    hi = block(d, torch.amax)  # 0 where the block has no valid depth
    lo = block(torch.where(d > 0, d, _BIG), torch.amin)  # _BIG where none
    own = hi > 0
    if dilate_px > 0:  # pixels without a valid depth of their own take their neighbours'
        k = 2 * dilate_px + 1
        pool = torch.nn.functional.max_pool2d
        hi_n = pool(hi[None, None], k, 1, dilate_px)[0, 0]
        lo_n = -pool(-lo[None, None], k, 1, dilate_px)[0, 0]
        hi = torch.where(own, hi, hi_n)
        lo = torch.where(own, lo, lo_n)
    ok = hi > 0
    near = torch.where(ok, (lo - margin_m).clamp(min=1e-3), 0.0)
    far = torch.where(ok, hi + margin_m, 0.0)
    return near, far


def render_shaded(result: RaycastResult, light_dir: Optional[Sequence[float]] = None,
                  use_color: bool = True, ambient: float = 0.25,
                  background: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """Lambertian shading of a raycast: ``[H, W, 3]`` uint8.

    ``light_dir`` is a direction *towards* the light in the camera frame
    (default: from the camera, slightly above-left, a headlight).  With
    ``use_color`` and a non-black fused color, the shade multiplies the color;
    otherwise a light grey is shaded.
    """
    if light_dir is None:
        light_dir = (-0.3, -0.4, -1.0)
    ld = np.asarray(light_dir, dtype=np.float64)
    if ld.shape != (3,) or not np.isfinite(ld).all() or np.linalg.norm(ld) == 0:
        raise ValueError(f"light_dir must be a non-zero 3-vector, got {light_dir!r}")
    ld = ld / np.linalg.norm(ld)
    R = np.asarray(result.T_world_cam, dtype=np.float64)[:3, :3]
    ld_world = torch.as_tensor(R @ ld, dtype=torch.float32, device=result.normals_world.device)
    lam = (result.normals_world @ ld_world).clamp_min(0.0)
    shade = (ambient + (1.0 - ambient) * lam)[..., None]
    base = torch.full_like(result.color, 200.0)
    if use_color:
        has_color = result.color.amax(dim=-1, keepdim=True) > 0
        base = torch.where(has_color, result.color, base)
    img = (base * shade).clamp(0, 255)
    bg = torch.as_tensor(background, dtype=torch.float32, device=img.device)
    img = torch.where(result.valid[..., None], img, bg)
    return img.round().to(torch.uint8).cpu().numpy()
