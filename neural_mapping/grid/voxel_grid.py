"""Sparse voxel-block grid in torch (CPU and CUDA from one code path).

Storage
    A *block pool*: for every attribute a tensor ``[capacity, B, B, B]`` (one
    channel) or ``[capacity, B, B, B, C]`` (C channels), indexed by *slot*.
    ``block_coords[slot]`` is the integer block coordinate of that slot
    (block ``b`` covers voxels ``b*B .. b*B+B-1`` on each axis; voxel ``v`` has
    its centre at ``(v + 0.5) * voxel_size_m`` in the world frame).  Slots ``[0, num_blocks)`` are in use;
    the pool doubles when full, up to ``max_capacity`` (then a clear error).
    Inside a block, ``attr[slot, i, j, k]`` is voxel ``block * B + (i, j, k)``
    (x, y, z order, C-contiguous), so ``attr.view(capacity, B**3)[slot, (i*B + j)*B + k]``.

Index
    A *dense pointer grid* over a bounded box of block coordinates:
    ``index[x, y, z] = slot`` or -1.  Lookup is index arithmetic plus one gather,
    which is the fastest lookup torch offers on both CPU and CUDA (no hashing).
    The box grows (in large steps, re-centred copy) when a frame touches blocks
    outside it, up to ``max_index_cells`` pointers (int32: 4 bytes each), which
    bounds the mapped region: at 2 cm voxels and B = 8 the default 2^26 cells
    cover e.g. 650 x 650 x 160 blocks = 104 m x 104 m x 25 m.
    Invariant: the outermost layer of cells is never allocated (always -1), so a
    lookup clamps coordinates into the box instead of testing them (one op
    instead of seven on the hot paths of integration and ray casting).

Attributes are generic (name, dtype, channels, initial value) so the same grid
holds TSDF (tsdf, weight, color) or learned features for a neural backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch


@dataclass(frozen=True)
class AttributeSpec:
    name: str
    dtype: torch.dtype = torch.float32
    channels: int = 1
    init: float = 0.0


TSDF_ATTRIBUTES: Tuple[AttributeSpec, ...] = (
    AttributeSpec("tsdf", torch.float32, 1, 1.0),
    AttributeSpec("weight", torch.float32, 1, 0.0),
    AttributeSpec("color", torch.float32, 3, 0.0),
)


def voxel_offsets(block_size: int, device: torch.device) -> torch.Tensor:
    """Integer offsets ``[B^3, 3]`` of the voxels of a block, in the grid's memory order."""
    r = torch.arange(block_size, device=device)
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)


class CapacityError(RuntimeError):
    """The grid would exceed its configured memory bound."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


class VoxelBlockGrid:
    """Block pool + dense block index. See the module docstring."""

    def __init__(self, voxel_size_m: float, block_size: Optional[int] = None,
                 attributes: Sequence[AttributeSpec] = TSDF_ATTRIBUTES,
                 initial_capacity: Optional[int] = None, max_capacity: Optional[int] = None,
                 device: str | torch.device = "auto", max_index_cells: int = 1 << 26):
        """Sizes left ``None`` take the typed config's defaults (:class:`~neural_mapping.config.GridConfig`);
        :meth:`from_config` builds a grid from a config section."""
        from neural_mapping.config import GridConfig
        block_size = GridConfig.block_size_vox if block_size is None else block_size
        initial_capacity = GridConfig.initial_capacity_blocks if initial_capacity is None else initial_capacity
        max_capacity = GridConfig.max_capacity_blocks if max_capacity is None else max_capacity
        if not (voxel_size_m > 0):
            raise ValueError(f"voxel_size_m must be > 0, got {voxel_size_m}")
        if block_size < 2:
            raise ValueError(f"block_size must be >= 2, got {block_size}")
        names = [a.name for a in attributes]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate attribute names in {names}")
        self.voxel_size_m = float(voxel_size_m)
        self.block_size = int(block_size)
        self.specs: Dict[str, AttributeSpec] = {a.name: a for a in attributes}
        self.max_capacity = int(max_capacity)
        self.max_index_cells = int(max_index_cells)
        self.device = resolve_device(device)
        self._initial_capacity = int(min(initial_capacity, max_capacity))
        self.reset()

    @classmethod
    def from_config(cls, gcfg, attributes: Sequence[AttributeSpec]) -> "VoxelBlockGrid":
        """From a :class:`~neural_mapping.config.GridConfig` section."""
        return cls(gcfg.voxel_size_m, gcfg.block_size_vox, attributes,
                   initial_capacity=gcfg.initial_capacity_blocks,
                   max_capacity=gcfg.max_capacity_blocks, device=gcfg.device)

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        cap = self._initial_capacity
        self.num_blocks = 0
        self.block_coords = torch.zeros((cap, 3), dtype=torch.int32, device=self.device)
        self.attrs: Dict[str, torch.Tensor] = {
            name: self._new_attr(spec, cap) for name, spec in self.specs.items()}
        self._index = torch.full((1, 1, 1), -1, dtype=torch.int32, device=self.device)
        self._set_index_geometry(torch.zeros(3, dtype=torch.int64, device=self.device), (1, 1, 1))
        self._index_empty = True

    def _new_attr(self, spec: AttributeSpec, cap: int) -> torch.Tensor:
        B = self.block_size
        shape = (cap, B, B, B) if spec.channels == 1 else (cap, B, B, B, spec.channels)
        return torch.full(shape, spec.init, dtype=spec.dtype, device=self.device)

    @property
    def capacity(self) -> int:
        return self.block_coords.shape[0]

    @property
    def block_size_m(self) -> float:
        return self.voxel_size_m * self.block_size

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.attrs[name]

    def active(self, name: str) -> torch.Tensor:
        """View of attribute ``name`` over the slots in use."""
        return self.attrs[name][: self.num_blocks]

    def active_coords(self) -> torch.Tensor:
        return self.block_coords[: self.num_blocks]

    def memory_bytes(self) -> int:
        total = self.block_coords.numel() * 4 + self._index.numel() * 4
        for t in self.attrs.values():
            total += t.numel() * t.element_size()
        return total

    # ----------------------------------------------------------------- index
    def _flat(self, coords: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Flat index-grid positions of ``coords`` and a mask of those inside the box."""
        rel = coords.to(torch.int64) - self._index_origin
        sx, sy, sz = self._index_shape
        inside = ((rel >= 0).all(dim=1) & (rel[:, 0] < sx) & (rel[:, 1] < sy) & (rel[:, 2] < sz))
        flat = (rel[:, 0] * sy + rel[:, 1]) * sz + rel[:, 2]
        return flat, inside

    def lookup(self, coords: torch.Tensor) -> torch.Tensor:
        """Slots of block ``coords`` ``[N, 3]`` (int), -1 where not allocated."""
        if coords.numel() == 0:
            return torch.empty(0, dtype=torch.int64, device=self.device)
        return self.lookup_flat(coords).to(torch.int64)

    def lookup_flat(self, coords: torch.Tensor) -> torch.Tensor:
        """Like :meth:`lookup` but int32 and without the empty-input special case."""
        coords = coords.to(torch.int32)
        return self.lookup_xyz(coords[..., 0], coords[..., 1], coords[..., 2])

    def lookup_xyz(self, bx: torch.Tensor, by: torch.Tensor, bz: torch.Tensor) -> torch.Tensor:
        """Slots (int32, -1 where not allocated) of block coordinates given as three
        int32 tensors of one shape (the hot path of integration and ray casting).

        Coordinates outside the index box are clamped onto its border layer,
        whose cells are never allocated (see the module docstring), so they
        read -1 without a bounds test.
        """
        ox, oy, oz = self._index_origin_list
        sx, sy, sz = self._index_shape
        rx = (bx - ox).clamp_(0, sx - 1)
        ry = (by - oy).clamp_(0, sy - 1)
        flat = (bz - oz).clamp_(0, sz - 1)
        flat.add_(ry, alpha=sz).add_(rx, alpha=sy * sz)
        return self._index.view(-1).index_select(0, flat.reshape(-1)).view(flat.shape)

    @property
    def voxel_index_dtype(self) -> torch.dtype:
        """int32 while ``max_capacity * B^3`` fits, else int64."""
        return torch.int32 if self.max_capacity * self.block_size ** 3 < 2 ** 31 else torch.int64

    def voxel_index_xyz(self, vx: torch.Tensor, vy: torch.Tensor, vz: torch.Tensor) -> torch.Tensor:
        """Linear indices into ``attr.view(-1)`` of a one-channel attribute
        (``slot * B^3 + (i*B + j)*B + k``) of integer voxel coordinates given as
        three int32 tensors of one shape; **negative** where the block is not
        allocated.  dtype :attr:`voxel_index_dtype`."""
        B = self.block_size
        if B & (B - 1) == 0:  # power of two: shifts/masks are floor division/modulo
            sh = B.bit_length() - 1
            bx, by, bz = vx >> sh, vy >> sh, vz >> sh
            loc = (vz & (B - 1)).add_(vy & (B - 1), alpha=B).add_(vx & (B - 1), alpha=B * B)
        else:
            bx, by, bz = (torch.div(v, B, rounding_mode="floor") for v in (vx, vy, vz))
            loc = (vz - bz * B).add_(vy - by * B, alpha=B).add_(vx - bx * B, alpha=B * B)
        slots = self.lookup_xyz(bx, by, bz)
        dt = self.voxel_index_dtype
        if dt != torch.int32:
            slots, loc = slots.to(dt), loc.to(dt)
        return loc.add_(slots, alpha=B ** 3)

    def voxel_index(self, voxels: torch.Tensor) -> torch.Tensor:
        """Linear indices of integer voxel coordinates ``[..., 3]`` into ``attr.view(-1)``
        of a one-channel attribute (``slot * B^3 + (i*B + j)*B + k``; multiply by C and
        add the channel for C-channel ones), -1 where the block is not allocated.
        ``int64``, shape ``[...]``."""
        v = voxels.to(torch.int32)
        lin = self.voxel_index_xyz(v[..., 0], v[..., 1], v[..., 2]).to(torch.int64)
        return lin.clamp_(min=-1)

    def _ensure_index_covers(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Grow the dense index so block coords in ``[lo, hi]`` (inclusive) fit strictly
        inside its never-allocated border layer."""
        lo = lo.to(torch.int64).cpu() - 1  # the border layer around the requested range
        hi = hi.to(torch.int64).cpu() + 1
        old_lo = self._index_origin.cpu()
        old_hi = old_lo + torch.tensor(self._index_shape) - 1
        if not self._index_empty and bool((lo >= old_lo).all() and (hi <= old_hi).all()):
            return
        if not self._index_empty:
            lo = torch.minimum(lo, old_lo)
            hi = torch.maximum(hi, old_hi)
        # Grow in large steps: margin of half the extent (at least 16 blocks) per side.
        ext = hi - lo + 1
        margin = torch.clamp(ext // 2, min=16)
        new_lo = lo - margin
        new_shape = tuple(int(v) for v in (ext + 2 * margin))
        cells = new_shape[0] * new_shape[1] * new_shape[2]
        if cells > self.max_index_cells:
            # Retry without margin before giving up.
            new_lo = lo
            new_shape = tuple(int(v) for v in ext)
            cells = new_shape[0] * new_shape[1] * new_shape[2]
            if cells > self.max_index_cells:
                ext_blocks = ext - 2
                raise CapacityError(
                    f"mapped region of {tuple(int(v) for v in ext_blocks)} blocks "
                    f"({tuple(round(float(v) * self.block_size_m, 1) for v in ext_blocks)} m) exceeds "
                    f"the block index bound of {self.max_index_cells} cells; use larger voxels or "
                    "raise max_index_cells")
        new_index = torch.full(new_shape, -1, dtype=torch.int32, device=self.device)
        if not self._index_empty:
            off = (old_lo - new_lo).tolist()
            sx, sy, sz = self._index_shape
            new_index[off[0]:off[0] + sx, off[1]:off[1] + sy, off[2]:off[2] + sz] = self._index
        self._index = new_index
        self._set_index_geometry(new_lo.to(self.device), new_shape)
        self._index_empty = False

    def _set_index_geometry(self, origin: torch.Tensor, shape: Tuple[int, int, int]) -> None:
        self._index_origin = origin
        self._index_origin_list = [int(v) for v in origin.tolist()]
        self._index_shape = shape

    def _ensure_capacity(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        if needed > self.max_capacity:
            raise CapacityError(
                f"the map needs {needed} blocks but max_capacity_blocks is {self.max_capacity} "
                f"({self.block_size}^3 voxels of {self.voxel_size_m} m each); raise "
                "max_capacity_blocks, use larger voxels, or lower depth_max_m")
        new_cap = self.capacity
        while new_cap < needed:
            new_cap *= 2
        new_cap = min(new_cap, self.max_capacity)
        n = self.num_blocks
        coords = torch.zeros((new_cap, 3), dtype=torch.int32, device=self.device)
        coords[:n] = self.block_coords[:n]
        self.block_coords = coords
        for name, spec in self.specs.items():
            t = self._new_attr(spec, new_cap)
            t[:n] = self.attrs[name][:n]
            self.attrs[name] = t

    def allocate(self, coords: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Allocate the blocks ``coords`` ``[N, 3]`` (duplicates allowed).

        Returns ``(unique_coords [M, 3] int32, slots [M] int64)``: every distinct
        block of the input with its slot, newly allocated ones included.
        """
        if coords.numel() == 0:
            return (torch.empty((0, 3), dtype=torch.int32, device=self.device),
                    torch.empty(0, dtype=torch.int64, device=self.device))
        coords = coords.to(self.device)
        self._ensure_index_covers(coords.min(dim=0).values, coords.max(dim=0).values)
        flat, _ = self._flat(coords)
        uflat = torch.unique(flat)
        index_flat = self._index.view(-1)
        slots = index_flat[uflat].to(torch.int64)
        missing = slots < 0
        n_new = int(missing.sum())
        if n_new:
            self._ensure_capacity(self.num_blocks + n_new)
            new_slots = torch.arange(self.num_blocks, self.num_blocks + n_new,
                                     dtype=torch.int64, device=self.device)
            index_flat[uflat[missing]] = new_slots.to(torch.int32)
            slots[missing] = new_slots
            self.block_coords[self.num_blocks:self.num_blocks + n_new] = \
                self._unflatten(uflat[missing]).to(torch.int32)
            self.num_blocks += n_new
        return self._unflatten(uflat).to(torch.int32), slots

    def remove(self, coords: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Free the blocks ``coords`` ``[N, 3]`` (unallocated ones ignored): their slots are
        refilled by the last blocks of the pool so slots ``[0, num_blocks)`` stay dense.
        Returns ``(src, dst)`` int64: the block in slot ``src[i]`` now lives in slot ``dst[i]``
        (a backend keeping per-slot state moves it the same way).  The freed tail is reset to
        the attributes' initial values; the index box shrinks when it is mostly empty."""
        empty = torch.empty(0, dtype=torch.int64, device=self.device)
        if coords.numel() == 0 or self.num_blocks == 0:
            return empty, empty
        slots = torch.unique(self.lookup(coords.to(self.device)))
        slots = slots[slots >= 0]
        if slots.numel() == 0:
            return empty, empty
        n_old = self.num_blocks
        n_new = n_old - int(slots.numel())
        index_flat = self._index.view(-1)
        flat, _ = self._flat(self.block_coords[slots])
        index_flat[flat] = -1
        keep = torch.ones(n_old, dtype=torch.bool, device=self.device)
        keep[slots] = False
        dst = (~keep[:n_new]).nonzero().squeeze(1)        # holes below the new end
        src = keep[n_new:].nonzero().squeeze(1) + n_new   # survivors above it
        if src.numel():
            self.block_coords[dst] = self.block_coords[src]
            for t in self.attrs.values():
                t[dst] = t[src]
            flat, _ = self._flat(self.block_coords[dst])
            index_flat[flat] = dst.to(torch.int32)
        for name, spec in self.specs.items():
            self.attrs[name][n_new:n_old] = spec.init
        self.block_coords[n_new:n_old] = 0
        self.num_blocks = n_new
        self._shrink_index()
        return src, dst

    def _shrink_index(self) -> None:
        """Rebuild the dense index around the blocks in use when it is 8x larger than that
        would need (a robot that moved on, its old blocks evicted): the index stays bounded."""
        n = self.num_blocks
        if n == 0:
            self._index = torch.full((1, 1, 1), -1, dtype=torch.int32, device=self.device)
            self._set_index_geometry(torch.zeros(3, dtype=torch.int64, device=self.device), (1, 1, 1))
            self._index_empty = True
            return
        c = self.block_coords[:n].to(torch.int64)
        ext = c.max(dim=0).values.cpu() - c.min(dim=0).values.cpu() + 3
        margin = torch.clamp(ext // 2, min=16)
        need = int(torch.prod(ext + 2 * margin))
        if need * 8 > self._index.numel():
            return
        self._index_empty = True
        self._ensure_index_covers(c.min(dim=0).values, c.max(dim=0).values)
        flat, _ = self._flat(c)
        self._index.view(-1)[flat] = torch.arange(n, dtype=torch.int32, device=self.device)

    def _unflatten(self, flat: torch.Tensor) -> torch.Tensor:
        sx, sy, sz = self._index_shape
        z = flat % sz
        y = (flat // sz) % sy
        x = flat // (sy * sz)
        return torch.stack([x, y, z], dim=1) + self._index_origin

    # ------------------------------------------------------------- persist
    def state_dict(self) -> Dict[str, object]:
        n = self.num_blocks
        return {
            "voxel_size_m": self.voxel_size_m,
            "block_size": self.block_size,
            "attributes": [(s.name, str(s.dtype).replace("torch.", ""), s.channels, s.init)
                           for s in self.specs.values()],
            "block_coords": self.block_coords[:n].cpu(),
            "attrs": {k: v[:n].cpu() for k, v in self.attrs.items()},
        }

    @classmethod
    def from_state_dict(cls, state: Dict[str, object], device: str | torch.device = "auto",
                        max_capacity: Optional[int] = None) -> "VoxelBlockGrid":
        """A grid holding ``state`` (:meth:`state_dict`); ``max_capacity`` defaults to the
        config's and is raised to fit the saved blocks."""
        specs = [AttributeSpec(name, getattr(torch, dt), ch, init)
                 for name, dt, ch, init in state["attributes"]]
        coords = state["block_coords"]
        n = int(coords.shape[0])
        if max_capacity is None:
            from neural_mapping.config import GridConfig
            max_capacity = GridConfig.max_capacity_blocks
        grid = cls(state["voxel_size_m"], state["block_size"], specs,
                   initial_capacity=max(16, n), max_capacity=max(max_capacity, n), device=device)
        if n:
            _, slots = grid.allocate(coords)
            order = grid.lookup(coords)
            for k, v in state["attrs"].items():
                grid.attrs[k][order] = v.to(grid.device)
        return grid
