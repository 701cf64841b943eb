"""3D occupancy: the observed voxels of a :class:`~neural_mapping.grid.field.VoxelField`
classified as occupied or free, in the map frame (:mod:`.map_frame`).

Everything in :mod:`neural_mapping.products.occupancy` is core (no ROS imports): numpy out,
torch inside (any device; the per-voxel work is a handful of vectorised torch ops that
release the GIL).  The ROS node turns the results into ``sensor_msgs/PointCloud2`` and
``nav_msgs/OccupancyGrid``.

Voxel classes (per voxel, from the field; ``d = sdf * truncation_m`` is the
signed distance in metres, ``w`` the weight, for the TSDF the fused observations)
    * **unknown**: ``w < occupancy_min_weight`` (never observed, or too rarely),
      or the block is not allocated;
    * **occupied**: observed and either behind a surface, ``-occupied_thickness_m <= d <= 0``,
      or in front of it with the surface inside its cube: the zero crossing
      towards an observed 6-neighbour with ``d_n <= 0`` lies within
      ``occupied_surface_margin_vox`` voxels of its centre (linear interpolation,
      ``d / (d - d_n) < margin``).  The ratio makes the test immune to the projective
      TSDF's stretch of distances along oblique rays (a threshold on ``d`` in metres
      is not: measured, it either misses cells a surface clips or grows obstacles
      by a voxel).  Deeper negative voxels are *unknown*, not occupied: the
      projective TSDF also writes negative values into free space occluded by an
      obstacle (its "shadow", up to the truncation), which would grow obstacles on
      their far side; voxels behind a surface by more than the truncation are never
      updated anyway;
    * **free**: observed, ``d > 0`` and not occupied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from neural_mapping.config import OccupancyConfig
from neural_mapping.grid.field import VoxelField
from neural_mapping.products import require_field
from neural_mapping.products.occupancy.map_frame import check_map_transform, occupancy_config

__all__ = ["ClassifiedVoxels", "classify_voxels", "occupied_voxels"]


@dataclass
class ClassifiedVoxels:
    """Classified observed voxels (torch, on the field's device), map frame."""
    xyz: torch.Tensor       # [N, 3] float32 centres in the map frame
    occupied: torch.Tensor  # [N] bool (else free)
    flat: torch.Tensor      # [N] int64 indices into field.sdf.view(-1) (for colours)


def classify_voxels(field: VoxelField, ocfg: OccupancyConfig, T_world_map: np.ndarray,
                    z_band: Optional[Tuple[float, float]], want: str = "both",
                    free_top: Optional[float] = None) -> ClassifiedVoxels:
    """Observed voxels of ``field`` (occupied or free per the module docstring) whose centres
    lie in ``z_band`` (map z) if given.  ``want``: 'both' or 'occupied'.  ``free_top``: free
    voxels above this map z are not needed (may be left out)."""
    grid = field.grid
    truncation_m = field.truncation_m
    dev = grid.device
    n = grid.num_blocks
    B = grid.block_size
    vs = grid.voxel_size_m
    empty = ClassifiedVoxels(torch.zeros((0, 3), dtype=torch.float32, device=dev),
                    torch.zeros(0, dtype=torch.bool, device=dev),
                    torch.zeros(0, dtype=torch.int64, device=dev))
    if n == 0:
        return empty
    T_map_world = np.linalg.inv(T_world_map)
    R = torch.as_tensor(T_map_world[:3, :3], dtype=torch.float32, device=dev)
    t = torch.as_tensor(T_map_world[:3, 3], dtype=torch.float32, device=dev)
    coords = grid.active_coords()
    slots = torch.arange(n, device=dev)
    if z_band is not None:
        # keep the blocks whose bounding box (map frame) reaches into the band
        bsz = grid.block_size_m
        centre = (coords.to(torch.float32) + 0.5) * bsz
        zc = centre @ R[2] + t[2]
        half = 0.5 * bsz * float(np.abs(T_map_world[2, :3]).sum())
        keep = (zc + half >= z_band[0]) & (zc - half <= z_band[1])
        slots = slots[keep]
        if slots.numel() == 0:
            return empty
    nv = B ** 3
    min_w = max(float(ocfg.occupancy_min_weight), 1e-6)  # weight 0 is never observed
    frac = float(ocfg.occupied_surface_margin_vox)
    # a positive voxel at or above frac / (1 - frac) truncations cannot hold a zero crossing
    # (its neighbour is >= -1): far from surfaces (most free space, clamped at +1) it is only
    # needed as free evidence
    pos_thr = frac / max(1.0 - frac, 1e-6)
    sdf_flat = field.sdf.view(-1)
    w_flat = field.weight.view(-1)
    ts = field.sdf.view(grid.capacity, nv).index_select(0, slots)
    mask = field.weight.view(grid.capacity, nv).index_select(0, slots) >= min_w
    near = (ts < pos_thr) & (ts >= -ocfg.occupied_thickness_m / truncation_m)
    if z_band is not None:
        # map z of every voxel: per-block part + per-offset part (no per-voxel matmul)
        offs = (torch.stack(torch.meshgrid(*[torch.arange(B, device=dev)] * 3, indexing="ij"),
                            -1).reshape(-1, 3).to(torch.float32) + 0.5) * vs
        zb = (coords.index_select(0, slots).to(torch.float32) * (B * vs)) @ R[2] + t[2]
        z = zb[:, None] + (offs @ R[2])[None, :]
        mask &= (z >= z_band[0]) & (z <= z_band[1])
        if free_top is not None:
            near |= z <= free_top
    if want == "occupied" or (z_band is not None and free_top is not None):
        mask &= near
    bi, li = mask.nonzero(as_tuple=True)
    if bi.numel() == 0:
        return empty
    slot = slots[bi]
    flat = slot * nv + li
    # voxel coordinates: block * B + local (local = li in (x, y, z) C order)
    if B & (B - 1) == 0:  # power of two: shifts and masks instead of int64 division
        sh = B.bit_length() - 1
        loc = torch.stack([li >> (2 * sh), (li >> sh) & (B - 1), li & (B - 1)], dim=1)
    else:
        loc = torch.stack([li // (B * B), (li // B) % B, li % B], dim=1)
    v = coords.index_select(0, slot).to(torch.int64) * B + loc
    xyz = ((v.to(torch.float32) + 0.5) * vs) @ R.T + t
    d = sdf_flat.index_select(0, flat)  # in units of the truncation
    neg = d <= 0
    occ = neg & (d * truncation_m >= -ocfg.occupied_thickness_m)
    # a positive voxel whose cube holds the zero crossing towards an observed neighbour of
    # negative distance (linear interpolation: crossing at d / (d - d_n) voxels from its
    # centre; a ratio, so the projective TSDF's stretch along oblique rays cancels)
    v32 = v.to(torch.int32)
    vx, vy, vz = v32[:, 0], v32[:, 1], v32[:, 2]
    # only a positive voxel below frac / (1 - frac) truncations can hold a crossing (the
    # neighbour is >= -1): voxels clamped at +1 (far from surfaces, most of them) skip it
    pos_idx = ((~neg) & (d < pos_thr)).nonzero(as_tuple=True)[0]
    if pos_idx.numel() and frac > 0:
        px, py, pz = vx[pos_idx], vy[pos_idx], vz[pos_idx]
        dp = d.index_select(0, pos_idx)
        surf = torch.zeros(pos_idx.numel(), dtype=torch.bool, device=dev)
        for ax in range(3):
            for step in (-1, 1):
                q = [px, py, pz]
                q[ax] = q[ax] + step
                li_n = grid.voxel_index_xyz(*q).to(torch.int64)
                ok = li_n >= 0
                li_c = li_n.clamp(min=0)
                dn = sdf_flat.index_select(0, li_c)
                wn = w_flat.index_select(0, li_c)
                cross = ok & (wn >= min_w) & (dn <= 0) & (dp < frac * (dp - dn))
                surf |= cross
        occ[pos_idx] = surf
    keep = occ if want == "occupied" else (occ | ~neg)  # deeper negative voxels: unknown
    idx = keep.nonzero(as_tuple=True)[0]
    return ClassifiedVoxels(xyz.index_select(0, idx), occ.index_select(0, idx), flat.index_select(0, idx))


def occupied_voxels(field: VoxelField, cfg=None, T_world_map: Optional[np.ndarray] = None, *,
                    with_color: bool = True,
                    z_range: Optional[Tuple[float, float]] = None
                    ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Centres of the occupied voxels in the map frame: ``(xyz [N, 3] float32, rgb [N, 3]
    uint8 or None)`` (for a PointCloud2 with x, y, z, rgb).  ``z_range`` (map z) limits
    them to a height band; ``rgb`` is None without ``with_color`` or when the field has no color."""
    require_field(field)
    ocfg = occupancy_config(cfg)
    vox = classify_voxels(field, ocfg, check_map_transform(T_world_map), z_range, want="occupied")
    xyz = vox.xyz.cpu().numpy().astype(np.float32, copy=False)
    rgb = None
    if with_color and field.color is not None:
        col = field.color.view(-1, field.color.shape[-1]).index_select(0, vox.flat)
        rgb = col.clamp(0, 255).round().to(torch.uint8).cpu().numpy()
    return xyz, rgb
