"""Feature grids on the map's blocks: one :class:`FeatureLevel` per resolution.

A level is a :class:`~neural_mapping.grid.voxel_grid.VoxelBlockGrid` whose "voxels" are the
feature vertices: vertex spacing ``h = spacing_vox * voxel_size_m`` and ``b = block_size_vox /
spacing_vox`` vertices per block edge, so its blocks have the *same* size, hence the same
block coordinates, as the map's (the TSDF prior's) blocks.  One generic attribute ``feat``
(``channels`` floats per vertex).  Vertex ``v`` sits at ``(v + 0.5) * h`` (like voxel
centres); a point's feature is the trilinear interpolation of its 8 surrounding vertices;
vertices of unallocated blocks read 0 (their interpolation weight is dropped).

Local updates (:class:`LocalFeatures`): the features of a chosen set of blocks are copied into
one leaf tensor that the optimiser sees; every other block is read detached, so an
optimiser step cannot change it; the leaf is written back after the step.  The optimiser is
Adam with its moments and step count stored per vertex (attributes ``adam_m``, ``adam_v``,
``adam_t`` of the level's grid), so a block resumes where its last step left it: a fresh Adam
per mapping step (NICE-SLAM) moves every touched vertex by the full learning rate on its
first step, which measured as noise in the map.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from neural_mapping.grid.voxel_grid import AttributeSpec, VoxelBlockGrid

_CORNERS = ((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1))
# Features of new blocks ~ N(0, INIT_STD^2) (ESLAM / NICE-SLAM use 0.01).  0 measured better
# here: a block the optimiser never reached decodes to the decoders' output at 0 (~ no
# residual) instead of to noise.
INIT_STD = 0.0
ADAM_BETAS = (0.9, 0.99)
ADAM_EPS = 1e-8


class FeatureLevel:
    def __init__(self, name: str, voxel_size_m: float, block_size_vox: int, spacing_vox: int,
                 channels: int, *, initial_capacity: int, max_capacity: int,
                 device: torch.device, generator: torch.Generator):
        if block_size_vox % spacing_vox or block_size_vox // spacing_vox < 2:
            raise ValueError(f"{name}: feature spacing {spacing_vox} voxels must divide "
                             f"block_size_vox {block_size_vox} at least twice")
        self.name = name
        self.channels = int(channels)
        self.spacing_vox = int(spacing_vox)
        self.b = block_size_vox // spacing_vox
        self.generator = generator
        C = self.channels
        self.grid = VoxelBlockGrid(voxel_size_m * spacing_vox, self.b,
                                   (AttributeSpec("feat", torch.float32, C, 0.0),
                                    AttributeSpec("adam_m", torch.float32, C, 0.0),
                                    AttributeSpec("adam_v", torch.float32, C, 0.0),
                                    AttributeSpec("adam_t", torch.float32, 1, 0.0)),
                                   initial_capacity=initial_capacity, max_capacity=max_capacity,
                                   device=device)

    @property
    def h(self) -> float:
        return self.grid.voxel_size_m

    @property
    def b3(self) -> int:
        return self.b ** 3

    def flat(self) -> torch.Tensor:
        """All vertex features ``[capacity * b^3, C]`` (a view)."""
        return self.grid.attrs["feat"].view(-1, self.channels)

    def allocate(self, coords: torch.Tensor) -> torch.Tensor:
        """Allocate blocks ``coords`` [N, 3]; new ones get seeded random features.  Returns slots."""
        n0 = self.grid.num_blocks
        _, slots = self.grid.allocate(coords)
        n1 = self.grid.num_blocks
        if n1 > n0 and INIT_STD > 0:
            shape = (n1 - n0, self.b, self.b, self.b, self.channels)
            init = torch.randn(shape, generator=self.generator) * INIT_STD
            self.grid.attrs["feat"][n0:n1] = init.to(self.grid.device)
        return slots

    def slots_of(self, coords: torch.Tensor) -> torch.Tensor:
        return self.grid.lookup(coords)

    # ------------------------------------------------------------------ sampling
    def corners(self, pts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Vertex rows ``[8, N]`` (int64, -1 where the block is not allocated) and trilinear
        weights ``[8, N]`` (differentiable in ``pts`` [N, 3] world)."""
        g = pts / self.h - 0.5
        i0 = torch.floor(g.detach())
        f = g - i0
        i0 = i0.to(torch.int32)
        rows, ws = [], []
        for cx, cy, cz in _CORNERS:
            rows.append(self.grid.voxel_index_xyz(i0[:, 0] + cx, i0[:, 1] + cy, i0[:, 2] + cz))
            wx = f[:, 0] if cx else 1.0 - f[:, 0]
            wy = f[:, 1] if cy else 1.0 - f[:, 1]
            wz = f[:, 2] if cz else 1.0 - f[:, 2]
            ws.append(wx * wy * wz)
        idx = torch.stack(rows).to(torch.int64).clamp_(min=-1)
        return idx, torch.stack(ws)

    def interpolate(self, idx: torch.Tensor, w: torch.Tensor,
                    local: Optional["LocalFeatures"] = None) -> torch.Tensor:
        """Features ``[N, C]`` from :meth:`corners`' output; ``local``: read the optimised copy
        of its blocks (gradients flow there only)."""
        ok = idx >= 0
        rows = idx.clamp(min=0)
        flat = self.flat()
        vals = flat.index_select(0, rows.reshape(-1)).view(8, -1, self.channels)
        if local is not None and local.n > 0:
            li, loc_rows = local.rows(rows)
            sel = (li >= 0) & ok
            lv = local.param.index_select(0, loc_rows.reshape(-1)).view(8, -1, self.channels)
            vals = torch.where(sel[..., None], lv, vals)
        wk = (w * ok)[..., None]
        return (vals * wk).sum(dim=0)

    def block_vertex_rows(self, coords: torch.Tensor) -> torch.Tensor:
        """Rows ``[nb, (b+2)^3]`` of the vertices around blocks ``coords`` [nb, 3] (the block's
        own plus one layer of its neighbours', -1 where unallocated), x-major like the grid."""
        b = self.b
        r = torch.arange(-1, b + 1, device=coords.device, dtype=torch.int32)
        gx, gy, gz = torch.meshgrid(r, r, r, indexing="ij")
        base = coords.to(torch.int32) * b
        vx = base[:, 0:1] + gx.reshape(1, -1)
        vy = base[:, 1:2] + gy.reshape(1, -1)
        vz = base[:, 2:3] + gz.reshape(1, -1)
        return self.grid.voxel_index_xyz(vx, vy, vz).to(torch.int64).clamp_(min=-1)


def upsample_matrix(block_size_vox: int, spacing_vox: int, device) -> torch.Tensor:
    """``[B, b+2]``: 1D linear interpolation from the padded vertices of a block (vertex ``j``
    at voxel coordinate ``(j + 0.5) * s``, ``j = -1 .. b``) to its voxel centres ``v + 0.5``."""
    B, s = block_size_vox, spacing_vox
    b = B // s
    A = torch.zeros(B, b + 2)
    for v in range(B):
        g = (v + 0.5) / s - 0.5  # in vertex units
        j0 = int(torch.floor(torch.tensor(g)))
        f = g - j0
        A[v, j0 + 1] += 1.0 - f
        A[v, j0 + 2] += f
    return A.to(device)


def block_voxel_features(level: FeatureLevel, coords: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Features at every voxel centre of blocks ``coords``: ``[nb, B, B, B, C]`` (no grad);
    equal to :meth:`FeatureLevel.interpolate` at those points, computed separably."""
    rows = level.block_vertex_rows(coords)
    ok = rows >= 0
    v = level.flat().index_select(0, rows.clamp(min=0).reshape(-1))
    v = v.view(rows.shape[0], -1, level.channels) * ok[..., None]
    p = level.b + 2
    v = v.view(-1, p, p, p, level.channels)
    v = torch.einsum("xi,nijkc->nxjkc", A, v)
    v = torch.einsum("yj,nxjkc->nxykc", A, v)
    return torch.einsum("zk,nxykc->nxyzc", A, v)


class LocalFeatures:
    """The optimised copy of some blocks' features of one level (see the module docstring)."""

    def __init__(self, level: FeatureLevel, slots: torch.Tensor):
        self.level = level
        self.slots = slots.to(torch.int64)
        self.n = int(self.slots.numel())
        cap = level.grid.capacity
        self.slot2local = torch.full((cap,), -1, dtype=torch.int64, device=level.grid.device)
        self.slot2local[self.slots] = torch.arange(self.n, device=level.grid.device)
        a = level.grid.attrs
        C = level.channels
        self.param = a["feat"].index_select(0, self.slots).reshape(-1, C).clone().requires_grad_(True)
        self.m = a["adam_m"].index_select(0, self.slots).reshape(-1, C)
        self.v = a["adam_v"].index_select(0, self.slots).reshape(-1, C)
        self.t = a["adam_t"].index_select(0, self.slots).reshape(-1, 1)

    def rows(self, rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        b3 = self.level.b3
        slot = rows // b3
        li = self.slot2local.index_select(0, slot.reshape(-1)).view(slot.shape)
        return li, li.clamp(min=0) * b3 + (rows - slot * b3)

    @torch.no_grad()
    def adam_step(self, lr: float) -> None:
        g = self.param.grad
        if g is None or self.n == 0:
            return
        b1, b2 = ADAM_BETAS
        self.t += 1
        self.m.mul_(b1).add_(g, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        mhat = self.m / (1 - b1 ** self.t)
        vhat = self.v / (1 - b2 ** self.t)
        self.param.sub_(lr * mhat / (vhat.sqrt() + ADAM_EPS))
        self.param.grad = None

    @torch.no_grad()
    def write_back(self) -> None:
        if self.n:
            b, C = self.level.b, self.level.channels
            a = self.level.grid.attrs
            for name, t, c in (("feat", self.param.detach(), C), ("adam_m", self.m, C),
                               ("adam_v", self.v, C)):
                a[name].index_copy_(0, self.slots, t.reshape(self.n, b, b, b, c))
            a["adam_t"].index_copy_(0, self.slots, self.t.reshape(self.n, b, b, b))


def make_levels(cfg, device: torch.device, generator: torch.Generator) -> List[FeatureLevel]:
    g, n = cfg.grid, cfg.neural
    kw = dict(initial_capacity=g.initial_capacity_blocks, max_capacity=g.max_capacity_blocks,
              device=device, generator=generator)
    return [FeatureLevel(name, g.voxel_size_m, g.block_size_vox, sp, n.neural_channels, **kw)
            for name, sp in (("coarse", n.neural_coarse_spacing_vox),
                             ("fine", n.neural_fine_spacing_vox),
                             ("color", n.neural_color_spacing_vox))]
