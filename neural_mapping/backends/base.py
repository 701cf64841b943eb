"""The map-backend seam: what the system, the tracker and the products may ask of a map.

A backend owns one map on the shared sparse voxel-block grid
(:class:`~neural_mapping.grid.voxel_grid.VoxelBlockGrid`) and is built by
:func:`neural_mapping.backends.get_backend` from the ``backend`` config field.  Nothing
outside a backend's package reads its storage: the system calls :meth:`MapBackend.integrate`
(the mapping thread is the only caller of anything that writes), the tracker and the
pictures call :meth:`MapBackend.render`, meshing and occupancy read
:meth:`MapBackend.field`, save/load go through :meth:`MapBackend.state_dict` /
:meth:`MapBackend.load_state_dict`, bounded memory through :meth:`MapBackend.evict`
(:mod:`neural_mapping.system.map_bounds` decides which blocks go).

Adding a backend: a package ``neural_mapping/backends/<name>/`` with a class satisfying
:class:`MapBackend` and a ``from_config(cfg)`` constructor, registered in
``neural_mapping/backends/__init__.py``; no other module changes.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Protocol, Tuple, runtime_checkable

import numpy as np
import torch

from neural_mapping.grid.field import VoxelField
from neural_mapping.grid.raycast import RaycastResult, raycast
from neural_mapping.grid.voxel_grid import VoxelBlockGrid
from neural_mapping.types import CameraIntrinsics, RGBDFrame


@runtime_checkable
class MapBackend(Protocol):
    name: str
    """Registry name (``tsdf``, ``neural``); stored in map files."""
    grid: VoxelBlockGrid
    """The blocks this map has allocated (coordinates + index); read-only outside the backend."""
    truncation_m: float
    depth_min_m: float
    depth_max_m: float

    @property
    def device(self) -> torch.device: ...

    @property
    def voxel_size_m(self) -> float: ...

    def integrate(self, frame: RGBDFrame, T_world_cam: np.ndarray) -> Dict[str, Any]:
        """Fuse ``frame`` seen from ``T_world_cam`` (4x4 camera-to-world).  Returns stats with at
        least ``slots`` (int64 tensor: the blocks whose field may have changed, which drive
        incremental meshing), ``blocks_touched``, ``blocks_new``, ``blocks_total``.  Raises
        :class:`~neural_mapping.grid.voxel_grid.CapacityError` with the map unchanged when the
        block budget would be exceeded."""
        ...

    def render(self, intrinsics: CameraIntrinsics, T_world_cam: np.ndarray, *,
               depth_range: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
               color: bool = True, fast: bool = False,
               depth_limits_m: Optional[Tuple[float, float]] = None) -> RaycastResult:
        """Depth / points / normals (/ color) of the map seen from ``T_world_cam`` at
        ``intrinsics``' resolution, within the sensor's depth range (``depth_limits_m=(near,
        far)`` overrides it for this render: pictures from further away).
        ``depth_range=(near, far)`` per pixel: where the surface is known to lie (rays without
        a hint are misses), see :func:`~neural_mapping.grid.raycast.depth_range_from_depth`.
        ``fast``: the tracker's model view (one lookup per hit; normals and validity only)."""
        ...

    def field(self, copy: bool = False) -> VoxelField:
        """The map as a truncated SDF on ``grid``'s blocks (see :mod:`neural_mapping.grid.field`);
        ``copy=True``: a private copy that later writes do not touch."""
        ...

    def memory_bytes(self) -> int:
        """Bytes the map holds (block pools, features, caches): what the map costs."""
        ...

    def evict(self, coords: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Free the blocks ``coords`` ``[N, 3]`` of ``grid`` and every per-block state the
        backend keeps for them (features, optimiser state, caches); unallocated ones are
        ignored.  Returns :meth:`VoxelBlockGrid.remove`'s ``(src, dst)`` slot moves of ``grid``
        (what a caller keeping per-slot data of its own must apply)."""
        ...

    def configure(self, values: Dict[str, Any]) -> None:
        """Apply runtime-tunable config values (flat names, already validated), e.g.
        ``{"depth_max_m": 2.5}``; keys the backend does not use are ignored."""
        ...

    def state_dict(self) -> Dict[str, Any]:
        """Tensors and plain types only (loadable with ``torch.load(weights_only=True)``)."""
        ...

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Replace the map by a saved one; raises ``ValueError`` (map unchanged) on mismatch."""
        ...

    def reset(self) -> None:
        """Clear the map."""
        ...


def raycast_render(backend: MapBackend, intrinsics: CameraIntrinsics, T_world_cam: np.ndarray, *,
                   depth_range: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                   color: bool = True, fast: bool = False,
                   depth_limits_m: Optional[Tuple[float, float]] = None) -> RaycastResult:
    """:meth:`MapBackend.render` by the shared ray caster over ``backend.field()``, within the
    backend's sensor range (or ``depth_limits_m``); a backend uses it as ``render = raycast_render``."""
    near, far = depth_limits_m or (backend.depth_min_m, backend.depth_max_m)
    return raycast(backend.field(), intrinsics, T_world_cam, depth_min_m=near, depth_max_m=far,
                   with_color=color, depth_range=depth_range, march_unhinted=depth_range is None,
                   fast=fast)
