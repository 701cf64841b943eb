"""``~/mesh`` publishing state: :class:`~neural_mapping.products.meshing.cache.MeshUpdate` -> serialized
``visualization_msgs/MarkerArray`` bytes (no rclpy node needed; ``publisher.publish(bytes)``).

* One TRIANGLE_LIST marker per block with triangles, ``ns`` fixed (default ``"mesh"``) and a
  stable ``id`` per block coordinate (dense, assigned the first time the block is seen;
  kept for the life of the state, so a block re-created after a reset gets its old id).
  Per-vertex colors (RGBA float32 from the voxels' uint8 RGB).
* A block that became empty gets a DELETE (only if subscribers were ever sent it).
* :meth:`MeshPublisherState.next_message` sends what is pending within a byte budget
  (``mesh_max_mbytes_per_update``): deletes first, then changed blocks oldest first
  (the order they first became pending; a block changed again keeps its place and is
  sent with its newest triangles); it stops at the first marker that would exceed the
  budget, the rest go next time.  A single block larger than the whole budget is sent
  alone, so the queue always drains.
* :meth:`MeshPublisherState.full` gives the whole current mesh (DELETEALL first, then every
  block), split into messages of at most ``max_bytes`` if given: for a new subscriber and
  ``~/republish_mesh``.  ``~/mesh`` keeps only incremental messages in its history, so a
  late subscriber needs this.

Bytes come from :func:`~neural_mapping.ros.fast_cdr.marker_array_bytes_packed` (numpy-built CDR,
checked against rclpy's serializer once per process, with a slow-path fallback).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from neural_mapping.products.meshing import BlockMesh, MeshUpdate
from neural_mapping.ros import fast_cdr

__all__ = ["MeshPublisherState", "BYTES_PER_VERTEX", "mbytes_budget"]

BYTES_PER_VERTEX = 24 + 16  # geometry_msgs/Point (3 x float64) + std_msgs/ColorRGBA (4 x float32)
_SLACK = 8                  # alignment padding a marker may need depending on where it starts


def mbytes_budget(mesh_max_mbytes_per_update: float) -> Optional[int]:
    """Bytes of the ``mesh_max_mbytes_per_update`` parameter (MB = 1e6 bytes; <= 0: None, no budget)."""
    mb = float(mesh_max_mbytes_per_update)
    return int(mb * 1e6) if mb > 0 else None


class MeshPublisherState:
    """Turns mesh cache updates into budgeted MarkerArray bytes. Not thread-safe: call it
    from one thread (the node's mesh timer)."""

    def __init__(self, frame_id: str = "map", ns: str = "mesh",
                 max_bytes_per_update: Optional[int] = 8_000_000):
        self.frame_id = str(frame_id)
        self.ns = str(ns)
        self.max_bytes_per_update = None if max_bytes_per_update is None else int(max_bytes_per_update)
        self._ids: Dict[int, int] = {}            # block key -> marker id
        self._current: Dict[int, BlockMesh] = {}  # block key -> newest triangles
        self._pending: Dict[int, None] = {}       # keys to (re)send, oldest first
        self._deletes: Dict[int, None] = {}       # published keys that became empty
        self._published: set = set()              # keys whose ADD was sent (and not deleted)
        self._sizes: Optional[Tuple[int, int, int]] = None
        self.last_info: Dict[str, int] = {}

    @classmethod
    def from_mbytes(cls, frame_id: str = "map", ns: str = "mesh",
                    mesh_max_mbytes_per_update: float = 8.0) -> "MeshPublisherState":
        """With the node parameter's unit (MB = 1e6 bytes; <= 0: no budget)."""
        return cls(frame_id, ns, mbytes_budget(mesh_max_mbytes_per_update))

    # ------------------------------------------------------------------ state
    def marker_id(self, key: int) -> int:
        mid = self._ids.get(key)
        if mid is None:
            mid = self._ids[key] = len(self._ids)
            if mid >= 2 ** 31:
                raise OverflowError("more than 2^31 mesh blocks: marker ids exhausted")
        return mid

    def apply(self, update: MeshUpdate) -> None:
        """Take the changed and emptied blocks of ``update`` (from ``MappingSystem.mesh_update``)."""
        for k, piece in update.changed.items():
            if piece.vertices.shape[0] > fast_cdr.MAX_MARKER_VERTICES:
                raise ValueError(f"block {k} has {piece.vertices.shape[0]} vertices, more than "
                                 f"one marker takes ({fast_cdr.MAX_MARKER_VERTICES}); use smaller blocks")
            self.marker_id(k)
            self._current[k] = piece
            if k not in self._pending:
                self._pending[k] = None
            self._deletes.pop(k, None)  # an ADD replaces the marker
        for k in update.emptied:
            self._current.pop(k, None)
            self._pending.pop(k, None)
            if k in self._published:
                self._deletes[k] = None

    @property
    def pending_blocks(self) -> int:
        return len(self._pending)

    def has_pending(self) -> bool:
        return bool(self._pending or self._deletes)

    @property
    def num_blocks(self) -> int:
        """Blocks with triangles known to this state."""
        return len(self._current)

    # ------------------------------------------------------------------ sizes
    def _marker_sizes(self) -> Tuple[int, int, int]:
        """(array overhead, bytes of a DELETE marker, bytes of an ADD marker without its
        points/colors), each an upper bound (alignment slack included)."""
        if self._sizes is None:
            kw = dict(frame_id=self.frame_id, stamp=0.0, ns=self.ns)
            empty = len(fast_cdr.marker_array_bytes([], [], **kw))
            dele = len(fast_cdr.marker_array_bytes([], [0], **kw)) - empty
            add = len(fast_cdr.marker_array_bytes_packed(
                [0], [3], np.zeros((3, 3), np.float32), np.zeros((3, 3), np.uint8), **kw)) - empty
            self._sizes = (empty, dele + _SLACK, add - 3 * BYTES_PER_VERTEX + _SLACK)
        return self._sizes

    def message_bytes_bound(self, pieces: Sequence[BlockMesh], deletes: int = 0) -> int:
        """Upper bound of the serialized size of a message with these blocks and deletes."""
        base, dele, add = self._marker_sizes()
        return base + deletes * dele + sum(add + BYTES_PER_VERTEX * p.vertices.shape[0] for p in pieces)

    # ------------------------------------------------------------------ messages
    def next_message(self, stamp=0.0, max_bytes: Optional[int] = -1) -> Optional[bytes]:
        """Serialized MarkerArray with the pending deletes and changed blocks that fit in
        ``max_bytes`` (default: ``max_bytes_per_update``; None: no limit); None when nothing
        is pending.  What does not fit stays pending, in order."""
        if not self.has_pending():
            return None
        budget = self.max_bytes_per_update if max_bytes == -1 else max_bytes
        base, dele, add = self._marker_sizes()
        used = base
        del_keys: List[int] = []
        for k in self._deletes:
            if budget is not None and del_keys and used + dele > budget:
                break
            del_keys.append(k)
            used += dele
        add_keys: List[int] = []
        if budget is None or used < budget:
            for k in self._pending:
                n = add + BYTES_PER_VERTEX * self._current[k].vertices.shape[0]
                if budget is not None and (add_keys or del_keys) and used + n > budget:
                    break
                add_keys.append(k)
                used += n
        data = self._serialize(add_keys, del_keys, stamp, delete_all=False)
        for k in del_keys:
            del self._deletes[k]
            self._published.discard(k)
        for k in add_keys:
            del self._pending[k]
            self._published.add(k)
        return data

    def full(self, stamp=0.0, max_bytes: Optional[int] = None, delete_all: bool = True) -> List[bytes]:
        """The whole current mesh: a DELETEALL (if ``delete_all``) then every block, in messages
        of at most ``max_bytes`` each (None: one message).  Clears what was pending: every
        subscriber then holds exactly the current blocks."""
        base, dele, add = self._marker_sizes()
        msgs: List[bytes] = []
        batch: List[int] = []
        used = base + (dele if delete_all else 0)
        first = True
        for k in self._current:
            n = add + BYTES_PER_VERTEX * self._current[k].vertices.shape[0]
            if max_bytes is not None and (batch or (first and delete_all)) and used + n > max_bytes:
                msgs.append(self._serialize(batch, [], stamp, delete_all=first and delete_all))
                first, batch, used = False, [], base
            batch.append(k)
            used += n
        if batch or first:
            msgs.append(self._serialize(batch, [], stamp, delete_all=first and delete_all))
        self._pending.clear()
        self._deletes.clear()
        self._published = set(self._current)
        return msgs

    def _serialize(self, add_keys: List[int], del_keys: List[int], stamp, delete_all: bool) -> bytes:
        pieces = [self._current[k] for k in add_keys]
        counts = [p.vertices.shape[0] for p in pieces]
        if pieces:
            verts = np.concatenate([p.vertices for p in pieces])
            cols = np.concatenate([p.colors for p in pieces])
        else:
            verts, cols = np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
        data = fast_cdr.marker_array_bytes_packed(
            [self._ids[k] for k in add_keys], counts, verts, cols,
            [self._ids[k] for k in del_keys], frame_id=self.frame_id, stamp=stamp, ns=self.ns,
            delete_all=delete_all)
        self.last_info = {"markers": len(add_keys), "deletes": len(del_keys),
                          "delete_all": int(delete_all), "triangles": int(sum(counts)) // 3,
                          "bytes": len(data)}
        return data
