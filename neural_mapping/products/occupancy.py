"""Planner outputs from the TSDF: 3D occupancy, 2D occupancy grid, ESDF slice, costmap, Nav2 files.

Everything here is core (no ROS imports): numpy out, torch inside (any device;
the per-voxel work is a handful of vectorised torch ops that release the GIL).
The ROS node turns the results into ``sensor_msgs/PointCloud2`` and
``nav_msgs/OccupancyGrid``.

Voxel classes (per voxel, from the fused TSDF; ``d = tsdf * truncation_m`` is the
signed distance in metres, ``w`` the fused weight)
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

Map frame (gravity alignment)
    The 2D products live in a *map* frame whose z axis is up (REP-105), related to
    the world frame of the poses by ``T_world_map`` (4x4, map -> world).  Dataset
    world frames are not all z-up: the synthetic room and TUM's mocap frame are
    z-up (``map_up_source=world_z``, the default), 7-Scenes' world frame is the
    first KinectFusion camera's (y points roughly down; its ``gravity-direction.txt``
    gives gravity in world coordinates, so use ``map_up_source=vector`` with
    ``map_up = -gravity``), and a live robot without a z-up odometry frame can
    use ``first_camera`` (up = minus the first camera's optical y axis, i.e. the
    first view held level).  :func:`gravity_aligned_map_transform` builds
    ``T_world_map``: z = up, x = world x projected onto the horizontal plane
    (world y when world x is vertical), origin at the world origin or at a given
    point (``map_origin=first_camera``: below the first camera by
    ``first_camera_height_m``, so map z = 0 is the floor).

2D grid (:class:`OccupancyGrid2D`, ``nav_msgs/OccupancyGrid`` conventions)
    ``data[row, col]`` int8, row = y, col = x, 0 free / 100 occupied / -1 unknown;
    cell ``(0, 0)``'s lower-left corner is ``origin_xy`` (yaw 0) in the map frame;
    cell ``(r, c)`` covers ``[ox + c*res, ox + (c+1)*res) x [oy + r*res, ...)``.
    Only voxels whose centre lies in ``[occupancy_min_z_m, occupancy_max_z_m]``
    (map z) count.  A cell is **occupied** if an occupied voxel overlaps it (the
    voxel's axis-aligned footprint in the map frame is splatted onto every cell it
    overlaps, so no obstacle leaves a gap, also when the map frame is tilted
    against the voxel grid), else **free** if a free voxel of the band's lowest
    layer (``occupancy_free_evidence_height_m`` above its bottom, at least one
    voxel) has its centre in it, else **unknown**.  Free evidence only from the
    bottom: free space seen *above* the unobserved far side of an obstacle must not
    make the obstacle's cell free (measured on the synthetic room: with "any free
    voxel in the band" cells inside the cone's footprint came out free).  The
    origin is always a multiple of the resolution (default: the voxel size): with
    the default ``world_z`` frame and a resolution that is a multiple of the voxel
    size, cell borders are voxel borders and the projection is exact; otherwise a
    voxel straddling two cells marks both (obstacles grow by up to a voxel).

Incremental use: :class:`OccupancyMap2D` keeps the grid's origin and size across
updates and only grows them (by ``occupancy_grid_growth_m`` per side, or half the
extent if more) when observed space leaves the grid, so a Nav2 costmap
subscribed to it is resized rarely.  Each update re-projects the voxel blocks
that intersect the height band (the blocks outside it are skipped by their
bounding box); per-block dirty tracking would make it proportional to the change.

ESDF slice: Euclidean distance (m) from each cell centre to the nearest occupied
cell centre of the 2D grid (exact, ``scipy.ndimage.distance_transform_edt``: a
2D slice is small), clipped to ``esdf_max_distance_m``; unknown cells are not
obstacles and are left out of the point cloud.  Costmap: Nav2 inflation layer
semantics on the OccupancyGrid scale: occupied 100, within the inscribed radius
99, within the inflation radius ``1 + round(97 * exp(-k (d - r_inscribed)))``
(98..1, ``k = costmap_cost_scaling_factor``), else 0; unknown stays -1.

Nav2 ``map_server`` files (:func:`save_nav2_map`): binary PGM (P5, maxval 255),
occupied 0 (black), free 254, unknown 205, image top row = largest y (the
loader writes pixel row ``y`` into map row ``height - 1 - y``), and a YAML with
``image, mode: trinary, resolution, origin: [x, y, yaw], negate: 0,
occupied_thresh: 0.65, free_thresh: 0.196``.  Why 0.196 and not Nav2's saver
default 0.25: the loader computes ``occ = 1 - value / 255`` and calls a pixel
free when ``occ < free_thresh``; unknown's 205 gives ``occ = 50/255 = 0.19608``,
which is *below* 0.25 (unknown would load as free) and above 0.196 (the ROS 1
map_saver's value, chosen for exactly this).  :func:`load_nav2_map` implements
the loader's trinary rule so tests can check the round trip.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch

from neural_mapping.config import MappingConfig, OccupancyConfig
from neural_mapping.grid.voxel_grid import VoxelBlockGrid

FREE, OCCUPIED, UNKNOWN = 0, 100, -1
# Nav2 trinary pixel values and the thresholds written with them (see the module docstring).
PGM_OCCUPIED, PGM_FREE, PGM_UNKNOWN = 0, 254, 205
NAV2_OCCUPIED_THRESH, NAV2_FREE_THRESH = 0.65, 0.196

_EPS_CELL = 1e-3  # fraction of a cell: a footprint that only touches a cell border does not overlap it


# =================================================================== configuration helpers
def occupancy_config(cfg: Union[MappingConfig, OccupancyConfig, None]) -> OccupancyConfig:
    if cfg is None:
        return OccupancyConfig()
    if isinstance(cfg, MappingConfig):
        return cfg.occupancy
    if isinstance(cfg, OccupancyConfig):
        return cfg
    raise TypeError(f"expected a MappingConfig or OccupancyConfig, got {type(cfg).__name__}")


def _grid_and_truncation(volume, truncation_m: Optional[float]) -> Tuple[VoxelBlockGrid, float]:
    """Accept a :class:`~neural_mapping.backends.tsdf.volume.TSDFVolume` (carries its truncation) or a grid."""
    if isinstance(volume, VoxelBlockGrid):
        grid = volume
    elif isinstance(getattr(volume, "grid", None), VoxelBlockGrid):
        grid = volume.grid
        if truncation_m is None:
            truncation_m = volume.truncation_m
    else:
        raise TypeError(f"expected a TSDFVolume or VoxelBlockGrid, got {type(volume).__name__}")
    if truncation_m is None:
        raise ValueError("truncation_m is required with a bare VoxelBlockGrid")
    if not truncation_m > 0:
        raise ValueError(f"truncation_m must be > 0, got {truncation_m}")
    if "tsdf" not in grid.attrs or "weight" not in grid.attrs:
        raise ValueError("the grid has no tsdf/weight attributes")
    return grid, float(truncation_m)


def resolution_of(ocfg: OccupancyConfig, voxel_size_m: float) -> float:
    return float(ocfg.occupancy_resolution_m) if ocfg.occupancy_resolution_m > 0 else float(voxel_size_m)


# =================================================================== gravity alignment
def up_from_camera_pose(T_world_cam: np.ndarray) -> np.ndarray:
    """Up vector (world) of an optical camera (x right, y down, z forward) held level:
    minus its y axis."""
    T = np.asarray(T_world_cam, dtype=np.float64)
    return -T[:3, 1] / np.linalg.norm(T[:3, 1])


def gravity_aligned_map_transform(up_world=(0.0, 0.0, 1.0), origin_world=None) -> np.ndarray:
    """``T_world_map`` (4x4, map -> world) of a map frame whose z axis is ``up_world``
    (world coordinates, any length; e.g. minus a gravity vector), whose x axis is the
    world x axis projected onto the horizontal plane (world y if x is vertical) and
    whose origin is ``origin_world`` (default: the world origin)."""
    up = np.asarray(up_world, dtype=np.float64).reshape(3)
    n = np.linalg.norm(up)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"up vector must be finite and non-zero, got {up_world!r}")
    z = up / n
    x = None
    for ref in (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])):
        p = ref - z * float(ref @ z)
        if np.linalg.norm(p) > 0.1:
            x = p / np.linalg.norm(p)
            break
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2] = x, y, z
    if origin_world is not None:
        T[:3, 3] = np.asarray(origin_world, dtype=np.float64).reshape(3)
    return T


def map_transform_from_config(cfg, first_pose: Optional[np.ndarray] = None) -> np.ndarray:
    """``T_world_map`` from ``map_up_source`` / ``map_up_x,y,z`` / ``map_origin`` /
    ``first_camera_height_m``; ``first_pose`` (``T_world_cam`` of the first frame) is needed
    for the ``first_camera`` choices."""
    o = occupancy_config(cfg)
    needs_pose = o.map_up_source == "first_camera" or o.map_origin == "first_camera"
    if needs_pose and first_pose is None:
        raise ValueError("map_up_source/map_origin 'first_camera' needs the first camera pose")
    if o.map_up_source == "world_z":
        up = np.array([0.0, 0.0, 1.0])
    elif o.map_up_source == "vector":
        up = np.array([o.map_up_x, o.map_up_y, o.map_up_z], dtype=np.float64)
    else:
        up = up_from_camera_pose(first_pose)
    origin = None
    if o.map_origin == "first_camera":
        upn = up / np.linalg.norm(up)
        origin = np.asarray(first_pose, dtype=np.float64)[:3, 3] - o.first_camera_height_m * upn
    return gravity_aligned_map_transform(up, origin)


def _check_T(T: Optional[np.ndarray]) -> np.ndarray:
    if T is None:
        return np.eye(4)
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f"T_world_map must be a finite 4x4 matrix, got shape {T.shape}")
    R = T[:3, :3]
    if np.abs(R @ R.T - np.eye(3)).max() > 1e-4:
        raise ValueError("T_world_map's rotation is not orthonormal")
    return T


# =================================================================== 3D classification
@dataclass
class _Voxels:
    """Classified observed voxels (torch, on the grid's device), map frame."""
    xyz: torch.Tensor       # [N, 3] float32 centres in the map frame
    occupied: torch.Tensor  # [N] bool (else free)
    flat: torch.Tensor      # [N] int64 indices into attr.view(-1) (for colours)


def _classify(grid: VoxelBlockGrid, truncation_m: float, ocfg: OccupancyConfig,
              T_world_map: np.ndarray, z_band: Optional[Tuple[float, float]],
              want: str = "both", free_top: Optional[float] = None) -> _Voxels:
    """Observed voxels (occupied or free per the module docstring) whose centres lie in
    ``z_band`` (map z) if given.  ``want``: 'both' or 'occupied'.  ``free_top``: free voxels
    above this map z are not needed (may be left out)."""
    dev = grid.device
    n = grid.num_blocks
    B = grid.block_size
    vs = grid.voxel_size_m
    empty = _Voxels(torch.zeros((0, 3), dtype=torch.float32, device=dev),
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
    tsdf_flat = grid.attrs["tsdf"].view(-1)
    w_flat = grid.attrs["weight"].view(-1)
    ts = grid.attrs["tsdf"].view(grid.capacity, nv).index_select(0, slots)
    mask = grid.attrs["weight"].view(grid.capacity, nv).index_select(0, slots) >= min_w
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
    d = tsdf_flat.index_select(0, flat)  # in units of the truncation
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
                dn = tsdf_flat.index_select(0, li_c)
                wn = w_flat.index_select(0, li_c)
                cross = ok & (wn >= min_w) & (dn <= 0) & (dp < frac * (dp - dn))
                surf |= cross
        occ[pos_idx] = surf
    keep = occ if want == "occupied" else (occ | ~neg)  # deeper negative voxels: unknown
    idx = keep.nonzero(as_tuple=True)[0]
    return _Voxels(xyz.index_select(0, idx), occ.index_select(0, idx), flat.index_select(0, idx))


def occupied_voxels(volume, cfg=None, T_world_map: Optional[np.ndarray] = None, *,
                    truncation_m: Optional[float] = None, with_color: bool = True,
                    z_range: Optional[Tuple[float, float]] = None
                    ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Centres of the occupied voxels in the map frame: ``(xyz [N, 3] float32, rgb [N, 3]
    uint8 or None)`` (for a PointCloud2 with x, y, z, rgb).  ``z_range`` (map z) limits
    them to a height band; ``volume``: a TSDFVolume or a VoxelBlockGrid + ``truncation_m``."""
    grid, trunc = _grid_and_truncation(volume, truncation_m)
    ocfg = occupancy_config(cfg)
    vox = _classify(grid, trunc, ocfg, _check_T(T_world_map), z_range, want="occupied")
    xyz = vox.xyz.cpu().numpy().astype(np.float32, copy=False)
    rgb = None
    if with_color and "color" in grid.attrs:
        C = grid.specs["color"].channels
        col = grid.attrs["color"].view(-1, C).index_select(0, vox.flat)
        rgb = col.clamp(0, 255).round().to(torch.uint8).cpu().numpy()
    return xyz, rgb


# =================================================================== 2D grid
@dataclass
class OccupancyGrid2D:
    """A ``nav_msgs/OccupancyGrid`` in numpy (see the module docstring)."""
    data: np.ndarray            # [H, W] int8: 0 free, 100 occupied, -1 unknown; row = y, col = x
    resolution_m: float
    origin_xy: Tuple[float, float]  # lower-left corner of cell (0, 0), map frame, yaw 0
    frame_id: str = "map"

    @property
    def height(self) -> int:
        return int(self.data.shape[0])

    @property
    def width(self) -> int:
        return int(self.data.shape[1])

    def cell_centers(self) -> Tuple[np.ndarray, np.ndarray]:
        """``(x [W], y [H])`` of the cell centres."""
        r = self.resolution_m
        return (self.origin_xy[0] + (np.arange(self.width) + 0.5) * r,
                self.origin_xy[1] + (np.arange(self.height) + 0.5) * r)

    def cell_of(self, x, y) -> Tuple[np.ndarray, np.ndarray]:
        """``(row, col)`` of map points (may be outside the grid)."""
        r = self.resolution_m
        return (np.floor((np.asarray(y) - self.origin_xy[1]) / r).astype(np.int64),
                np.floor((np.asarray(x) - self.origin_xy[0]) / r).astype(np.int64))

    def counts(self) -> Dict[str, int]:
        return {"free": int((self.data == FREE).sum()), "occupied": int((self.data == OCCUPIED).sum()),
                "unknown": int((self.data == UNKNOWN).sum())}


@dataclass
class _Projection:
    ix: torch.Tensor   # [N] int64 cell x index (absolute: floor(x / res)) of free voxel centres
    iy: torch.Tensor
    olo: torch.Tensor  # [M, 2] int64 first cell (x, y) overlapped by each occupied voxel
    ohi: torch.Tensor  # [M, 2] last cell (inclusive)


def _project(vox: _Voxels, res: float, vs: float, R_map_world: np.ndarray) -> _Projection:
    """Absolute cell indices (``floor(coord / res)``) of free voxel centres and of the cells
    overlapped by the map-frame axis-aligned footprint of each occupied voxel."""
    free = ~vox.occupied
    fx = vox.xyz[free, :2]
    ix = torch.floor(fx[:, 0] / res).to(torch.int64)
    iy = torch.floor(fx[:, 1] / res).to(torch.int64)
    o = vox.xyz[vox.occupied, :2]
    half = 0.5 * vs * np.abs(R_map_world[:2, :3]).sum(axis=1)  # footprint half extents (x, y)
    hx = torch.as_tensor(half, dtype=torch.float32, device=o.device)
    lo = torch.floor((o - hx) / res + _EPS_CELL).to(torch.int64)
    hi = torch.floor((o + hx) / res - _EPS_CELL).to(torch.int64)
    hi = torch.maximum(hi, lo)
    return _Projection(ix, iy, lo, hi)


def _bounds_of(p: _Projection) -> Optional[Tuple[int, int, int, int]]:
    """Inclusive absolute cell bounds ``(x0, y0, x1, y1)`` of everything projected."""
    parts_lo, parts_hi = [], []
    if p.ix.numel():
        parts_lo.append(torch.stack([p.ix.min(), p.iy.min()]))
        parts_hi.append(torch.stack([p.ix.max(), p.iy.max()]))
    if p.olo.numel():
        parts_lo.append(p.olo.min(dim=0).values)
        parts_hi.append(p.ohi.max(dim=0).values)
    if not parts_lo:
        return None
    lo = torch.stack(parts_lo).min(dim=0).values.tolist()
    hi = torch.stack(parts_hi).max(dim=0).values.tolist()
    return int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])


def _rasterize(p: _Projection, x0: int, y0: int, W: int, H: int, device) -> torch.Tensor:
    """int8 [H, W] grid with the cells at absolute indices ``x0 .. x0+W-1`` / ``y0 ..``."""
    out = torch.full((H * W + 1,), UNKNOWN, dtype=torch.int8, device=device)  # last: trash
    trash = H * W
    cx, cy = p.ix - x0, p.iy - y0
    ok = (cx >= 0) & (cx < W) & (cy >= 0) & (cy < H)
    out[torch.where(ok, cy * W + cx, trash)] = FREE
    if p.olo.numel():
        off = torch.tensor([x0, y0], device=device)
        size = torch.tensor([W - 1, H - 1], device=device)
        lo, hi = p.olo - off, p.ohi - off
        inside = ((hi >= 0) & (lo <= size)).all(dim=1)
        lo = torch.minimum(torch.maximum(lo[inside], torch.zeros_like(size)), size)
        hi = torch.minimum(torch.maximum(hi[inside], torch.zeros_like(size)), size)
        span = hi - lo
        S = int(span.max().item()) + 1 if span.numel() else 1
        # many voxels (a column of a wall) share one footprint: deduplicate through a bitmap
        # over (first cell, span) before splatting
        key = ((lo[:, 1] * W + lo[:, 0]) * S + span[:, 0]) * S + span[:, 1]
        bitmap = torch.zeros(H * W * S * S, dtype=torch.bool, device=device)
        bitmap[key] = True
        key = bitmap.nonzero(as_tuple=True)[0]
        sy, key = key % S, key // S
        sx, cell = key % S, key // S
        lx, ly = cell % W, cell // W
        for dx in range(S):
            for dy in range(S):
                sel = (dx <= sx) & (dy <= sy)
                out[torch.where(sel, cell + dy * W + dx, trash)] = OCCUPIED
    return out[:trash].view(H, W)


def occupancy_grid_2d(volume, cfg=None, T_world_map: Optional[np.ndarray] = None, *,
                      truncation_m: Optional[float] = None, frame_id: str = "map",
                      bounds_cells: Optional[Tuple[int, int, int, int]] = None) -> OccupancyGrid2D:
    """One-shot 2D occupancy grid of the height band (see the module docstring).

    The grid is the tight box of the observed cells (origin a multiple of the
    resolution), or ``bounds_cells = (x0, y0, x1, y1)`` inclusive absolute cell indices
    (cell ``(i, j)`` covers ``[i*res, (i+1)*res) x [j*res, (j+1)*res)``).  ``volume``:
    a TSDFVolume, or a VoxelBlockGrid with ``truncation_m``.
    """
    grid, trunc = _grid_and_truncation(volume, truncation_m)
    ocfg = occupancy_config(cfg)
    T = _check_T(T_world_map)
    res = resolution_of(ocfg, grid.voxel_size_m)
    proj = _project_band(grid, trunc, ocfg, T, res)
    if bounds_cells is None:
        bounds_cells = _bounds_of(proj) or (0, 0, 0, 0)
    return _grid_from(proj, bounds_cells, res, frame_id, grid.device)


def _project_band(grid, trunc, ocfg, T, res) -> _Projection:
    # free evidence only from the bottom of the band (see the module docstring)
    top = ocfg.occupancy_min_z_m + max(ocfg.occupancy_free_evidence_height_m, grid.voxel_size_m)
    vox = _classify(grid, trunc, ocfg, T, (ocfg.occupancy_min_z_m, ocfg.occupancy_max_z_m),
                    free_top=top)
    idx = (vox.occupied | (vox.xyz[:, 2] <= top)).nonzero(as_tuple=True)[0]
    vox = _Voxels(vox.xyz.index_select(0, idx), vox.occupied.index_select(0, idx),
                  vox.flat.index_select(0, idx))
    return _project(vox, res, grid.voxel_size_m, np.linalg.inv(T)[:3, :3])


def _grid_from(proj: _Projection, bounds: Tuple[int, int, int, int], res: float, frame_id: str,
               device) -> OccupancyGrid2D:
    x0, y0, x1, y1 = bounds
    W, H = x1 - x0 + 1, y1 - y0 + 1
    data = _rasterize(proj, x0, y0, W, H, device).cpu().numpy()
    return OccupancyGrid2D(data, res, (x0 * res, y0 * res), frame_id)


class OccupancyMap2D:
    """The 2D grid kept across map updates with a stable origin and size.

    ``update(volume)`` re-projects the height band and returns the grid; the bounds only
    change when observed space leaves them, then grow by ``occupancy_grid_growth_m`` per
    side (or half the current extent, if more).  ``bounds_changed`` says whether the last
    update changed them (a subscriber's costmap resize); ``T_world_map`` can be set once
    the first pose is known (see :func:`map_transform_from_config`).
    """

    def __init__(self, cfg=None, T_world_map: Optional[np.ndarray] = None, frame_id: str = "map"):
        self.cfg = occupancy_config(cfg)
        self.T_world_map = _check_T(T_world_map)
        self.frame_id = frame_id
        self.bounds_cells: Optional[Tuple[int, int, int, int]] = None
        self.resolution_m: Optional[float] = None
        self.bounds_changed = False
        self.num_resizes = 0
        self.last: Optional[OccupancyGrid2D] = None
        self.last_projection: Optional[_Projection] = None

    def set_map_transform(self, T_world_map: np.ndarray) -> None:
        self.T_world_map = _check_T(T_world_map)
        self.bounds_cells = None  # a new frame: start the bounds afresh

    def _grow(self, need: Tuple[int, int, int, int], res: float) -> Tuple[int, int, int, int]:
        cur = self.bounds_cells
        if cur is not None and need[0] >= cur[0] and need[1] >= cur[1] and need[2] <= cur[2] \
                and need[3] <= cur[3]:
            return cur
        if cur is not None:
            need = (min(need[0], cur[0]), min(need[1], cur[1]), max(need[2], cur[2]),
                    max(need[3], cur[3]))
        grow = int(math.ceil(self.cfg.occupancy_grid_growth_m / res))
        mx = max(grow, (need[2] - need[0] + 1) // 2)
        my = max(grow, (need[3] - need[1] + 1) // 2)
        return (need[0] - mx, need[1] - my, need[2] + mx, need[3] + my)

    def update(self, volume, truncation_m: Optional[float] = None) -> Optional[OccupancyGrid2D]:
        grid, trunc = _grid_and_truncation(volume, truncation_m)
        res = resolution_of(self.cfg, grid.voxel_size_m)
        if self.resolution_m is not None and res != self.resolution_m:
            self.bounds_cells = None
        self.resolution_m = res
        proj = _project_band(grid, trunc, self.cfg, self.T_world_map, res)
        self.last_projection = proj
        need = _bounds_of(proj)
        old = self.bounds_cells
        if need is not None:
            self.bounds_cells = self._grow(need, res)
        self.bounds_changed = self.bounds_cells != old
        if self.bounds_changed:
            self.num_resizes += 1
        if self.bounds_cells is None:
            self.last = None
            return None
        self.last = _grid_from(proj, self.bounds_cells, res, self.frame_id, grid.device)
        return self.last


# =================================================================== ESDF and costmap
def esdf_2d(grid2d: OccupancyGrid2D, max_distance_m: float = float("inf")) -> np.ndarray:
    """Distance (m, float32 [H, W]) from each cell centre to the nearest occupied cell centre,
    clipped to ``max_distance_m`` (also where the grid has no occupied cell)."""
    from scipy.ndimage import distance_transform_edt

    occ = grid2d.data == OCCUPIED
    if not occ.any():
        return np.full(grid2d.data.shape, max_distance_m, dtype=np.float32)
    d = distance_transform_edt(~occ, sampling=grid2d.resolution_m)
    return np.minimum(d, max_distance_m).astype(np.float32)


def esdf_slice(grid2d: OccupancyGrid2D, cfg=None, z_m: Optional[float] = None
               ) -> Tuple[np.ndarray, np.ndarray]:
    """``(xyz [N, 3] float32, distance [N] float32)`` of the known (free or occupied) cells:
    cell centres in the map frame at height ``z_m`` (default: the middle of the band) and
    their ESDF distance (for a PointCloud2 with x, y, z, distance)."""
    o = occupancy_config(cfg)
    z = 0.5 * (o.occupancy_min_z_m + o.occupancy_max_z_m) if z_m is None else float(z_m)
    dist = esdf_2d(grid2d, o.esdf_max_distance_m)
    rows, cols = np.nonzero(grid2d.data != UNKNOWN)
    r = grid2d.resolution_m
    xyz = np.empty((rows.size, 3), dtype=np.float32)
    xyz[:, 0] = grid2d.origin_xy[0] + (cols + 0.5) * r
    xyz[:, 1] = grid2d.origin_xy[1] + (rows + 0.5) * r
    xyz[:, 2] = z
    return xyz, dist[rows, cols]


def inflated_costmap(grid2d: OccupancyGrid2D, cfg=None) -> OccupancyGrid2D:
    """Costmap OccupancyGrid (module docstring): 100 occupied, 99 inscribed, 98..1 decaying
    to the inflation radius, 0 free, -1 unknown."""
    o = occupancy_config(cfg)
    r_in, r_inf, k = o.costmap_inscribed_radius_m, o.costmap_inflation_radius_m, o.costmap_cost_scaling_factor
    d = esdf_2d(grid2d, max(r_inf, r_in) + grid2d.resolution_m)
    cost = np.zeros(d.shape, dtype=np.int16)
    decay = np.rint(1 + 97 * np.exp(-k * np.maximum(d - r_in, 0.0))).astype(np.int16)
    cost = np.where(d <= r_inf, np.clip(decay, 1, 98), cost)
    cost = np.where(d <= r_in, 99, cost)
    cost = np.where(grid2d.data == OCCUPIED, 100, cost)
    cost = np.where(grid2d.data == UNKNOWN, -1, cost)
    return OccupancyGrid2D(cost.astype(np.int8), grid2d.resolution_m, grid2d.origin_xy, grid2d.frame_id)


# =================================================================== Nav2 map_server files
def save_nav2_map(grid2d: OccupancyGrid2D, path_stem: Union[str, os.PathLike]) -> Tuple[Path, Path]:
    """Write ``<stem>.pgm`` + ``<stem>.yaml`` that ``nav2_map_server`` loads (module docstring).
    Returns the two paths."""
    stem = Path(path_stem)
    if stem.suffix in (".pgm", ".yaml"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    pgm, yml = stem.with_suffix(".pgm"), stem.with_suffix(".yaml")
    data = np.asarray(grid2d.data)
    img = np.full(data.shape, PGM_UNKNOWN, dtype=np.uint8)
    img[data == FREE] = PGM_FREE
    img[data == OCCUPIED] = PGM_OCCUPIED
    img = img[::-1]  # image top row = largest y
    H, W = data.shape
    with open(pgm, "wb") as fh:
        fh.write(f"P5\n# neural_mapping occupancy, {grid2d.resolution_m!r} m/cell\n{W} {H}\n255\n".encode())
        fh.write(np.ascontiguousarray(img).tobytes())
    ox, oy = (float(v) for v in grid2d.origin_xy)
    text = (f"image: {pgm.name}\n"
            "mode: trinary\n"
            f"resolution: {float(grid2d.resolution_m)!r}\n"
            f"origin: [{ox!r}, {oy!r}, 0.0]\n"
            "negate: 0\n"
            f"occupied_thresh: {NAV2_OCCUPIED_THRESH}\n"
            f"free_thresh: {NAV2_FREE_THRESH}\n")
    yml.write_text(text)
    return pgm, yml


def read_pgm(path: Union[str, os.PathLike]) -> np.ndarray:
    """A binary 8-bit PGM (P5) as uint8 ``[rows, cols]`` (comments allowed in the header)."""
    raw = Path(path).read_bytes()
    fields, pos = [], 0
    while len(fields) < 4:
        while raw[pos:pos + 1].isspace():
            pos += 1
        if raw[pos:pos + 1] == b"#":
            pos = raw.index(b"\n", pos) + 1
            continue
        start = pos
        while not raw[pos:pos + 1].isspace():
            pos += 1
        fields.append(raw[start:pos].decode())
    pos += 1  # exactly one whitespace byte after maxval
    if fields[0] != "P5":
        raise ValueError(f"{path}: not a binary PGM (magic {fields[0]!r})")
    W, H, maxval = int(fields[1]), int(fields[2]), int(fields[3])
    if maxval != 255:
        raise ValueError(f"{path}: maxval {maxval}, expected 255")
    body = np.frombuffer(raw, dtype=np.uint8, count=W * H, offset=pos)
    return body.reshape(H, W)


def load_nav2_map(yaml_path: Union[str, os.PathLike], frame_id: str = "map") -> OccupancyGrid2D:
    """Load a map_server pair the way ``nav2_map_server`` does in trinary mode
    (``occ = 1 - value/255`` (negate 0); occupied if ``occ > occupied_thresh``, free if
    ``occ < free_thresh``, else unknown; image row ``y`` -> map row ``height - 1 - y``)."""
    import yaml

    yaml_path = Path(yaml_path)
    meta = yaml.safe_load(yaml_path.read_text())
    if meta.get("mode", "trinary") != "trinary":
        raise ValueError("only trinary maps are supported")
    img_path = Path(meta["image"])
    if not img_path.is_absolute():
        img_path = yaml_path.parent / img_path
    img = read_pgm(img_path).astype(np.float64)
    shade = img / 255.0
    occ = shade if int(meta.get("negate", 0)) else 1.0 - shade
    data = np.full(img.shape, UNKNOWN, dtype=np.int8)
    data[occ < float(meta["free_thresh"])] = FREE
    data[occ > float(meta["occupied_thresh"])] = OCCUPIED
    ox, oy, yaw = (float(v) for v in meta["origin"])
    if yaw != 0.0:
        raise ValueError("only yaw 0 origins are supported")
    return OccupancyGrid2D(data[::-1].copy(), float(meta["resolution"]), (ox, oy), frame_id)
