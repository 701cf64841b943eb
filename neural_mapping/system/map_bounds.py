"""Bounded map memory: which blocks to evict, after each integration (the mapping thread).

:class:`MapBounds` keeps, per block slot of the backend's grid, the integration count at which
the block was last touched (its *age*), and evicts through :meth:`MapBackend.evict
<neural_mapping.backends.base.MapBackend.evict>` (the backend frees its own per-block state;
nothing here knows what that is):

* ``map_radius_m`` > 0: every block whose centre is farther than it from the camera (checked
  every :data:`RADIUS_EVERY` integrations);
* a budget (``map_max_blocks``, or ``max_capacity_blocks`` when 0): past it, the blocks
  ranked worst by distance from the camera plus age (the sum of both ranks; blocks the
  current frame touched go last) are evicted down to 90 % of the budget.  A
  :class:`~neural_mapping.grid.voxel_grid.CapacityError` from ``integrate`` (the pool's
  end reached within one frame) evicts the same way down to 75 % and integrates again.

The first eviction of each kind is logged; all are counted (:meth:`MapBounds.stats`).
Evicted blocks are marked dirty in the mesh cache, with their -x/-y/-z neighbours (whose
cubes read them), so the next mesh update reports them as emptied (MarkerArray DELETE).
"""

from __future__ import annotations

import logging
from typing import Dict, Optional

import numpy as np
import torch

from neural_mapping.products.meshing.cache import pack_block_keys

log = logging.getLogger(__name__)

RADIUS_EVERY = 5  # integrations between two radius checks (a distance per block each time)
# the -x/-y/-z neighbours whose cubes read a block's first voxel layer
_NEIGHBOURS = torch.tensor([[dx, dy, dz] for dx in (0, -1) for dy in (0, -1) for dz in (0, -1)],
                           dtype=torch.int64)


class MapBounds:
    """Evicts blocks of one backend's map; see the module docstring."""

    def __init__(self, grid_config):
        self.radius_m = float(grid_config.map_radius_m)
        self.capacity = int(grid_config.max_capacity_blocks)
        self.budget = int(grid_config.map_max_blocks) or self.capacity
        self.counters: Dict[str, int] = {"blocks_evicted_radius": 0, "blocks_evicted_budget": 0,
                                         "evictions_capacity": 0}
        self._logged: set = set()
        self._seen = torch.zeros(0, dtype=torch.int64)
        self.tick = 0

    def reset(self) -> None:
        """The map was replaced: every block counts as just seen."""
        self._seen = torch.zeros(0, dtype=torch.int64)

    def stats(self) -> Dict[str, int]:
        return dict(self.counters)

    # ------------------------------------------------------------------ bookkeeping
    def _ages(self, grid) -> torch.Tensor:
        cap = grid.capacity
        if self._seen.numel() < cap or self._seen.device != grid.device:
            seen = torch.full((cap,), self.tick, dtype=torch.int64, device=grid.device)
            n = min(self._seen.numel(), cap)
            seen[:n] = self._seen[:n].to(grid.device)
            self._seen = seen
        return self._seen

    def touched(self, grid, slots: Optional[torch.Tensor]) -> None:
        """Blocks ``slots`` were integrated now."""
        self.tick += 1
        seen = self._ages(grid)
        if slots is not None and slots.numel():
            seen[slots.to(seen.device)] = self.tick

    # ------------------------------------------------------------------ eviction
    def after_integrate(self, backend, T_world_cam: np.ndarray, mesh_caches, version: int) -> int:
        """Evict what lies outside the radius, then what exceeds the budget; returns how many."""
        grid = backend.grid
        n = grid.num_blocks
        if n == 0:
            return 0
        total = 0
        if self.radius_m > 0 and self.tick % RADIUS_EVERY == 0:
            far = self._distances(grid, T_world_cam) > self.radius_m
            if bool(far.any()):
                total += self._evict(backend, far.nonzero().squeeze(1), "radius", mesh_caches,
                                     version)
        if grid.num_blocks > self.budget:
            total += self.shrink_to(backend, int(0.9 * self.budget), T_world_cam, mesh_caches,
                                    version, "budget")
        return total

    def shrink_to(self, backend, target: int, T_world_cam: np.ndarray, mesh_caches, version: int,
                  reason: str = "budget") -> int:
        """Evict the worst-ranked blocks (distance + age) until ``target`` remain."""
        grid = backend.grid
        n = grid.num_blocks
        k = n - max(0, target)
        if k <= 0:
            return 0
        dist = self._distances(grid, T_world_cam)
        age = self.tick - self._ages(grid)[:n]
        # rank sum: 0 = nearest / newest; touched by this frame (age 0) last
        score = _ranks(dist) + _ranks(age.to(torch.float64))
        score[age == 0] = -1
        worst = torch.topk(score, k).indices
        return self._evict(backend, worst, reason, mesh_caches, version)

    def _distances(self, grid, T_world_cam: np.ndarray) -> torch.Tensor:
        n = grid.num_blocks
        centre = (grid.block_coords[:n].to(torch.float64) + 0.5) * grid.block_size_m
        cam = torch.as_tensor(np.asarray(T_world_cam, dtype=np.float64)[:3, 3], device=grid.device)
        return (centre - cam).norm(dim=1)

    def _evict(self, backend, slots: torch.Tensor, reason: str, mesh_caches, version: int) -> int:
        grid = backend.grid
        coords = grid.block_coords[slots].to(torch.int64)
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("map bounds: evicting %d blocks (%s; logged once, counted in stats)",
                        int(coords.shape[0]), reason)
        seen = self._ages(grid)
        src, dst = backend.evict(coords)
        if src.numel():
            seen[dst.to(seen.device)] = seen[src.to(seen.device)]
        if mesh_caches:  # every consumer of the dirty marks re-meshes (or deletes) them
            nb = (coords[:, None, :] + _NEIGHBOURS.to(coords.device)[None]).reshape(-1, 3)
            keys = torch.unique(pack_block_keys(nb)).tolist()
            for cache in mesh_caches:
                cache.mark_dirty_keys(keys, version)
        key = "evictions_capacity" if reason == "capacity" else f"blocks_evicted_{reason}"
        self.counters[key] += 1 if reason == "capacity" else int(coords.shape[0])
        if reason == "capacity":
            self.counters["blocks_evicted_budget"] += int(coords.shape[0])
        return int(coords.shape[0])


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Rank of each value (0 = smallest), float64."""
    r = torch.empty_like(x, dtype=torch.float64)
    r[torch.argsort(x)] = torch.arange(x.numel(), dtype=torch.float64, device=x.device)
    return r
