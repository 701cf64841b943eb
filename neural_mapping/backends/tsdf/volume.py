"""The TSDF backend: projective TSDF fusion on the shared voxel-block grid.

:class:`TSDFVolume` is both the system's ``tsdf`` map backend (:class:`~neural_mapping.backends.base.MapBackend`)
and the vdbfusion-style facade for fusion alone (numpy in, checks at the boundary)::

    vol = TSDFVolume(voxel_size_m=0.02)           # any flat config field; the rest from the typed config
    vol.integrate(depth, intrinsics, T_world_cam, color)   # or vol.integrate(frame[, T_world_cam])
    mesh = extract_mesh(vol.field())

The kernel is :func:`neural_mapping.backends.tsdf.integrate.integrate`.  Its storage (the
``tsdf``/``weight``/``color`` block pools) is the field it exposes: :meth:`TSDFVolume.field`
is zero copy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional

import numpy as np
import torch

from neural_mapping.backends.base import raycast_render
from neural_mapping.backends.tsdf.integrate import integrate
from neural_mapping.backends.tsdf.robust import filter_depth
from neural_mapping.config import GridConfig, IntegrationConfig, MappingConfig
from neural_mapping.grid.field import VoxelField
from neural_mapping.grid.sampling import trilinear
from neural_mapping.grid.voxel_grid import TSDF_ATTRIBUTES, VoxelBlockGrid
from neural_mapping.types import CameraIntrinsics, RGBDFrame, check_pose

__all__ = ["TSDFVolume"]

# facade keyword -> typed config field
_ALIASES = {"block_size": "block_size_vox", "initial_capacity": "initial_capacity_blocks",
            "max_capacity": "max_capacity_blocks", "alloc_stride": "alloc_stride_px"}
# config fields this backend reads at run time (``configure``)
_TUNABLE = ("depth_min_m", "depth_max_m", "max_weight", "integrate_color")


class TSDFVolume:
    """The ``tsdf`` map backend and fusion facade; see the module docstring.

    ``TSDFVolume(cfg)`` with a :class:`~neural_mapping.config.MappingConfig`, or
    ``TSDFVolume(voxel_size_m=..., truncation_m=..., <any flat config field>=...)``: fields not
    given keep the typed config's defaults (``block_size``, ``initial_capacity``,
    ``max_capacity`` and ``alloc_stride`` are accepted for the ``*_vox`` / ``*_blocks`` /
    ``*_px`` fields; ``truncation_m`` sets ``truncation_vox``).
    """

    name = "tsdf"

    def __init__(self, voxel_size_m=None, *, truncation_m: Optional[float] = None, **overrides):
        if isinstance(voxel_size_m, MappingConfig):
            if truncation_m is not None or overrides:
                raise TypeError("TSDFVolume(cfg) takes no further arguments")
            cfg = voxel_size_m
        else:
            flat = {_ALIASES.get(k, k): v for k, v in overrides.items()}
            if voxel_size_m is not None:
                flat["voxel_size_m"] = voxel_size_m
            if truncation_m is not None:
                vs = flat.get("voxel_size_m", GridConfig.voxel_size_m)
                if not (isinstance(truncation_m, (int, float)) and math.isfinite(truncation_m)
                        and truncation_m > 0):
                    raise ValueError(f"truncation_m must be a positive number, got {truncation_m!r}")
                flat["truncation_vox"] = float(truncation_m) / float(vs)
            cfg = MappingConfig.from_flat(flat)
        self._apply(cfg.integration, cfg.truncation_m)
        self.grid = VoxelBlockGrid.from_config(cfg.grid, TSDF_ATTRIBUTES)

    @classmethod
    def from_config(cls, cfg: MappingConfig) -> "TSDFVolume":
        return cls(cfg)

    def _apply(self, icfg: IntegrationConfig, truncation_m: float) -> None:
        self.integration_config = icfg
        self.truncation_m = float(truncation_m)
        self.depth_min_m = float(icfg.depth_min_m)
        self.depth_max_m = float(icfg.depth_max_m)
        self.max_weight = float(icfg.max_weight)
        self.integrate_color = bool(icfg.integrate_color)
        self.alloc_stride = int(icfg.alloc_stride_px)
        self.robust = bool(icfg.robust_fusion)

    @property
    def voxel_size_m(self) -> float:
        return self.grid.voxel_size_m

    @property
    def device(self) -> torch.device:
        return self.grid.device

    # ------------------------------------------------------------------ MapBackend
    def integrate(self, frame_or_depth, intrinsics: Optional[CameraIntrinsics] = None,
                  T_world_cam=None, color=None) -> Dict[str, Any]:
        """Fuse an :class:`RGBDFrame` (``integrate(frame[, T_world_cam])``; its ``.pose`` when no
        pose is given) or ``depth`` [H, W] float32 metres + ``intrinsics`` + ``T_world_cam``
        (4x4 camera-to-world) + optional ``color`` [H, W, 3] uint8.  Returns the kernel's stats
        (``slots``: the blocks it updated)."""
        if isinstance(frame_or_depth, RGBDFrame):
            fr = frame_or_depth
            if intrinsics is not None and not isinstance(intrinsics, CameraIntrinsics):
                if T_world_cam is not None:
                    raise TypeError("integrate(frame, T_world_cam): got both a pose in the "
                                    "intrinsics position and T_world_cam")
                T_world_cam, intrinsics = intrinsics, None  # integrate(frame, T)
            depth, intrinsics = fr.depth, fr.intrinsics
            color = fr.color if color is None else color
            if T_world_cam is None:
                T_world_cam = fr.pose
            if T_world_cam is None:
                raise ValueError(f"frame {fr.index} has no pose; pass T_world_cam")
        else:
            depth = frame_or_depth
            if not isinstance(intrinsics, CameraIntrinsics):
                raise TypeError("intrinsics must be a CameraIntrinsics when a depth image is given, "
                                f"got {type(intrinsics).__name__}")
            if T_world_cam is None:
                raise ValueError("T_world_cam (4x4 camera-to-world) is required with a depth image")
        self._check_depth(depth, intrinsics)
        if color is not None:
            self._check_color(color, intrinsics)
        T = check_pose(T_world_cam.detach().cpu().numpy() if isinstance(T_world_cam, torch.Tensor)
                       else T_world_cam, "T_world_cam")
        carve = 0
        if self.robust:
            ic = self.integration_config
            d = depth.detach().cpu().numpy() if isinstance(depth, torch.Tensor) else depth
            depth, _ = filter_depth(d, jump_ratio=ic.robust_jump_ratio,
                                    min_segment_px=ic.robust_min_segment_px,
                                    depth_min_m=self.depth_min_m, depth_max_m=self.depth_max_m)
            carve = int(ic.robust_carve_stride_px)
        return integrate(self.grid, depth, intrinsics, T, color if self.integrate_color else None,
                         truncation_m=self.truncation_m, depth_min_m=self.depth_min_m,
                         depth_max_m=self.depth_max_m, max_weight=self.max_weight,
                         integrate_color=self.integrate_color, alloc_stride=self.alloc_stride,
                         carve_stride=carve,
                         carve_below_weight=float(self.integration_config.robust_carve_below_weight))

    render = raycast_render  # the shared ray caster over the TSDF

    def field(self, copy: bool = False) -> VoxelField:
        """The TSDF itself as a :class:`VoxelField` (views of the block pool; ``copy``: private)."""
        a = self.grid.attrs
        f = VoxelField(self.grid, a["tsdf"], a["weight"], a.get("color"), self.truncation_m)
        return f.copy() if copy else f

    def memory_bytes(self) -> int:
        return self.grid.memory_bytes()

    def evict(self, coords: torch.Tensor):
        """Free the blocks ``coords`` (their TSDF, weight and color live only in the grid)."""
        return self.grid.remove(coords)

    def configure(self, values: Dict[str, Any]) -> None:
        """Runtime changes of ``depth_min_m``, ``depth_max_m``, ``max_weight``, ``integrate_color``
        (other keys ignored); the next :meth:`integrate` uses them."""
        known = {k: v for k, v in values.items() if k in _TUNABLE}
        if known:
            icfg = dataclasses.replace(self.integration_config, **known)
            MappingConfig(integration=icfg).validate()  # e.g. depth_min_m < depth_max_m
            self._apply(icfg, self.truncation_m)

    def state_dict(self) -> Dict[str, Any]:
        return {"backend": self.name, "truncation_m": self.truncation_m, "grid": self.grid.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("backend") != self.name:
            raise ValueError(f"map backend {state.get('backend')!r} cannot be loaded into a {self.name!r} map")
        g = state["grid"]
        if abs(float(g["voxel_size_m"]) - self.voxel_size_m) > 1e-12 or int(g["block_size"]) != self.grid.block_size:
            raise ValueError(f"map voxel size {g['voxel_size_m']} m / block size {g['block_size']} differs "
                             f"from the configured {self.voxel_size_m} m / {self.grid.block_size}")
        self.grid = VoxelBlockGrid.from_state_dict(g, device=self.device, max_capacity=self.grid.max_capacity)

    def reset(self) -> None:
        self.grid.reset()

    # ------------------------------------------------------------------ facade extras
    def sample_tsdf(self, points_world: torch.Tensor, with_color: bool = True):
        """Trilinear ``(tsdf [N], weight [N], color [N, 3] or None)`` at world points ``[N, 3]``:
        unobserved corners are left out and the rest renormalised (1.0 where none is observed);
        ``weight`` interpolates the voxel weights (``> 0``: observed); color float 0..255."""
        if not isinstance(points_world, torch.Tensor):
            points_world = torch.as_tensor(np.asarray(points_world, dtype=np.float32))
        if points_world.ndim != 2 or points_world.shape[1] != 3:
            raise ValueError(f"points_world must be [N, 3], got {tuple(points_world.shape)}")
        pts = points_world.to(device=self.device, dtype=torch.float32).T.contiguous()
        r = trilinear(self.field(), pts, with_color=with_color)
        return r["sdf"], r["weight"], r.get("color")

    @staticmethod
    def _check_depth(depth, intr: CameraIntrinsics) -> None:
        if not isinstance(depth, (np.ndarray, torch.Tensor)):
            raise TypeError(f"depth must be a numpy array or torch tensor, got {type(depth).__name__}")
        if depth.ndim != 2:
            raise ValueError(f"depth must be (H, W), got shape {tuple(depth.shape)}")
        if depth.dtype not in (np.float32, torch.float32):
            raise TypeError(f"depth must be float32 metres, got {depth.dtype}")
        if tuple(depth.shape) != (intr.height, intr.width):
            raise ValueError(f"depth is {depth.shape[1]}x{depth.shape[0]} but intrinsics are "
                             f"{intr.width}x{intr.height}")

    @staticmethod
    def _check_color(color, intr: CameraIntrinsics) -> None:
        if not isinstance(color, (np.ndarray, torch.Tensor)):
            raise TypeError(f"color must be a numpy array or torch tensor, got {type(color).__name__}")
        if color.dtype not in (np.uint8, torch.uint8):
            raise TypeError(f"color must be uint8 RGB, got {color.dtype}")
        if tuple(color.shape) != (intr.height, intr.width, 3):
            raise ValueError(f"color must be ({intr.height}, {intr.width}, 3) RGB, got "
                             f"{tuple(color.shape)}")
