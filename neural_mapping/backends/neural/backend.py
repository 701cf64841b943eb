"""``backend: neural`` -- the :class:`~neural_mapping.backends.base.MapBackend` glue.

Per :meth:`Backend.integrate` (the mapping thread):

1. the TSDF prior fuses the frame (allocation: no bounding box; initial SDF and color;
   the observation weight that says which voxels are observed);
2. the feature levels allocate the same blocks;
3. every ``neural_map_every_frames``-th frame, a mapping step (:meth:`NeuralModel.map_step`)
   on rays of the current frame, the keyframe window and a few replayed keyframes,
   optimising only the features of the blocks this frame touched (+ the decoders during
   their first ``neural_decoder_steps`` steps); every ``neural_keyframe_every_frames``-th
   frame becomes a keyframe;
4. the field cache is brought up to date: up to ``neural_field_max_blocks`` stale blocks
   (features or decoders changed since their last decode) are decoded, the current frame's
   first, and the field of the decoded and the touched blocks is recomposed from the
   current prior and the cached decoder outputs; the returned ``slots`` are exactly those
   blocks, so the mesh cache re-meshes what changed.

:meth:`Backend.field` is then a pure read (views of the cache, or a copy of them: never a
decode, so readers holding the map lock, e.g. the node's snapshots, never stall the mapping
thread; :meth:`Backend.decode_all` brings every block up to date when a caller wants that), :meth:`Backend.render` ray casts it with the shared ray caster, so the ICP
tracker (the tracking used with this backend; no tracking-by-rendering), meshing and
occupancy work unchanged.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Deque, Dict

import numpy as np
import torch

from neural_mapping.backends.base import raycast_render
from neural_mapping.backends.neural.keyframes import Keyframes, frame_rays
from neural_mapping.backends.neural.model import NeuralModel
from neural_mapping.backends.tsdf import Backend as TSDFBackend
from neural_mapping.grid.field import VoxelField
from neural_mapping.grid.voxel_grid import VoxelBlockGrid
from neural_mapping.types import RGBDFrame, check_pose


class Backend:
    name = "neural"

    def __init__(self, cfg):
        self.config = cfg
        self.prior = TSDFBackend.from_config(cfg)
        n = cfg.neural
        for sp in (n.neural_coarse_spacing_vox, n.neural_fine_spacing_vox, n.neural_color_spacing_vox):
            if cfg.grid.block_size_vox % sp or cfg.grid.block_size_vox // sp < 2:
                raise ValueError(f"neural feature spacing {sp} voxels must divide block_size_vox "
                                 f"({cfg.grid.block_size_vox}) into at least 2")
        self.seed = int(cfg.run.seed)
        self.reset()

    @classmethod
    def from_config(cls, cfg) -> "Backend":
        return cls(cfg)

    # ------------------------------------------------------------------ attributes
    @property
    def grid(self) -> VoxelBlockGrid:
        return self.prior.grid

    @property
    def truncation_m(self) -> float:
        return self.prior.truncation_m

    @property
    def depth_min_m(self) -> float:
        return self.prior.depth_min_m

    @property
    def depth_max_m(self) -> float:
        return self.prior.depth_max_m

    @property
    def device(self) -> torch.device:
        return self.prior.device

    @property
    def voxel_size_m(self) -> float:
        return self.prior.voxel_size_m

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        n = self.config.neural
        self.prior.reset()
        self.model = NeuralModel(self.config, self.device, self.seed)
        self.keyframes = Keyframes(n.neural_max_keyframes, n.neural_keyframe_rays)
        self.frames = 0
        self.timings: Dict[str, Deque[float]] = {k: collections.deque(maxlen=10_000)  # bounded
                                                 for k in ("map_ms", "decode_ms")}
        self._sdf = torch.empty(0)
        self._ensure_cache()

    def _ensure_cache(self) -> None:
        """Per block slot of the prior grid: the decoder outputs (``_r``, ``_c``, float16), the
        composed field (``_sdf``, ``_color``) and ``_stale`` (decoder outputs out of date)."""
        cap, B = self.grid.capacity, self.grid.block_size
        if self._sdf.shape[:1] == (cap,) and self._sdf.device == self.device:
            return
        old = self._sdf.shape[0]
        nv, dev = B ** 3, self.device
        new = {"_sdf": torch.ones((cap, B, B, B), device=dev),
               "_color": torch.zeros((cap, B, B, B, 3), device=dev),
               "_r": torch.zeros((cap, nv), dtype=torch.float16, device=dev),
               "_c": torch.zeros((cap, nv, 3), dtype=torch.float16, device=dev),
               "_stale": torch.ones(cap, dtype=torch.bool, device=dev)}
        for k, t in new.items():
            if old:
                t[:min(old, cap)] = getattr(self, k)[:min(old, cap)]
            setattr(self, k, t)

    def configure(self, values: Dict[str, Any]) -> None:
        """The prior's runtime values (depth range, max weight, color); the mapper reads the
        depth range from it."""
        self.prior.configure(values)

    def evict(self, coords: torch.Tensor):
        """Free the blocks ``coords``: the prior's voxels, the feature levels' features and Adam
        state, and the field cache's rows (moved like the prior grid's slots).  Keyframes stay
        (bounded by ``neural_max_keyframes``; rays into freed blocks are not sampled)."""
        self._ensure_cache()
        n0 = self.grid.num_blocks
        src, dst = self.prior.evict(coords)
        n1 = self.grid.num_blocks
        for k, fill in (("_sdf", 1.0), ("_color", 0.0), ("_r", 0.0), ("_c", 0.0), ("_stale", True)):
            t = getattr(self, k)
            if src.numel():
                t[dst] = t[src]
            t[n1:n0] = fill
        for lv in self.model.levels:
            lv.grid.remove(coords)
        return src, dst

    # ------------------------------------------------------------------ writing
    def integrate(self, frame: RGBDFrame, T_world_cam: np.ndarray) -> Dict[str, Any]:
        n = self.config.neural
        T = check_pose(T_world_cam, "T_world_cam")
        stats = self.prior.integrate(frame.depth, frame.intrinsics, T, frame.color)
        self._ensure_cache()
        slots = stats["slots"]
        coords = self.grid.block_coords.index_select(0, slots)
        self.model.allocate(coords)
        self.frames += 1
        rays = None
        if slots.numel():
            rays = frame_rays(frame.depth, frame.color, frame.intrinsics, T, self.depth_min_m,
                              self.depth_max_m, self.device)
            rays.blocks = coords
        if rays is not None and rays.n and n.neural_iterations > 0 and \
                (self.frames - 1) % n.neural_map_every_frames == 0:
            window = self.keyframes.window(coords, n.neural_window_keyframes, self.grid)
            replay = self.keyframes.replay(window, n.neural_replay_keyframes, self.model.generator) \
                if n.neural_replay_fraction > 0 else []
            out = self.model.map_step(rays, window, coords, self.prior.field(),
                                      depth_min_m=self.depth_min_m, replay=replay)
            self.timings["map_ms"].append(out["map_ms"])
            if out.pop("decoders_changed"):
                self._stale[: self.grid.num_blocks] = True
            else:
                self._stale[slots] = True  # their features changed
            stats.update(out)
        if rays is not None and rays.n and (self.frames - 1) % n.neural_keyframe_every_frames == 0:
            self.keyframes.add(rays, self.model.generator)
        t0 = time.perf_counter()
        stats["frame_slots"] = slots  # the blocks this frame touched (and optimised)
        stats["slots"] = self._refresh(slots, n.neural_field_max_blocks)
        self.timings["decode_ms"].append(1000 * (time.perf_counter() - t0))
        stats["decode_ms"] = self.timings["decode_ms"][-1]
        return stats

    def _refresh(self, touched: torch.Tensor, cap: int) -> torch.Tensor:
        """Decode up to ``cap`` stale blocks (0 = all), those among ``touched`` first, then
        compose the field of the decoded and the ``touched`` blocks (their prior changed).
        Returns the slots whose field was rewritten."""
        nb = self.grid.num_blocks
        mine = touched[self._stale[touched]]
        self._stale[mine] = False
        others = self._stale[:nb].nonzero().squeeze(1)
        self._stale[mine] = True
        dec = torch.cat([mine, others])
        if cap > 0:
            dec = dec[:cap]
        self._stale[dec] = False
        others = dec[mine.numel():]
        g = self.grid
        for part in (dec.split(2048) if dec.numel() else ()):
            r, c = self.model.decode_blocks(g.block_coords.index_select(0, part))
            self._r.index_copy_(0, part, r.half())
            self._c.index_copy_(0, part, c.half())
        slots = torch.cat([touched, others])
        nv = g.block_size ** 3
        pf = self.prior.field()
        for part in (slots.split(4096) if slots.numel() else ()):
            ps = pf.sdf.index_select(0, part).view(-1, nv)
            pc = None if pf.color is None else pf.color.index_select(0, part).view(-1, nv, 3)
            s, c = self.model.compose_blocks(self._r.index_select(0, part),
                                             self._c.index_select(0, part), ps, pc)
            self._sdf.view(-1, nv).index_copy_(0, part, s)
            self._color.view(-1, nv, 3).index_copy_(0, part, c)
        return slots

    # ------------------------------------------------------------------ reading
    def decode_all(self) -> torch.Tensor:
        """Decode every stale block now (a writer: call it where ``integrate`` may be called);
        returns the slots whose field changed."""
        self._ensure_cache()
        return self._refresh(torch.empty(0, dtype=torch.int64, device=self.device), 0)

    def field(self, copy: bool = False) -> VoxelField:
        """The decoded field as of the last :meth:`integrate` (or :meth:`decode_all`)."""
        self._ensure_cache()
        f = VoxelField(self.grid, self._sdf, self.prior.field().weight, self._color, self.truncation_m)
        return f.copy() if copy else f

    render = raycast_render  # the shared ray caster over the decoded field

    def memory_bytes(self) -> int:
        """Block pools of the prior and the feature levels, the field cache, the keyframes."""
        total = self.grid.memory_bytes() + sum(lv.grid.memory_bytes() for lv in self.model.levels)
        for t in (self._sdf, self._color, self._r, self._c, self._stale):
            total += t.numel() * t.element_size()
        for kf in self.keyframes.frames:
            total += sum(x.numel() * x.element_size() for x in (kf.dirs, kf.depth, kf.color, kf.blocks)
                         if x is not None)
        return total + sum(p.numel() * 4 for p in self.model.decoders.parameters())

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> Dict[str, Any]:
        return {"backend": self.name, "prior": self.prior.state_dict(), "model": self.model.state(),
                "mode": self.config.neural.neural_mode, "keyframes": self.keyframes.state(),
                "frames": self.frames}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("backend") != self.name:
            raise ValueError(f"map backend {state.get('backend')!r} cannot be loaded into a "
                             f"{self.name!r} map")
        if state["mode"] != self.config.neural.neural_mode:
            raise ValueError(f"map was saved in neural_mode {state['mode']!r}, config has "
                             f"{self.config.neural.neural_mode!r}")
        model = NeuralModel(self.config, self.device, self.seed)
        model.load(state["model"])  # raises ValueError before anything of ours changes
        self.prior.load_state_dict(state["prior"])  # checks voxel and block size first
        self.model = model
        self.keyframes.load(state["keyframes"], self.device)
        self.frames = int(state["frames"])
        self._sdf = torch.empty(0)
        self._ensure_cache()
        self._stale[: self.grid.num_blocks] = True
        self._refresh(torch.empty(0, dtype=torch.int64, device=self.device), 0)
