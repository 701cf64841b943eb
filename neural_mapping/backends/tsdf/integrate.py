"""TSDF fusion into a :class:`~neural_mapping.grid.voxel_grid.VoxelBlockGrid`: the kernel.

:func:`integrate` takes tensors and returns stats (any device); the backend class around
it is :class:`neural_mapping.backends.tsdf.volume.TSDFVolume` (numpy in, checks at the
boundary).

Per frame
    1. **Allocation.**  Every ``alloc_stride``-th pixel (default 4, as Open3D)
       with valid depth ``d`` is back-projected at ``alloc_samples`` depths evenly spread over
       ``[d - truncation, d + truncation]`` (camera z), and the blocks holding
       those points are marked in a dense box that spans just this frame
       (scatter + ``nonzero``: O(points + box), no sort over the points).
       Those blocks are allocated if new; they are the blocks updated below.
       ``bench/bench_integration.py --coverage`` measures what the stride costs
       against exhaustive allocation (every pixel, samples every half voxel).
    2. **Projective update** over all voxels of those blocks, as Open3D and
       KinectFusion do it: the voxel centre is projected, the *nearest* pixel's
       depth is read, ``sdf = depth - z_voxel`` (along the optical axis).
       Voxels whose pixel is outside the image, invalid (0, NaN, outside
       ``[depth_min_m, depth_max_m]``) or with ``sdf < -truncation`` are left
       untouched (bit for bit).  Otherwise, with ``v = clamp(sdf / truncation, -1, 1)``
       and observation weight ``w = 1``::

           V_t = (W V + w v) / (W + w)        (computed as V + w (v - V) / (W + w))
           W_t = min(W + w, max_weight)
           C_t = (W C + w c) / (W + w)        (color, same weights)

       The max-weight rule: the stored weight saturates at ``max_weight`` while
       the average keeps using ``W + w``, so past saturation each new frame has
       a fixed share ``1 / (max_weight + 1)`` (an exponential moving average):
       the map keeps adapting to change instead of freezing.

Speed (CPU): the whole update is ~30 elementwise torch ops over the touched
voxels, all writing into per-thread reused buffers (no allocation, no page
faults), no boolean masks or compaction (masks are 0/1 float weights, so an
untouched voxel gets ``+ 0``), one ``index_select`` per image (depth; color
packed as one int32 per pixel), pixel coordinates found with a padded image
(the one-pixel border holds "invalid", so a clamp replaces bounds tests) and
voxel camera coordinates built from per-block + per-offset parts (two tiny
matmuls instead of one per voxel).  Torch releases the GIL inside every op.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch

from neural_mapping.backends.tsdf.robust import carve_slots
from neural_mapping.grid.voxel_grid import VoxelBlockGrid, voxel_offsets
from neural_mapping.grid.workspace import workspace
from neural_mapping.types import CameraIntrinsics

# Depth value written into invalid pixels of the padded image: far enough below
# any voxel that ``sdf < -truncation`` (so weight 0), small enough that every
# derived quantity stays finite (``0 * x`` must be exactly 0, never NaN).
_INVALID_DEPTH = -1.0e6
# Voxels with camera z below this are treated as behind the camera.
_MIN_Z = 1.0e-6

TensorOrArray = Union[torch.Tensor, np.ndarray]


# ============================================================================ helpers
def _as_tensor(x: TensorOrArray, device: torch.device, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a numpy array or torch tensor, got {type(x).__name__}")
    x = x.to(device=device, non_blocking=True)
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    return x


def valid_depth(d: torch.Tensor, depth_min_m: float, depth_max_m: float) -> torch.Tensor:
    # NaN fails every comparison, so it is invalid as well.
    return (d > 0) & (d >= depth_min_m) & (d <= depth_max_m)


def pixel_rays(intr: CameraIntrinsics, stride: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rays ``[3, N]`` (camera, z = 1) and flat pixel indices ``[N]`` of the strided pixels."""
    key = ("rays", intr, stride, device)

    def make():
        o = stride // 2
        v, u = torch.meshgrid(torch.arange(o, intr.height, stride, device=device),
                              torch.arange(o, intr.width, stride, device=device), indexing="ij")
        rays = torch.stack([(u.float() - intr.cx) / intr.fx, (v.float() - intr.cy) / intr.fy,
                            torch.ones_like(u, dtype=torch.float32)], dim=0).reshape(3, -1)
        return rays, (v * intr.width + u).reshape(-1)

    return workspace().cached(key, make)


def touched_blocks(grid: VoxelBlockGrid, depth: torch.Tensor, intr: CameraIntrinsics,
                   T_world_cam: torch.Tensor, *, truncation_m: float, depth_min_m: float,
                   depth_max_m: float, stride: int = 4, samples: Optional[int] = None,
                   max_box_cells: int = 1 << 24) -> torch.Tensor:
    """Unique block coordinates ``[M, 3]`` int32 touched by the truncation band of ``depth``.

    Every ``stride``-th pixel (both axes) with valid depth ``d`` contributes
    ``samples`` points evenly spread over camera z in ``[d - trunc, d + trunc]``
    (default: at most a third of a block apart; 4 at the default truncation of half a
    block, as Open3D, whose stride is also 4).  The blocks are marked in a dense
    box around the frame's frustum (bounded by the 8 corners of the image
    frustum between the nearest and farthest sampled depth, +- trunc).
    """
    device = grid.device
    rays, pix = pixel_rays(intr, stride, device)
    d = depth.reshape(-1).index_select(0, pix)
    keep = valid_depth(d, depth_min_m, depth_max_m).nonzero().squeeze(1)
    if keep.numel() == 0:
        return torch.empty((0, 3), dtype=torch.int32, device=device)
    d = d.index_select(0, keep)
    if samples is None:
        samples = int(math.ceil(2.0 * truncation_m / (grid.block_size_m / 3.0))) + 1
    samples = max(int(samples), 2)
    inv_b = 1.0 / grid.block_size_m
    T = T_world_cam.to(torch.float64)
    # Frame box in block units, from the frustum corners at the extreme depths.
    dr = torch.stack([d.min(), d.max()]).to(torch.float64).cpu()
    z0 = max(float(dr[0]) - truncation_m, 0.0)
    z1 = float(dr[1]) + truncation_m
    W, H = intr.width, intr.height
    cu = torch.tensor([(-0.5 - intr.cx) / intr.fx, (W - 0.5 - intr.cx) / intr.fx], dtype=torch.float64)
    cv = torch.tensor([(-0.5 - intr.cy) / intr.fy, (H - 0.5 - intr.cy) / intr.fy], dtype=torch.float64)
    corners = torch.cartesian_prod(cu, cv, torch.tensor([1.0], dtype=torch.float64))
    corners = torch.cat([corners * z0, corners * z1])  # [8, 3] camera
    Tc = T.cpu()
    wc = (corners @ Tc[:3, :3].T + Tc[:3, 3]) * inv_b
    lo = torch.floor(wc.min(dim=0).values) - 1  # -1: float32 slack on the far side
    ext = (torch.floor(wc.max(dim=0).values) + 1 - lo + 1).to(torch.int64).tolist()
    cells = ext[0] * ext[1] * ext[2]
    # Per axis a: p_a = (t_a/b - lo_a) + z * dir_a >= 0, so truncation to int is floor.
    dirs = (T[:3, :3].to(torch.float32) * inv_b) @ rays.index_select(1, keep)  # [3, N]
    base = (T[:3, 3] * inv_b - lo.to(device)).to(torch.float32)
    lin = torch.linspace(-truncation_m, truncation_m, samples, device=device)
    n = d.shape[0]
    zs = ws_get("alloc_z", n * samples, torch.float32, device).view(n, samples)
    torch.add(d[:, None], lin[None, :], out=zs)
    flat = ws_get("alloc_f", n * samples, torch.float32, device).view(n, samples)
    tmp = ws_get("alloc_t", n * samples, torch.float32, device).view(n, samples)
    torch.mul(zs, dirs[0][:, None], out=flat)
    flat.add_(float(base[0])).floor_().mul_(float(ext[1] * ext[2]))
    torch.mul(zs, dirs[1][:, None], out=tmp)
    tmp.add_(float(base[1])).floor_()
    flat.add_(tmp, alpha=float(ext[2]))
    torch.mul(zs, dirs[2][:, None], out=tmp)
    tmp.add_(float(base[2])).floor_()
    flat.add_(tmp)
    if cells > max_box_cells:  # pathological extent (huge depth range): sort-based unique
        f = torch.unique(flat.to(torch.int64))
    else:
        idx = flat.view(-1).to(torch.int64)
        mark = torch.zeros(cells, dtype=torch.uint8, device=device)
        mark.index_fill_(0, idx, 1)
        f = mark.nonzero().squeeze(1)
    s1 = ext[1] * ext[2]
    out = torch.stack([f // s1, (f // ext[2]) % ext[1], f % ext[2]], dim=1)
    return (out + lo.to(device=device, dtype=torch.int64)).to(torch.int32)


def ws_get(name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return workspace().get(name, numel, dtype, device)


# ============================================================================ kernel
def integrate(grid: VoxelBlockGrid, depth: TensorOrArray, intrinsics: CameraIntrinsics,
              T_world_cam: TensorOrArray, color: Optional[TensorOrArray] = None, *,
              truncation_m: float, depth_min_m: float, depth_max_m: float, max_weight: float,
              integrate_color: bool = True, alloc_stride: int = 4,
              alloc_samples: Optional[int] = None, carve_stride: int = 0,
              carve_below_weight: float = 0.0) -> Dict[str, int]:
    """Fuse one depth (and color) image into ``grid``. See the module docstring.

    ``depth``: [H, W] float32 metres (0 / NaN invalid); ``color``: [H, W, 3] uint8
    RGB or None; ``T_world_cam``: 4x4 camera-to-world.  Returns
    ``{"blocks_touched", "blocks_new", "blocks_total", "slots"}``; ``slots`` (int64 tensor on
    the grid's device) are the blocks whose voxels this frame may have changed (for meshing).
    Raises :class:`~neural_mapping.grid.voxel_grid.CapacityError` (map unchanged) when the
    grid would exceed its capacity.  ``carve_stride > 0``: the allocated blocks crossed by the
    free part of every ``carve_stride``-th pixel's ray (and below ``carve_below_weight``) are updated too
    (:func:`~neural_mapping.backends.tsdf.robust.carve_slots`; robust fusion).
    """
    device = grid.device
    H, W = intrinsics.height, intrinsics.width
    if tuple(depth.shape) != (H, W):
        raise ValueError(f"depth is {tuple(depth.shape)} but intrinsics are {H}x{W} (rows x cols)")
    if not truncation_m > 0:
        raise ValueError(f"truncation_m must be > 0, got {truncation_m}")
    if not max_weight >= 1:
        raise ValueError(f"max_weight must be >= 1, got {max_weight}")
    use_color = bool(integrate_color and color is not None and "color" in grid.attrs)
    if use_color and tuple(color.shape) != (H, W, 3):
        raise ValueError(f"color must be ({H}, {W}, 3), got {tuple(color.shape)}")
    ws = workspace()
    d = _as_tensor(depth, device, torch.float32)
    T_np = _pose_numpy(T_world_cam)
    T = torch.as_tensor(T_np, device=device)

    # ---- 1. allocation
    coords = touched_blocks(grid, d, intrinsics, T, truncation_m=truncation_m,
                            depth_min_m=depth_min_m, depth_max_m=depth_max_m,
                            stride=alloc_stride, samples=alloc_samples)
    n_before = grid.num_blocks
    carve = None
    if carve_stride > 0 and coords.shape[0] > 0:
        carve = carve_slots(grid, d, intrinsics, T, truncation_m=truncation_m, depth_min_m=depth_min_m,
                            depth_max_m=depth_max_m, stride=carve_stride, below_weight=carve_below_weight)
    if coords.shape[0] == 0:
        return {"blocks_touched": 0, "blocks_new": 0, "blocks_total": n_before,
                "slots": torch.empty(0, dtype=torch.int64, device=device)}
    coords, slots = grid.allocate(coords)
    if carve is not None and carve.numel():
        slots = torch.unique(torch.cat([slots, carve]))
        coords = grid.block_coords.index_select(0, slots)
    nb = int(slots.shape[0])
    B = grid.block_size
    nv = B ** 3
    n = nb * nv
    inv_t = 1.0 / truncation_m

    # ---- 2. padded depth / truncation: one invalid pixel all around, so a clamp
    #         replaces bounds tests.  Everything below is in units of the truncation.
    Wp = W + 2
    dpad = ws.cached(("dpad", H, W, device),
                     lambda: torch.full((H + 2, Wp), _INVALID_DEPTH, dtype=torch.float32, device=device))
    inner = dpad[1:-1, 1:-1]
    # Valid iff clamping into [depth_min, depth_max] (min > 0) leaves it unchanged: one
    # compare instead of three and two ANDs (NaN compares unequal to itself).
    torch.clamp(d, max(depth_min_m, 1e-6), depth_max_m, out=inner)
    valid = torch.eq(inner, d)
    scaled = ws.get("dscaled", H * W, torch.float32, device).view(H, W)
    torch.mul(d, inv_t, out=scaled)
    inv_depth = ws.cached(("invalid", device), lambda: torch.tensor(_INVALID_DEPTH, device=device))
    torch.where(valid, scaled, inv_depth, out=inner)

    # ---- 3. voxel centres in "pixel-numerator" coordinates (U, V, Z) / truncation, with
    #         U/Z = u + 1.5 (padded column, + 0.5 so that truncation rounds to the nearest
    #         pixel), from per-block and per-offset parts.
    R, t = T_np[:3, :3], T_np[:3, 3]
    Kp = np.array([[intrinsics.fx, 0.0, intrinsics.cx + 1.5],
                   [0.0, intrinsics.fy, intrinsics.cy + 1.5],
                   [0.0, 0.0, 1.0]])
    M = torch.as_tensor((Kp @ R.T) * inv_t, device=device)  # world offset -> (U, V, Z) / trunc
    vs = grid.voxel_size_m
    offs = ws.cached(("offs", B, device), lambda: voxel_offsets(B, device).to(torch.float64))
    q_off = ((offs * vs) @ M.T).to(torch.float32).T.contiguous()  # [3, B^3]
    centre0 = (coords.to(torch.float64) * B + 0.5) * vs - torch.as_tensor(t, device=device)
    q_blk = (centre0 @ M.T).to(torch.float32).T.contiguous()  # [3, nb]

    U = ws.get("U", n, torch.float32, device).view(nb, nv)
    Vr = ws.get("V", n, torch.float32, device).view(nb, nv)
    Z = ws.get("Z", n, torch.float32, device).view(nb, nv)
    torch.add(q_blk[0][:, None], q_off[0][None, :], out=U)
    torch.add(q_blk[1][:, None], q_off[1][None, :], out=Vr)
    torch.add(q_blk[2][:, None], q_off[2][None, :], out=Z)
    zmin = _MIN_Z * inv_t
    if device.type != "cpu" or float(q_blk[2].min() + q_off[2].min()) <= zmin:
        # Voxels at or behind the camera plane: send them to the invalid border.
        U.masked_fill_(Z <= zmin, -1.0)
        Z.clamp_min_(zmin)
    U.div_(Z).clamp_(0.0, W + 1.0).floor_()
    Vr.div_(Z).clamp_(0.0, H + 1.0).floor_()
    torch.add(U, Vr, alpha=float(Wp), out=U)  # flat padded pixel index, exact in float32
    pix = ws.get("pix", n, torch.int32, device)
    pix.copy_(U.view(-1))

    # ---- 4. observation v = clamp(sdf / trunc, max=1) (in `obs`) and weight w = [sdf >= -trunc]
    obs = ws.get("obs", n, torch.float32, device)
    torch.index_select(dpad.view(-1), 0, pix, out=obs)
    obs = obs.view(nb, nv)
    obs.sub_(Z)
    w = Vr  # reuse (dead)
    torch.ge(obs, -1.0, out=w)
    obs.clamp_max_(1.0)

    # ---- 5. fuse: V += f (v - V) with f = w / (W + w), W = min(W + w, max_weight)
    tsdf_pool = grid.attrs["tsdf"].view(grid.capacity, nv)
    weight_pool = grid.attrs["weight"].view(grid.capacity, nv)
    Vold = ws.get("Vold", n, torch.float32, device).view(nb, nv)
    Wold = ws.get("Wold", n, torch.float32, device).view(nb, nv)
    torch.index_select(tsdf_pool, 0, slots, out=Vold)
    torch.index_select(weight_pool, 0, slots, out=Wold)
    f = U  # reuse (dead after `pix`)
    torch.add(Wold, 1.0, out=f)
    torch.div(w, f, out=f)  # 1 / (W + 1) where w = 1, exactly 0 where w = 0
    Vold.lerp_(obs, f)  # V + f (v - V): untouched (bit for bit) where f = 0
    Wold.add_(w).clamp_max_(float(max_weight))
    tsdf_pool.index_copy_(0, slots, Vold)
    weight_pool.index_copy_(0, slots, Wold)

    if use_color:
        c = _as_tensor(color, device)
        if c.dtype != torch.uint8:
            raise TypeError(f"color must be uint8 RGB, got {c.dtype}")
        cpad = ws.cached(("cpad", H, W, device),
                         lambda: torch.zeros((H + 2, Wp, 3), dtype=torch.uint8, device=device))
        cpad[1:-1, 1:-1] = c
        # Color tensors must stay contiguous [n, 3] (a broadcast over the 3 channels
        # makes torch's inner loop 3 long, several times slower than these copies).
        c8 = ws.get("c8", n * 3, torch.uint8, device).view(n, 3)
        torch.index_select(cpad.view(-1, 3), 0, pix, out=c8)
        cobs = ws.get("cobs", n * 3, torch.float32, device).view(n, 3)
        cobs.copy_(c8)
        f3 = ws.get("f3", n * 3, torch.float32, device).view(n, 3)
        f3.copy_(f.view(n, 1).expand(n, 3))
        color_pool = grid.attrs["color"].view(grid.capacity, nv * 3)
        Cold = ws.get("Cold", n * 3, torch.float32, device).view(nb, nv * 3)
        torch.index_select(color_pool, 0, slots, out=Cold)
        Cold.lerp_(cobs.view(nb, nv * 3), f3.view(nb, nv * 3))
        color_pool.index_copy_(0, slots, Cold)

    return {"blocks_touched": nb, "blocks_new": grid.num_blocks - n_before,
            "blocks_total": grid.num_blocks, "slots": slots}


def _pose_numpy(T: TensorOrArray) -> np.ndarray:
    if isinstance(T, torch.Tensor):
        T = T.detach().cpu().numpy()
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"T_world_cam must be 4x4, got shape {T.shape}")
    return T
