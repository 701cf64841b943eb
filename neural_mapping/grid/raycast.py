"""Ray casting of a TSDF voxel-block grid (model prediction, map pictures).

:func:`raycast` marches every pixel's ray through the grid, vectorised over
rays in torch (any device):

* the ray is parametrised by its metric length ``s``; depth (camera z) is
  ``s / |ray|`` with ``ray = ((u - cx) / fx, (v - cy) / fy, 1)``;
* each step reads the *nearest* voxel (one block-index gather and one attribute
  gather per ray), and advances by

  - ``block_size`` through unallocated blocks (empty space is skipped in big
    steps, as Open3D does),
  - ``truncation`` through allocated but unobserved voxels,
  - ``max(step_fraction * tsdf * truncation, voxel)`` through observed ones
    (sphere tracing on the truncated distance);

  a ray that leaves unknown space straight into an observed *negative* voxel
  after a big step has overshot the front half of the band: it backs up and
  continues in voxel steps (so big steps never skip a surface);
* a ``+`` to ``-`` sign change between two observed samples is a hit; ``-`` to
  ``+`` (a back face) ends the ray as a miss;
* hits are refined on the trilinear TSDF: linear interpolation in the bracket,
  then one regula-falsi step; the normal is the normalised trilinear gradient
  and the color the trilinear color at the refined point.

The active rays are compacted after every step, so the cost follows the rays
still marching.  :func:`render_shaded` turns a result into a Lambertian-shaded
RGB picture (Open3D's offscreen renderer does not work headless here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

from neural_mapping import kernels
from neural_mapping.grid.voxel_grid import VoxelBlockGrid
from neural_mapping.backends.tsdf.volume import TSDFVolume, _workspace, trilinear
from neural_mapping.types import CameraIntrinsics, check_pose
_BIG = 1.0e6


@dataclass
class RaycastResult:
    """Per-pixel model prediction (all tensors on the grid's device).

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

    def to_numpy(self) -> dict:
        return {k: getattr(self, k).detach().cpu().numpy()
                for k in ("depth", "points_world", "normals_world", "color", "valid")}


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

    return _workspace().cached(("cam_rays", intr, device), make)


def raycast(source: Union[TSDFVolume, VoxelBlockGrid], intrinsics: CameraIntrinsics,
            T_world_cam, *, depth_min_m: Optional[float] = None,
            depth_max_m: Optional[float] = None, truncation_m: Optional[float] = None,
            weight_threshold: float = 0.0, step_fraction: float = 0.8,
            max_steps: int = 4096, with_color: bool = True,
            depth_range: Optional[tuple] = None, march_unhinted: bool = True,
            tail_fraction: float = 0.02, one_lookup: bool = False) -> RaycastResult:
    """Render depth / points / normals / color of the TSDF seen from ``T_world_cam``.

    ``source`` is a :class:`TSDFVolume` (its depth range and truncation are the
    defaults) or a bare :class:`VoxelBlockGrid` (then ``truncation_m`` and the
    depth range are required).  ``intrinsics`` may be a scaled copy
    (``intrinsics.scaled(0.5)``) to render at a lower resolution.
    Voxels with ``weight <= weight_threshold`` count as unobserved.

    ``depth_range=(near, far)``: per-pixel ``[H, W]`` camera-z bounds (tensors or arrays)
    where the surface is known to lie, e.g. :func:`depth_range_from_depth` of the frame just
    integrated at this pose.  Rays with ``near > 0`` march only from ``near`` to ``far``
    (a handful of steps instead of the whole depth range); the others march as usual, or
    are misses with ``march_unhinted=False``.
    When at most ``tail_fraction`` of the rays are still marching, the rest of their
    range is sampled densely (every voxel) in a few batched passes instead.
    ``one_lookup``: normals (and validity) come from the trilinear gradient at the
    interpolated crossing, before the Newton step moves the point by a fraction of a voxel:
    one trilinear lookup per hit instead of two (no color; the tracker's choice).
    """
    if isinstance(source, TSDFVolume):
        grid = source.grid
        depth_min_m = source.depth_min_m if depth_min_m is None else depth_min_m
        depth_max_m = source.depth_max_m if depth_max_m is None else depth_max_m
        truncation_m = source.truncation_m if truncation_m is None else truncation_m
    elif isinstance(source, VoxelBlockGrid):
        grid = source
        if truncation_m is None or depth_min_m is None or depth_max_m is None:
            raise ValueError("raycast of a bare grid needs truncation_m, depth_min_m and depth_max_m")
    else:
        raise TypeError(f"source must be a TSDFVolume or VoxelBlockGrid, got {type(source).__name__}")
    if not isinstance(intrinsics, CameraIntrinsics):
        raise TypeError(f"intrinsics must be CameraIntrinsics, got {type(intrinsics).__name__}")
    if not (truncation_m > 0 and 0 <= depth_min_m < depth_max_m):
        raise ValueError(f"need truncation_m > 0 and 0 <= depth_min_m < depth_max_m, got "
                         f"{truncation_m}, {depth_min_m}, {depth_max_m}")
    if one_lookup and with_color:
        raise ValueError("one_lookup renders no color (with_color=False)")
    if not 0 < step_fraction <= 1:
        raise ValueError(f"step_fraction must be in (0, 1], got {step_fraction}")
    T = check_pose(T_world_cam.detach().cpu().numpy() if isinstance(T_world_cam, torch.Tensor)
                   else T_world_cam, "T_world_cam")
    device = grid.device
    H, W = intrinsics.height, intrinsics.width
    N = H * W
    vs = grid.voxel_size_m
    inv_vs = 1.0 / vs

    dirs_cam, ray_norm = _camera_rays(intrinsics, device)
    R = torch.as_tensor(T[:3, :3], dtype=torch.float32, device=device)
    o = torch.as_tensor(T[:3, 3], dtype=torch.float32, device=device)
    dirs = R @ dirs_cam  # [3, N] unit, world
    block = grid.block_size_m
    tsdf_pool = grid.attrs["tsdf"].view(-1)
    weight_pool = grid.attrs["weight"].view(-1)
    s_end = ray_norm * depth_max_m

    # ---- 1. empty space: march in block steps on the block index alone (cheap) up to
    #         the first allocated block; the fine march starts one step before it.
    o_b = (o / block)[:, None]
    act = torch.arange(N, device=device)
    s = ray_norm * depth_min_m
    s_first = torch.full((N,), float("inf"), device=device)
    s_start = None
    if depth_range is not None:
        near, far = (torch.as_tensor(x, dtype=torch.float32, device=device).reshape(-1)
                     for x in depth_range)
        if near.numel() != N or far.numel() != N:
            raise ValueError(f"depth_range maps must be {H}x{W}")
        hinted = (near > 0) & (far >= near)
        near = near.clamp(min=depth_min_m)
        s_start = torch.where(hinted, near * ray_norm, s_first)  # inf = no hint
        s_end = torch.where(hinted, torch.minimum(far.clamp(min=0) * ray_norm, s_end), s_end)
        act = (~hinted).nonzero().squeeze(1) if march_unhinted else act[:0]
        s = s.index_select(0, act)
    steps = 0
    while act.numel() > 0 and steps < max_steps:
        steps += 1
        b = torch.addcmul(o_b, dirs.index_select(1, act), s[None, :], value=1.0 / block)
        b = b.floor_().to(torch.int32)
        found = grid.lookup_xyz(b[0], b[1], b[2]) >= 0
        s_first.index_copy_(0, act, torch.where(found, s, s_first.index_select(0, act)))
        s = s + block
        keep = (~found & (s <= s_end.index_select(0, act))).nonzero().squeeze(1)
        act = act.index_select(0, keep)
        s = s.index_select(0, keep)

    # ---- 2. fine march from one block step before the first allocated block
    #         (or from the hinted near bound).
    s_first = torch.maximum(s_first - block, ray_norm * depth_min_m)
    if s_start is not None:
        s_first = torch.where(torch.isfinite(s_start), s_start, s_first)
    act = torch.isfinite(s_first).nonzero().squeeze(1)
    s0 = s_first.index_select(0, act)
    nan = float("nan")
    # State rows: s, prev_t (NaN = unknown), prev_s, last_step, s_end, unknown_step, dir (3).
    K = act.numel()
    S = torch.empty(9, K, device=device)
    S[0] = s0
    S[1] = nan
    S[2] = s0
    S[3] = 0.0
    S[4] = s_end.index_select(0, act)
    S[5] = truncation_m  # approach in truncation steps until the first allocated voxel
    S[6:9] = dirs.index_select(1, act) * inv_vs
    o_v = (o * inv_vs)[:, None]

    hit = torch.zeros(N, dtype=torch.bool, device=device)
    hit_a = torch.zeros(N, device=device)  # bracket [hit_a, hit_b] (metres along the ray)
    hit_b = torch.zeros(N, device=device)
    hit_ta = torch.zeros(N, device=device)
    hit_tb = torch.zeros(N, device=device)
    step_obs = step_fraction * truncation_m
    tail_rays = max(64, int(tail_fraction * N))
    # The loop runs in TorchScript (kernels.py): without the GIL, a few dozen small ops per step.
    steps = kernels.march(grid._index.view(-1), list(grid._index_origin_list), list(grid._index_shape),
                          grid.block_size, grid.voxel_index_dtype != torch.int32, tsdf_pool,
                          weight_pool, float(weight_threshold), o_v, S, act, vs, block,
                          float(truncation_m), step_obs, steps, max_steps, tail_rays, 32,
                          hit, hit_a, hit_b, hit_ta, hit_tb)

    # ---- refine hits on the trilinear field
    ids = hit.nonzero().squeeze(1)
    sa, sb = hit_a[ids], hit_b[ids]
    dsel = dirs.index_select(1, ids)

    def tri_at(sv, **kw):
        return trilinear(grid, torch.addcmul(o[:, None], dsel, sv[None, :]), **kw)

    # Linear interpolation of the bracket's nearest-voxel samples, then one Newton
    # step along the ray on the trilinear field (kept only when it stays in the bracket).
    ta, tb = hit_ta[ids], hit_tb[ids]
    s1 = sa + (sb - sa) * (ta / (ta - tb).clamp_min(1e-12))
    r1 = tri_at(s1, with_grad=True)
    slope = (r1["grad"] * dsel).sum(dim=0)  # d tsdf / d s, negative towards a surface
    sn = s1 - r1["tsdf"] / torch.where(slope < 0, slope, -1.0)
    sm = torch.where((slope < 0) & (sn >= sa - vs) & (sn <= sb + vs), sn, s1)
    fin = r1 if one_lookup else tri_at(sm, with_grad=True, with_color=with_color)
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
    return RaycastResult(depth=depth.view(H, W), points_world=pts.T.reshape(H, W, 3),
                         normals_world=nrm.T.reshape(H, W, 3), color=col.view(H, W, 3),
                         valid=valid.view(H, W), intrinsics=intrinsics, T_world_cam=T, steps=steps)


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
