"""Scratch tensors reused across frames, one set per thread and device.

Hot paths (integration, ray casting) write into these instead of allocating: no allocator
traffic and no page faults per frame.  ``workspace().get(name, numel, dtype, device)`` returns a
buffer of at least ``numel`` elements (grown by 25 % when too small);
``workspace().cached(key, make)`` keeps any derived constant (ray tables, offsets).
"""

from __future__ import annotations

import threading
from typing import Dict, Tuple

import torch


class Workspace:
    def __init__(self):
        self._bufs: Dict[Tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (name, dtype, device)
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(int(numel * 1.25) + 64, dtype=dtype, device=device)
            self._bufs[key] = buf
        return buf[:numel]

    def cached(self, key, make):
        buf = self._bufs.get(key)
        if buf is None:
            buf = make()
            self._bufs[key] = buf
        return buf


_local = threading.local()


def workspace() -> Workspace:
    """This thread's workspace."""
    ws = getattr(_local, "ws", None)
    if ws is None:
        ws = _local.ws = Workspace()
    return ws
