"""MarkerArray mesh chunks as CDR bytes: TRIANGLE_LIST markers of at most 65535 vertices,
stable ``ns``/``id``, per-vertex colors, DELETE / DELETEALL markers.

* :func:`marker_array_msg` builds the content as message objects (the slow reference and
  the fallback); :func:`marker_array_generic` writes the same markers through the generic
  writer (:mod:`.cdr_writer`) with the vertex/color sequences from numpy.  Both take their
  marker list from :func:`_markers`.
* :func:`marker_array_templated` emits every marker from a per-call template (the generic
  writer's bytes with holes for ``id`` and the sequences, one per alignment phase), so a
  marker costs microseconds plus the copy of its arrays.  Its input comes from
  :func:`prepare_chunks` (a list of :class:`MeshChunk`) or :func:`prepare_packed` (many
  markers given concatenated).

Use these through :mod:`neural_mapping.ros.fast_cdr`, which checks once per process that the
templated bytes agree with rclpy's serializer and falls back to the slow path otherwise.
"""

from __future__ import annotations

import struct
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from neural_mapping.ros.cdr_writer import CdrWriter, RawSeq, byte_view, serialize, write_struct
from neural_mapping.ros.conversions import header_msg

TRIANGLE_LIST = 11
ADD, DELETE, DELETEALL = 0, 2, 3
MAX_MARKER_VERTICES = 65535  # a multiple of 3: chunks never split a triangle
DEFAULT_COLOR = (0.7, 0.7, 0.7, 1.0)


def _as_colors_rgba(colors: Optional[np.ndarray], n: int) -> Optional[np.ndarray]:
    """(n, 4) float32 RGBA in [0, 1] from uint8 (n, 3|4) or float (n, 3|4) in [0, 1]."""
    if colors is None:
        return None
    c = np.asarray(colors)
    if c.ndim != 2 or c.shape[0] != n or c.shape[1] not in (3, 4):
        raise ValueError(f"colors must be (N, 3) or (N, 4) with N = {n} vertices, got {c.shape}")
    out = np.empty((n, 4), np.float32)
    if c.dtype == np.uint8:
        np.multiply(c, np.float32(1.0 / 255.0), out=out[:, :c.shape[1]], casting="unsafe")
    else:
        out[:, :c.shape[1]] = c
    if c.shape[1] == 3:
        out[:, 3] = 1.0
    return out


def _as_vertices(vertices) -> np.ndarray:
    v = np.asarray(vertices)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must be (N, 3), got shape {v.shape}")
    if v.shape[0] % 3:
        raise ValueError(f"a TRIANGLE_LIST needs a multiple of 3 vertices, got {v.shape[0]}")
    return np.ascontiguousarray(v, dtype="<f8")


class MeshChunk(NamedTuple):
    """One TRIANGLE_LIST marker: stable ``id``, (N, 3) vertices (3 per triangle) in the
    marker frame, optional per-vertex colors (uint8 RGB(A) or float in [0, 1])."""

    id: int
    vertices: np.ndarray
    colors: Optional[np.ndarray] = None


def chunk_triangles(vertices, colors=None, max_vertices: int = MAX_MARKER_VERTICES,
                    first_id: int = 0) -> List[MeshChunk]:
    """Split a triangle soup into :class:`MeshChunk` of at most ``max_vertices`` vertices
    (rounded down to whole triangles), ids ``first_id, first_id + 1, ...``."""
    v = np.asarray(vertices)
    per = (int(max_vertices) // 3) * 3
    if per <= 0:
        raise ValueError(f"max_vertices must be >= 3, got {max_vertices}")
    out = []
    for k, s in enumerate(range(0, v.shape[0], per)):
        out.append(MeshChunk(first_id + k, v[s:s + per], None if colors is None else colors[s:s + per]))
    return out


def _base_marker(frame_id, stamp, ns, mid, action, color):
    from visualization_msgs.msg import Marker
    m = Marker()
    m.header = header_msg(frame_id, stamp)
    m.ns = ns
    m.id = int(mid)
    m.type = TRIANGLE_LIST
    m.action = action
    m.pose.orientation.w = 1.0
    if action == ADD:
        m.scale.x = m.scale.y = m.scale.z = 1.0
        m.color.r, m.color.g, m.color.b, m.color.a = (float(c) for c in color)
    return m


def _markers(chunks, deletes, *, frame_id, stamp, ns, delete_all, color, raw=None) -> list:
    """The markers of an update: a DELETEALL first if ``delete_all``, one DELETE per id in
    ``deletes``, one TRIANGLE_LIST ADD per chunk.  ``raw`` None: vertices and colors become
    Point/ColorRGBA objects; else they go into ``raw`` as :class:`RawSeq` for the writer."""
    markers = []
    if delete_all:
        markers.append(_base_marker(frame_id, stamp, ns, 0, DELETEALL, color))
    for mid in deletes:
        markers.append(_base_marker(frame_id, stamp, ns, mid, DELETE, color))
    for ch in chunks:
        m = _base_marker(frame_id, stamp, ns, ch.id, ADD, color)
        v = _as_vertices(ch.vertices)
        rgba = _as_colors_rgba(ch.colors, v.shape[0])
        if raw is None:
            from geometry_msgs.msg import Point
            from std_msgs.msg import ColorRGBA
            m.points = [Point(x=float(a), y=float(b), z=float(c)) for a, b, c in v.tolist()]
            if rgba is not None:
                m.colors = [ColorRGBA(r=r, g=g, b=b, a=a) for r, g, b, a in rgba.tolist()]
        else:
            raw[(id(m), "points")] = RawSeq(v.shape[0], 8, byte_view(v))
            if rgba is not None:
                raw[(id(m), "colors")] = RawSeq(v.shape[0], 4, byte_view(rgba))
        markers.append(m)
    return markers


def marker_array_msg(chunks: Iterable[MeshChunk] = (), deletes: Iterable[int] = (), *,
                     frame_id: str = "map", stamp=0.0, ns: str = "mesh",
                     delete_all: bool = False, color=DEFAULT_COLOR):
    """The reference (slow) MarkerArray: a DELETEALL first if ``delete_all``, then one DELETE
    per id in ``deletes``, then one TRIANGLE_LIST ADD per chunk (Point/ColorRGBA objects)."""
    from visualization_msgs.msg import MarkerArray
    return MarkerArray(markers=_markers(chunks, deletes, frame_id=frame_id, stamp=stamp, ns=ns,
                                        delete_all=delete_all, color=color))


def marker_array_generic(chunks, deletes, *, frame_id, stamp, ns, delete_all, color,
                         writer: Optional[CdrWriter] = None) -> bytes:
    """Every marker through the generic writer (reference for the templated path)."""
    from visualization_msgs.msg import MarkerArray
    raw: Dict[Tuple[int, str], RawSeq] = {}
    arr = MarkerArray(markers=_markers(chunks, deletes, frame_id=frame_id, stamp=stamp, ns=ns,
                                       delete_all=delete_all, color=color, raw=raw))
    return serialize(arr, raw, writer)


class _MarkerTemplate:
    """Serialized Marker with holes for ``id`` and the raw sequences, for one start phase
    (``pos % 8``) and one phase of each raw payload's length: built once by the generic
    writer, then reused for every marker of an update (microseconds per marker instead of
    ~200 us through the writer)."""

    def __init__(self, marker, phase: int, slots: Sequence[Tuple[str, int, int]]):
        w = CdrWriter(pos=phase)
        w.track = {(id(marker), "id")}
        raw = {(id(marker), name): RawSeq(1, align, b"\0" * (mod or 8)) for name, align, mod in slots}
        write_struct(w, marker, raw)
        holes = {w.marks[(id(marker), "id")]: (0, None)}
        for k, (name, _, _) in enumerate(slots):
            holes[w.marks[(id(marker), name + "#count")]] = (1, k)
            holes[w.marks[(id(marker), name + "#payload")]] = (2, k)
        # items: (0, static bytes) | (1, None) id | (2, k) count of slot k | (3, k) payload k
        self.items: List[Tuple[int, Any]] = []
        self.static_len = 0
        static: List[bytes] = []
        for i, part in enumerate(w.parts):
            if i in holes:
                if static:
                    self.items.append((0, b"".join(static)))
                    static = []
                kind, k = holes[i]
                self.items.append((kind + 1, k))
            else:
                static.append(bytes(part))
                self.static_len += len(static[-1])
        if static:
            self.items.append((0, b"".join(static)))

    def emit(self, parts: List[Any], mid: int, payloads: Sequence[Tuple[int, memoryview]]) -> int:
        """Append the marker's parts; return its length in bytes."""
        n = self.static_len + 4
        for kind, val in self.items:
            if kind == 0:
                parts.append(val)
            elif kind == 1:
                parts.append(_I32.pack(mid))
            elif kind == 2:
                parts.append(_U32.pack(payloads[val][0]))
                n += 4
            else:
                data = payloads[val][1]
                parts.append(data)
                n += data.nbytes
        return n


_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_SLOT_ALIGN = {"points": 8, "colors": 4}


def marker_array_templated(prepared, deletes, *, frame_id, stamp, ns, delete_all, color) -> bytes:
    """MarkerArray = uint32 count + markers (layout checked by the probe), each marker from a
    template.  ``prepared``: ``[(id, [("points", (n, bytes)), ("colors", (n, bytes))?])]``."""
    templates: Dict[Any, _MarkerTemplate] = {}
    bases: Dict[int, Any] = {}
    w = CdrWriter()
    w.prim("I", 4, int(delete_all) + len(deletes) + len(prepared))
    parts = w.parts

    def emit(action, mid, slots):
        key = (action, w.pos & 7) + tuple((name, p[1].nbytes & 7) for name, p in slots)
        t = templates.get(key)
        if t is None:
            base = bases.get(action)
            if base is None:
                base = bases[action] = _base_marker(frame_id, stamp, ns, 0, action, color)
            t = templates[key] = _MarkerTemplate(
                base, w.pos & 7, [(name, _SLOT_ALIGN[name], p[1].nbytes & 7) for name, p in slots])
        w.pos += t.emit(parts, mid, [p for _, p in slots])

    if delete_all:
        emit(DELETEALL, 0, ())
    for mid in deletes:
        emit(DELETE, int(mid), ())
    for mid, slots in prepared:
        emit(ADD, mid, slots)
    return w.getvalue()


def prepare_chunks(chunks: Sequence[MeshChunk]):
    """Input of :func:`marker_array_templated` from a list of chunks."""
    prepared = []
    for ch in chunks:
        v = _as_vertices(ch.vertices)
        slots = []
        if v.shape[0]:
            slots.append(("points", (v.shape[0], byte_view(v))))
            rgba = _as_colors_rgba(ch.colors, v.shape[0])
            if rgba is not None:
                slots.append(("colors", (v.shape[0], byte_view(rgba))))
        prepared.append((int(ch.id), slots))
    return prepared


def packed_arrays(ids, counts, vertices, colors):
    """Checked ``(ids, counts, vertices (N, 3) float64, colors (N, 4) float32 or None)`` of the
    packed form: marker ``ids[k]`` has the next ``counts[k]`` rows of ``vertices``."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    if ids.shape != counts.shape:
        raise ValueError(f"ids ({ids.size}) and counts ({counts.size}) differ in length")
    if (counts < 0).any() or (counts % 3).any():
        raise ValueError("every count must be a non-negative multiple of 3 (whole triangles)")
    v = _as_vertices(vertices)
    if int(counts.sum()) != v.shape[0]:
        raise ValueError(f"counts sum to {int(counts.sum())} but there are {v.shape[0]} vertices")
    return ids, counts, v, _as_colors_rgba(colors, v.shape[0])


def prepare_packed(ids, counts, v, rgba):
    """Input of :func:`marker_array_templated` from :func:`packed_arrays`' output (views of
    one buffer: no per-marker conversion)."""
    vb, cb = byte_view(v), (byte_view(rgba) if rgba is not None else None)
    prepared = []
    start = 0
    for mid, n in zip(ids.tolist(), counts.tolist()):
        slots = []
        if n:
            slots.append(("points", (n, vb[start * 24:(start + n) * 24])))
            if cb is not None:
                slots.append(("colors", (n, cb[start * 16:(start + n) * 16])))
        prepared.append((mid, slots))
        start += n
    return prepared


def split_packed(ids, counts, v, rgba) -> List[MeshChunk]:
    """The packed form as chunks (for the slow path)."""
    ends = np.cumsum(counts)
    return [MeshChunk(int(i), v[e - n:e], None if rgba is None else rgba[e - n:e])
            for i, n, e in zip(ids, counts, ends)]
