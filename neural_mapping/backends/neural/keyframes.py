"""Rays of frames for the mapper: the current frame's and a bounded set of keyframes'.

A :class:`RaySet` holds rays in the world frame: origin ``o`` [3], directions ``dirs`` [N, 3]
(the z = 1 camera rays rotated to the world, so ``o + t * dir`` is at camera depth ``t``),
measured depth [N] and color [N, 3] (0..1, or None).  A keyframe keeps ``keyframe_rays``
valid pixels drawn at random (seeded) and the blocks its frame touched; the window for a
mapping step is the ``window`` keyframes sharing the most blocks with the current frame
(NICE-SLAM picks by overlap as well), ties to the newest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch

from neural_mapping.types import CameraIntrinsics


@dataclass
class RaySet:
    origin: torch.Tensor      # [3]
    dirs: torch.Tensor        # [N, 3]
    depth: torch.Tensor       # [N]
    color: Optional[torch.Tensor]  # [N, 3] 0..1
    blocks: Optional[torch.Tensor] = None  # block coords [M, 3] int32 the frame touched

    @property
    def n(self) -> int:
        return int(self.depth.shape[0])

    def take(self, idx: torch.Tensor) -> "RaySet":
        return RaySet(self.origin, self.dirs[idx], self.depth[idx],
                      None if self.color is None else self.color[idx], self.blocks)

    def state(self) -> dict:
        return {"origin": self.origin.cpu(), "dirs": self.dirs.cpu(), "depth": self.depth.cpu(),
                "color": None if self.color is None else self.color.cpu(),
                "blocks": None if self.blocks is None else self.blocks.cpu()}

    @classmethod
    def from_state(cls, s: dict, device) -> "RaySet":
        def dev(x):
            return None if x is None else x.to(device)
        return cls(dev(s["origin"]), dev(s["dirs"]), dev(s["depth"]), dev(s["color"]),
                   dev(s["blocks"]))


def frame_rays(depth: np.ndarray, color: Optional[np.ndarray], intr: CameraIntrinsics,
               T_world_cam: np.ndarray, depth_min_m: float, depth_max_m: float,
               device: torch.device) -> RaySet:
    """Every valid pixel of a frame as a :class:`RaySet`."""
    d = torch.as_tensor(np.ascontiguousarray(depth), dtype=torch.float32).reshape(-1)
    ok = torch.isfinite(d) & (d >= max(depth_min_m, 1e-6)) & (d <= depth_max_m)
    pix = ok.nonzero().squeeze(1)
    u = (pix % intr.width).float()
    v = (pix // intr.width).float()
    cam = torch.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, torch.ones_like(u)], 1)
    T = torch.as_tensor(np.asarray(T_world_cam), dtype=torch.float32)
    dirs = cam @ T[:3, :3].T
    col = None
    if color is not None:
        c = torch.as_tensor(np.ascontiguousarray(color)).reshape(-1, 3)
        col = c.index_select(0, pix).float().div_(255.0).to(device)
    return RaySet(T[:3, 3].to(device), dirs.to(device), d[pix].to(device), col)


def concat(sets: List[RaySet]):
    """``(origins [N, 3], dirs [N, 3], depth [N], color [N, 3] or None)`` of several sets."""
    o = torch.cat([s.origin[None].expand(s.n, 3) for s in sets])
    d = torch.cat([s.dirs for s in sets])
    z = torch.cat([s.depth for s in sets])
    c = None if any(s.color is None for s in sets) else torch.cat([s.color for s in sets])
    return o, d, z, c


class Keyframes:
    def __init__(self, max_keyframes: int, rays_per_keyframe: int):
        self.max_keyframes = int(max_keyframes)
        self.rays_per_keyframe = int(rays_per_keyframe)
        self.frames: List[RaySet] = []

    def add(self, rays: RaySet, generator: torch.Generator) -> None:
        n = min(self.rays_per_keyframe, rays.n)
        idx = torch.randperm(rays.n, generator=generator)[:n].to(rays.depth.device)
        self.frames.append(rays.take(idx))
        if len(self.frames) > self.max_keyframes:
            self.frames.pop(0)

    def window(self, blocks: torch.Tensor, k: int, grid) -> List[RaySet]:
        """The ``k`` keyframes sharing the most blocks (coords) with ``blocks`` [M, 3]."""
        if k <= 0 or not self.frames or blocks.numel() == 0:
            return []
        mark = torch.zeros(grid.capacity, dtype=torch.bool, device=grid.device)
        cur = grid.lookup(blocks)
        mark[cur[cur >= 0]] = True
        scores = []
        for i, kf in enumerate(self.frames):
            s = grid.lookup(kf.blocks)
            scores.append(int(mark[s[s >= 0]].sum()) if s.numel() else 0)
        order = sorted(range(len(self.frames)), key=lambda i: (-scores[i], -i))
        return [self.frames[i] for i in order[:k] if scores[i] > 0]

    def replay(self, exclude: List[RaySet], k: int, generator: torch.Generator) -> List[RaySet]:
        """Up to ``k`` keyframes drawn at random (seeded) among those not in ``exclude``."""
        ids = [i for i, f in enumerate(self.frames) if not any(f is e for e in exclude)]
        if k <= 0 or not ids:
            return []
        pick = torch.randperm(len(ids), generator=generator)[:k].tolist()
        return [self.frames[ids[i]] for i in sorted(pick)]

    def state(self) -> List[dict]:
        return [f.state() for f in self.frames]

    def load(self, states: List[dict], device) -> None:
        self.frames = [RaySet.from_state(s, device) for s in states]
