"""The neural map: feature levels (or one global MLP), decoders, the mapping step, block decoding.

:meth:`NeuralModel.query` is the map as a function of world points (differentiable in the
features, the decoders and the points); :meth:`NeuralModel.map_step` is one mapping step
(rays of the current frame + keyframe window, Adam on the features of the current frame's
blocks only, plus the decoders while they are trained); :meth:`NeuralModel.decode_blocks`
decodes every voxel centre of some blocks for the field (separable upsampling of the vertex
features, then the decoders in chunks).
"""

from __future__ import annotations

import time
from typing import Dict, List, Optional

import torch

from neural_mapping.backends.neural import rendering
from neural_mapping.backends.neural.decoders import make_decoders
from neural_mapping.backends.neural.features import (LocalFeatures, block_voxel_features,
                                                     make_levels, upsample_matrix)
from neural_mapping.backends.neural.keyframes import RaySet, concat
from neural_mapping.grid.sampling import trilinear

_CHUNK = 1 << 16  # points per decoder call when decoding blocks


class NeuralModel:
    def __init__(self, cfg, device: torch.device, seed: int):
        n = cfg.neural
        self.cfg = n
        self.imap = n.neural_mode == "imap"
        self.use_prior = n.neural_sdf_prior and not self.imap
        self.device = device
        self.block_size = cfg.grid.block_size_vox
        self.voxel_size_m = cfg.grid.voxel_size_m
        self.truncation_m = cfg.truncation_m
        self.generator = torch.Generator().manual_seed(seed)
        self.levels = [] if self.imap else make_levels(cfg, device, self.generator)
        self.decoders = make_decoders(cfg, device, seed)
        self._dec_opt = torch.optim.Adam(self.decoders.parameters(), lr=n.neural_lr_decoders)
        self.map_steps = 0
        self._A = {lv.spacing_vox: upsample_matrix(self.block_size, lv.spacing_vox, device)
                   for lv in self.levels}

    # ------------------------------------------------------------------ the map as a function
    def allocate(self, coords: torch.Tensor) -> None:
        for lv in self.levels:
            lv.allocate(coords)

    @property
    def trains_decoders(self) -> bool:
        return self.imap or self.map_steps < self.cfg.neural_decoder_steps

    def compose(self, r: torch.Tensor, c: torch.Tensor, prior_sdf: Optional[torch.Tensor],
                prior_color: Optional[torch.Tensor]):
        """SDF (truncation units) and color (0..1) from decoder outputs and the prior."""
        if self.use_prior:
            color = c if prior_color is None else prior_color / 255.0 + c
            return prior_sdf + r, color
        return 1.0 + r, torch.sigmoid(c)

    def decode_points(self, pts: torch.Tensor, corners=None, local=None):
        """Decoder outputs ``(r [N], c [N, 3])`` at world points ``pts`` [N, 3]."""
        if self.imap:
            return self.decoders(pts)
        if corners is None:
            corners = [lv.corners(pts) for lv in self.levels]
        feats = [lv.interpolate(idx, w, None if local is None else local[i])
                 for i, (lv, (idx, w)) in enumerate(zip(self.levels, corners))]
        return self.decoders(*feats)

    def query(self, pts: torch.Tensor, prior) -> Dict[str, torch.Tensor]:
        """``sdf`` [N] (truncation units, unclamped), ``color`` [N, 3] (0..1), ``valid`` [N]
        (the point lies in an allocated block) at world points [N, 3]; ``prior``: the TSDF
        prior's :class:`~neural_mapping.grid.field.VoxelField`."""
        valid = self.allocated(pts, prior.grid)
        ps, pc = self._prior(pts, prior)
        r, c = self.decode_points(pts)
        sdf, color = self.compose(r, c, ps, pc)
        return {"sdf": sdf, "color": color, "valid": valid}

    def allocated(self, pts: torch.Tensor, prior_grid) -> torch.Tensor:
        b = torch.floor(pts.detach() / prior_grid.block_size_m).to(torch.int32)
        return prior_grid.lookup_xyz(b[:, 0], b[:, 1], b[:, 2]) >= 0

    def _prior(self, pts: torch.Tensor, prior):
        if not self.use_prior:
            return None, None
        with torch.no_grad():
            out = trilinear(prior, pts.detach().T.contiguous(), with_color=True)
        return out["sdf"], out.get("color")

    # ------------------------------------------------------------------ mapping
    def map_step(self, current: RaySet, window: List[RaySet], active_coords: torch.Tensor,
                 prior, *, depth_min_m: float, replay: List[RaySet] = ()) -> Dict[str, float]:
        """``window``: keyframes overlapping the current frame; ``replay``: other keyframes,
        whose rays (``neural_replay_fraction`` of them) keep the shared decoders consistent
        with the rest of the map (Co-SLAM's global replay)."""
        n = self.cfg
        t0 = time.perf_counter()
        R = n.neural_rays
        n_rep = int(round(R * n.neural_replay_fraction)) if replay else 0
        n_cur = R - n_rep if not window else int(round((R - n_rep) * n.neural_current_fraction))
        sets = [current.take(self._pick(current.n, n_cur))]
        if window:
            per = max(1, (R - n_rep - n_cur) // len(window))
            sets += [kf.take(self._pick(kf.n, per)) for kf in window]
        if n_rep:
            per = max(1, n_rep // len(replay))
            sets += [kf.take(self._pick(kf.n, per)) for kf in replay]
        o, d, D, col = concat(sets)
        t = rendering.sample_depths(D, n_uniform=n.neural_samples_uniform,
                                    n_surface=n.neural_samples_surface, near_m=depth_min_m,
                                    truncation_m=self.truncation_m, generator=self.generator)
        Rn, S = t.shape
        pts = (o[:, None, :] + t[..., None] * d[:, None, :]).reshape(-1, 3)
        valid = self.allocated(pts, prior.grid).view(Rn, S)
        ps, pc = self._prior(pts, prior)
        corners = None if self.imap else [lv.corners(pts) for lv in self.levels]
        local = None
        if not self.imap:
            local = [LocalFeatures(lv, lv.slots_of(active_coords)) for lv in self.levels]
        train_dec = self.trains_decoders
        weights = {"sdf": n.neural_weight_sdf, "free": n.neural_weight_free,
                   "depth": n.neural_weight_depth, "color": n.neural_weight_color}
        losses = {}
        for _ in range(n.neural_iterations):
            r, c = self.decode_points(pts, corners, local)
            sdf, color = self.compose(r, c, ps, pc)
            sdf = sdf.view(Rn, S)
            rend = rendering.volume_render(sdf, t, valid, n.neural_sharpness,
                                           color.view(Rn, S, 3) if col is not None else None)
            losses = rendering.mapping_losses(sdf, t, valid, D, self.truncation_m, rend, col, weights,
                                              crossing=n.neural_depth_from_crossing)
            if self.use_prior and n.neural_weight_residual > 0:
                # keep the correction of the prior small where the data does not ask for one
                reg = (r.view(Rn, S) ** 2 * valid).sum() / valid.sum().clamp_min(1)
                losses["residual"] = reg
                losses["total"] = losses["total"] + n.neural_weight_residual * reg
            self._dec_opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            for lf in local or ():
                lf.adam_step(n.neural_lr_features)
            if train_dec:
                self._dec_opt.step()
        if local is not None:
            for lf in local:
                lf.write_back()
        self.map_steps += 1
        out = {f"loss_{k}": float(v.detach()) for k, v in losses.items()}
        out["map_ms"] = 1000 * (time.perf_counter() - t0)
        out["decoders_changed"] = bool(train_dec and n.neural_iterations > 0)
        return out

    def _pick(self, total: int, k: int) -> torch.Tensor:
        k = min(k, total)
        return torch.randperm(total, generator=self.generator)[:k].to(self.device)

    # ------------------------------------------------------------------ decoding the field
    @torch.no_grad()
    def decode_blocks(self, coords: torch.Tensor):
        """Decoder outputs ``(r [nb, B^3], c [nb, B^3, 3])`` at the voxel centres of blocks
        ``coords`` [nb, 3] (combine with the prior by :meth:`compose_blocks`)."""
        B = self.block_size
        nb = coords.shape[0]
        nv = B ** 3
        if self.imap:
            r_ = torch.arange(B, device=self.device, dtype=torch.float32)
            offs = torch.stack(torch.meshgrid(r_, r_, r_, indexing="ij"), -1).reshape(-1, 3)
            pts = ((coords.float()[:, None, :] * B + offs[None] + 0.5) * self.voxel_size_m).reshape(-1, 3)
            outs = [self.decoders(p) for p in pts.split(_CHUNK)]
        else:
            per_chunk = max(1, _CHUNK // nv)
            outs = []
            for cc in coords.split(per_chunk):
                f = [block_voxel_features(lv, cc, self._A[lv.spacing_vox]).reshape(-1, lv.channels)
                     for lv in self.levels]
                outs.append(self.decoders(*f))
        r = torch.cat([o[0] for o in outs]).view(nb, nv)
        c = torch.cat([o[1] for o in outs]).view(nb, nv, 3)
        return r, c

    @torch.no_grad()
    def compose_blocks(self, r: torch.Tensor, c: torch.Tensor, prior_sdf: torch.Tensor,
                       prior_color: Optional[torch.Tensor]):
        """The field's SDF ``[nb, B^3]`` (clamped to [-1, 1]) and color ``[nb, B^3, 3]`` (0..255)
        from decoder outputs and the prior's voxels."""
        sdf, color = self.compose(r.float(), c.float(), prior_sdf, prior_color)
        return sdf.clamp_(-1.0, 1.0), (color * 255.0).clamp_(0.0, 255.0)

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict:
        return {"levels": [lv.grid.state_dict() for lv in self.levels],
                "decoders": {k: v.detach().cpu() for k, v in self.decoders.state_dict().items()},
                "map_steps": self.map_steps}

    def load(self, state: dict) -> None:
        from neural_mapping.grid.voxel_grid import VoxelBlockGrid
        if len(state["levels"]) != len(self.levels):
            raise ValueError(f"map has {len(state['levels'])} feature levels, config {len(self.levels)}")
        grids = []
        for lv, s in zip(self.levels, state["levels"]):
            attrs = dict((a[0], a[2]) for a in s["attributes"])
            if (s["block_size"] != lv.b or attrs.get("feat") != lv.channels
                    or abs(s["voxel_size_m"] - lv.h) > 1e-9):
                raise ValueError(f"feature level {lv.name}: saved {s['block_size']}^3 x "
                                 f"{attrs.get('feat')} at {s['voxel_size_m']} m, config "
                                 f"{lv.b}^3 x {lv.channels} at {lv.h} m")
            grids.append(VoxelBlockGrid.from_state_dict(s, device=self.device,
                                                        max_capacity=lv.grid.max_capacity))
        mine = self.decoders.state_dict()
        theirs = state["decoders"]
        if set(mine) != set(theirs) or any(mine[k].shape != theirs[k].shape for k in mine):
            raise ValueError("saved decoder weights do not fit the configured decoders "
                             f"({sorted((k, tuple(v.shape)) for k, v in theirs.items())})")
        self.decoders.load_state_dict(theirs)
        for lv, g in zip(self.levels, grids):
            lv.grid = g
        self.map_steps = int(state["map_steps"])
