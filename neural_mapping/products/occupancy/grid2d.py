"""2D occupancy grid of a height band of the map, one-shot or kept across map updates.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from neural_mapping.grid.field import VoxelField
from neural_mapping.products import require_field
from neural_mapping.products.occupancy.classify import ClassifiedVoxels, classify_voxels
from neural_mapping.products.occupancy.map_frame import check_map_transform, occupancy_config, resolution_of

__all__ = ["FREE", "OCCUPIED", "UNKNOWN", "OccupancyGrid2D", "occupancy_grid_2d", "OccupancyMap2D"]

FREE, OCCUPIED, UNKNOWN = 0, 100, -1

_EPS_CELL = 1e-3  # fraction of a cell: a footprint that only touches a cell border does not overlap it


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


def _project(vox: ClassifiedVoxels, res: float, vs: float, R_map_world: np.ndarray) -> _Projection:
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
        for dx in range(S):
            for dy in range(S):
                sel = (dx <= sx) & (dy <= sy)
                out[torch.where(sel, cell + dy * W + dx, trash)] = OCCUPIED
    return out[:trash].view(H, W)


def occupancy_grid_2d(field: VoxelField, cfg=None, T_world_map: Optional[np.ndarray] = None, *,
                      frame_id: str = "map",
                      bounds_cells: Optional[Tuple[int, int, int, int]] = None) -> OccupancyGrid2D:
    """One-shot 2D occupancy grid of the height band of ``field`` (see the module docstring).

    The grid is the tight box of the observed cells (origin a multiple of the
    resolution), or ``bounds_cells = (x0, y0, x1, y1)`` inclusive absolute cell indices
    (cell ``(i, j)`` covers ``[i*res, (i+1)*res) x [j*res, (j+1)*res)``).
    """
    require_field(field)
    ocfg = occupancy_config(cfg)
    T = check_map_transform(T_world_map)
    res = resolution_of(ocfg, field.voxel_size_m)
    proj = _project_band(field, ocfg, T, res)
    if bounds_cells is None:
        bounds_cells = _bounds_of(proj) or (0, 0, 0, 0)
    return _grid_from(proj, bounds_cells, res, frame_id, field.device)


def _project_band(field: VoxelField, ocfg, T: np.ndarray, res: float) -> _Projection:
    # free evidence only from the bottom of the band (see the module docstring)
    vs = field.voxel_size_m
    top = ocfg.occupancy_min_z_m + max(ocfg.occupancy_free_evidence_height_m, vs)
    vox = classify_voxels(field, ocfg, T, (ocfg.occupancy_min_z_m, ocfg.occupancy_max_z_m),
                          free_top=top)
    idx = (vox.occupied | (vox.xyz[:, 2] <= top)).nonzero(as_tuple=True)[0]
    vox = ClassifiedVoxels(vox.xyz.index_select(0, idx), vox.occupied.index_select(0, idx),
                           vox.flat.index_select(0, idx))
    return _project(vox, res, vs, np.linalg.inv(T)[:3, :3])


def _grid_from(proj: _Projection, bounds: Tuple[int, int, int, int], res: float, frame_id: str,
               device) -> OccupancyGrid2D:
    x0, y0, x1, y1 = bounds
    W, H = x1 - x0 + 1, y1 - y0 + 1
    data = _rasterize(proj, x0, y0, W, H, device).cpu().numpy()
    return OccupancyGrid2D(data, res, (x0 * res, y0 * res), frame_id)


class OccupancyMap2D:
    """The 2D grid kept across map updates with a stable origin and size.

    ``update(field)`` re-projects the height band and returns the grid; the bounds only
    change when observed space leaves them, then grow by ``occupancy_grid_growth_m`` per
    side (or half the current extent, if more).  ``bounds_changed`` says whether the last
    update changed them (a subscriber's costmap resize).  ``T_world_map`` is fixed for the
    map's life: a caller that needs the first pose for it (see
    :func:`~neural_mapping.products.occupancy.map_frame.map_transform_from_config`) builds
    the map once that pose is known.
    """

    def __init__(self, cfg=None, T_world_map: Optional[np.ndarray] = None, frame_id: str = "map"):
        self.cfg = occupancy_config(cfg)
        self.T_world_map = check_map_transform(T_world_map)
        self.frame_id = frame_id
        self.bounds_cells: Optional[Tuple[int, int, int, int]] = None
        self.resolution_m: Optional[float] = None
        self.bounds_changed = False
        self.num_resizes = 0
        self.last: Optional[OccupancyGrid2D] = None

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

    def update(self, field: VoxelField) -> Optional[OccupancyGrid2D]:
        """The grid of ``field`` on the kept bounds (grown if needed); None while nothing is observed."""
        require_field(field)
        res = resolution_of(self.cfg, field.voxel_size_m)
        if self.resolution_m is not None and res != self.resolution_m:
            self.bounds_cells = None
        self.resolution_m = res
        proj = _project_band(field, self.cfg, self.T_world_map, res)
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
        self.last = _grid_from(proj, self.bounds_cells, res, self.frame_id, field.device)
        return self.last

