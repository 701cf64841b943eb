"""Serialized CDR bytes of big ROS messages straight from numpy (no Python ``Point`` objects).

Building ``Marker.points`` from ``geometry_msgs/Point`` objects costs about a second per
300 k vertices; rclpy publishes pre-serialized bytes as well (``Publisher.publish(bytes)``
calls ``publish_raw``).  This module writes those bytes itself:

* :func:`serialize` is a small CDR writer driven by the *installed* message definitions
  (``get_fields_and_field_types()``, walked recursively in field order), so Humble, Jazzy
  and Kilted layouts (e.g. ``Marker`` gained ``texture``/``uv_coordinates``/``mesh_file``)
  all come out right.  Scalars come from a real message object; sequences named in ``raw``
  are written from pre-packed numpy bytes instead of the object's (empty) field.
* :func:`marker_array_bytes` (TRIANGLE_LIST mesh chunks of at most 65535 vertices, stable
  ``ns``/``id``, per-vertex colors, DELETE / DELETEALL markers), its concatenated form
  :func:`marker_array_bytes_packed` (many small per-block markers) and
  :func:`pointcloud2_bytes` (x, y, z float32 plus ``rgb`` and/or other float32 fields such
  as ``distance``) use it.  Markers are emitted from per-call templates (the generic
  writer's bytes with holes for ``id`` and the sequences, one per alignment phase), so a
  marker costs microseconds plus the copy of its arrays.  :func:`marker_array_msg` and
  :func:`pointcloud2_msg` build the same content as message objects (the slow reference,
  and the fallback).
* :func:`fast_path_ok` checks once per process, on small probes of exactly the layouts
  used here, that the writer agrees with ``rclpy.serialization`` (same length, the bytes
  deserialize to the reference message, identical bytes outside alignment padding).  If
  it does not (an rmw with another CDR flavour), the ``*_bytes`` functions fall back to the
  slow path and serialize with rclpy, so the output is always correct.

The encoding is XCDR1 / PLAIN_CDR little endian (what rmw_fastrtps and rmw_cyclonedds use
for ROS types): primitives aligned to their size (8 at most) relative to the start of the
payload (after the 4-byte encapsulation header), ``uint32`` lengths before sequences and
strings, strings NUL-terminated with the NUL counted in the length.  The bytes are exactly
``bytes`` (rclpy's ``publish`` refuses ``bytearray``/``memoryview``).

Usage::

    pub = node.create_publisher(MarkerArray, "~/mesh", qos)
    pub.publish(marker_array_bytes(chunk_triangles(verts, colors), deleted_ids,
                                   frame_id="map", stamp=t))
"""

from __future__ import annotations

import array
import logging
import re
import struct
import threading
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

log = logging.getLogger(__name__)

# name in get_fields_and_field_types() -> (struct code, size)
_PRIMS: Dict[str, Tuple[str, int]] = {
    "boolean": ("?", 1), "octet": ("B", 1), "char": ("B", 1), "uint8": ("B", 1), "int8": ("b", 1),
    "int16": ("h", 2), "uint16": ("H", 2), "int32": ("i", 4), "uint32": ("I", 4),
    "int64": ("q", 8), "uint64": ("Q", 8), "float": ("f", 4), "double": ("d", 8),
}
_SEQ_RE = re.compile(r"^sequence<(.+?)(?:,\s*(\d+))?>$")
_ARR_RE = re.compile(r"^(.+)\[(\d+)\]$")
_BSTR_RE = re.compile(r"^string<=(\d+)$")

TRIANGLE_LIST = 11
ADD, DELETE, DELETEALL = 0, 2, 3
MAX_MARKER_VERTICES = 65535  # a multiple of 3: chunks never split a triangle


class RawSeq(NamedTuple):
    """A sequence written from packed bytes: ``count`` elements, aligned to ``align``."""

    count: int
    align: int
    payload: Union[bytes, bytearray, memoryview]


class CdrWriter:
    """Little-endian XCDR1 writer.  ``padding`` lists the ``(offset, length)`` of every
    alignment gap (offsets in the final bytes, header included): rmw leaves those bytes
    uninitialised, so comparisons with rclpy's output must ignore them."""

    HEADER = b"\x00\x01\x00\x00"  # CDR_LE, options 0

    def __init__(self, pos: int = 0):
        self.parts: List[Any] = []
        self.pos = pos  # payload offset (alignment origin)
        self.padding: List[Tuple[int, int]] = []
        # (id(msg), field) -> index in ``parts`` of that field's bytes: for primitive fields
        # named in ``track`` and, for raw sequences, (..., "#count") and (..., "#payload").
        self.track: set = set()
        self.marks: Dict[Tuple[int, str], int] = {}

    def align(self, n: int) -> None:
        pad = (-self.pos) % n
        if pad:
            self.padding.append((self.pos + 4, pad))
            self.parts.append(b"\x00" * pad)
            self.pos += pad

    def prim(self, code: str, size: int, value) -> None:
        self.align(size)
        self.parts.append(struct.pack("<" + code, value))
        self.pos += size

    def raw(self, data, align: int = 1) -> None:
        if align > 1:
            self.align(align)
        n = memoryview(data).nbytes
        self.parts.append(data)
        self.pos += n

    def string(self, s: str) -> None:
        b = s.encode("utf-8")
        self.prim("I", 4, len(b) + 1)
        self.parts.append(b + b"\x00")
        self.pos += len(b) + 1

    def getvalue(self) -> bytes:
        return b"".join([self.HEADER, *self.parts])


def _u8(a: np.ndarray) -> memoryview:
    """Flat byte view of a C-contiguous array (no copy; works for empty arrays)."""
    return memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


def _write_array(w: CdrWriter, elem: str, values, count: Optional[int], raw=None) -> None:
    """``count`` None: sequence (length prefix); else a fixed array of that length."""
    if elem in _PRIMS:
        code, size = _PRIMS[elem]
        if isinstance(values, (bytes, bytearray)) and size == 1:
            data = bytes(values)
        elif isinstance(values, array.array) and values.itemsize == size and code != "?":
            data = values.tobytes()
        else:
            data = np.asarray(values, dtype="<" + ({"?": "u1"}.get(code, code))).tobytes()
        n = len(data) // size
        if count is None:
            w.prim("I", 4, n)
        elif n != count:
            raise ValueError(f"fixed array of {count} {elem} has {n} values")
        if n:
            w.raw(data, size)
        return
    if elem == "string" or _BSTR_RE.match(elem):
        if count is None:
            w.prim("I", 4, len(values))
        for v in values:
            w.string(v)
        return
    if "/" in elem:
        if count is None:
            w.prim("I", 4, len(values))
        for v in values:
            _write_struct(w, v, raw)
        return
    raise NotImplementedError(f"CDR writer: unsupported element type {elem!r}")


def _write_struct(w: CdrWriter, msg, raw: Optional[Dict[Tuple[int, str], RawSeq]]) -> None:
    for name, typ in msg.get_fields_and_field_types().items():
        if raw is not None:
            r = raw.get((id(msg), name))
            if r is not None:
                w.prim("I", 4, r.count)
                w.marks[(id(msg), name + "#count")] = len(w.parts) - 1
                if r.count:
                    w.raw(r.payload, r.align)
                    w.marks[(id(msg), name + "#payload")] = len(w.parts) - 1
                continue
        value = getattr(msg, name)
        if typ in _PRIMS:
            code, size = _PRIMS[typ]
            if code in "bB" and isinstance(value, bytes):  # octet / char fields
                value = value[0]
            w.prim(code, size, value)
            if w.track and (id(msg), name) in w.track:
                w.marks[(id(msg), name)] = len(w.parts) - 1
        elif typ == "string" or _BSTR_RE.match(typ):
            w.string(value)
        elif "/" in typ and not typ.startswith("sequence<"):
            _write_struct(w, value, raw)
        else:
            m = _SEQ_RE.match(typ)
            if m:
                _write_array(w, m.group(1), value, None, raw)
                continue
            m = _ARR_RE.match(typ)
            if m:
                _write_array(w, m.group(1), value, int(m.group(2)), raw)
                continue
            raise NotImplementedError(f"CDR writer: unsupported field type {typ!r} ({name})")


def serialize(msg, raw: Optional[Dict[Tuple[int, str], RawSeq]] = None,
              writer: Optional[CdrWriter] = None) -> bytes:
    """CDR bytes of ``msg`` (same as ``rclpy.serialization.serialize_message`` up to padding
    bytes).  ``raw[(id(sub_msg), field)]`` replaces that sequence field of ``sub_msg`` (which
    should be left empty) by pre-packed elements."""
    w = writer if writer is not None else CdrWriter()
    _write_struct(w, msg, raw)
    return w.getvalue()


# ----------------------------------------------------------------------------- helpers
def _stamp(stamp):
    from neural_mapping.ros.conversions import sec_to_stamp
    return sec_to_stamp(stamp)


def _header(frame_id: str, stamp):
    from std_msgs.msg import Header
    return Header(stamp=_stamp(stamp), frame_id=str(frame_id))


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
    m.header = _header(frame_id, stamp)
    m.ns = ns
    m.id = int(mid)
    m.type = TRIANGLE_LIST
    m.action = action
    m.pose.orientation.w = 1.0
    if action == ADD:
        m.scale.x = m.scale.y = m.scale.z = 1.0
        m.color.r, m.color.g, m.color.b, m.color.a = (float(c) for c in color)
    return m


# ------------------------------------------------------------------------- MarkerArray
def marker_array_msg(chunks: Iterable[MeshChunk] = (), deletes: Iterable[int] = (), *,
                     frame_id: str = "map", stamp=0.0, ns: str = "mesh",
                     delete_all: bool = False, color=(0.7, 0.7, 0.7, 1.0)):
    """The reference (slow) MarkerArray: a DELETEALL first if ``delete_all``, then one DELETE
    per id in ``deletes``, then one TRIANGLE_LIST ADD per chunk (Point/ColorRGBA objects)."""
    from geometry_msgs.msg import Point
    from std_msgs.msg import ColorRGBA
    from visualization_msgs.msg import MarkerArray
    out = MarkerArray()
    markers = []
    if delete_all:
        markers.append(_base_marker(frame_id, stamp, ns, 0, DELETEALL, color))
    for mid in deletes:
        markers.append(_base_marker(frame_id, stamp, ns, mid, DELETE, color))
    for ch in chunks:
        m = _base_marker(frame_id, stamp, ns, ch.id, ADD, color)
        v = _as_vertices(ch.vertices)
        m.points = [Point(x=float(a), y=float(b), z=float(c)) for a, b, c in v.tolist()]
        rgba = _as_colors_rgba(ch.colors, v.shape[0])
        if rgba is not None:
            m.colors = [ColorRGBA(r=r, g=g, b=b, a=a) for r, g, b, a in rgba.tolist()]
        markers.append(m)
    out.markers = markers
    return out


def _marker_array_generic(chunks, deletes, *, frame_id, stamp, ns, delete_all, color,
                          writer: Optional[CdrWriter] = None) -> bytes:
    """Every marker through the generic writer (reference for the templated path)."""
    from visualization_msgs.msg import MarkerArray
    arr = MarkerArray()
    markers = []
    raw: Dict[Tuple[int, str], RawSeq] = {}
    if delete_all:
        markers.append(_base_marker(frame_id, stamp, ns, 0, DELETEALL, color))
    for mid in deletes:
        markers.append(_base_marker(frame_id, stamp, ns, mid, DELETE, color))
    for ch in chunks:
        m = _base_marker(frame_id, stamp, ns, ch.id, ADD, color)
        v = _as_vertices(ch.vertices)
        raw[(id(m), "points")] = RawSeq(v.shape[0], 8, _u8(v))
        rgba = _as_colors_rgba(ch.colors, v.shape[0])
        if rgba is not None:
            raw[(id(m), "colors")] = RawSeq(v.shape[0], 4, _u8(rgba))
        markers.append(m)
    arr.markers = markers
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
        _write_struct(w, marker, raw)
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


def _marker_array_fast(prepared, deletes, *, frame_id, stamp, ns, delete_all, color) -> bytes:
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


def _prepare_chunks(chunks: Sequence[MeshChunk]):
    prepared = []
    for ch in chunks:
        v = _as_vertices(ch.vertices)
        slots = []
        if v.shape[0]:
            slots.append(("points", (v.shape[0], _u8(v))))
            rgba = _as_colors_rgba(ch.colors, v.shape[0])
            if rgba is not None:
                slots.append(("colors", (v.shape[0], _u8(rgba))))
        prepared.append((int(ch.id), slots))
    return prepared


def _packed_arrays(ids, counts, vertices, colors):
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


def marker_array_bytes(chunks: Iterable[MeshChunk] = (), deletes: Iterable[int] = (), *,
                       frame_id: str = "map", stamp=0.0, ns: str = "mesh",
                       delete_all: bool = False, color=(0.7, 0.7, 0.7, 1.0)) -> bytes:
    """Serialized ``visualization_msgs/MarkerArray`` with the content of
    :func:`marker_array_msg`, written from numpy; publish with ``publisher.publish(b)``."""
    chunks = list(chunks)
    deletes = list(deletes)
    kw = dict(frame_id=frame_id, stamp=stamp, ns=ns, delete_all=delete_all, color=color)
    if fast_path_ok():
        return _marker_array_fast(_prepare_chunks(chunks), deletes, **kw)
    from rclpy.serialization import serialize_message
    return serialize_message(marker_array_msg(chunks, deletes, **kw))


def marker_array_bytes_packed(ids, counts, vertices, colors=None, deletes: Iterable[int] = (), *,
                              frame_id: str = "map", stamp=0.0, ns: str = "mesh",
                              delete_all: bool = False, color=(0.7, 0.7, 0.7, 1.0)) -> bytes:
    """Same as :func:`marker_array_bytes` for many small markers given concatenated: marker
    ``ids[k]`` has the next ``counts[k]`` rows of ``vertices`` (and ``colors``).  Vertices and
    colors are converted once for all markers (one block per marker costs a few us)."""
    ids, counts, v, rgba = _packed_arrays(ids, counts, vertices, colors)
    deletes = list(deletes)
    kw = dict(frame_id=frame_id, stamp=stamp, ns=ns, delete_all=delete_all, color=color)
    if not fast_path_ok():
        from rclpy.serialization import serialize_message
        return serialize_message(marker_array_msg(_split_packed(ids, counts, v, rgba), deletes, **kw))
    vb, cb = _u8(v), (_u8(rgba) if rgba is not None else None)
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
    return _marker_array_fast(prepared, deletes, **kw)


def _split_packed(ids, counts, v, rgba) -> List[MeshChunk]:
    ends = np.cumsum(counts)
    return [MeshChunk(int(i), v[e - n:e], None if rgba is None else rgba[e - n:e])
            for i, n, e in zip(ids, counts, ends)]


# ------------------------------------------------------------------------- PointCloud2
def _cloud_columns(xyz, rgb, fields):
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must be (N, 3), got shape {xyz.shape}")
    n = xyz.shape[0]
    names = ["x", "y", "z"]
    cols = 3
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.shape != (n, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be (N, 3) uint8 with N = {n}, got {rgb.shape} {rgb.dtype}")
        names.append("rgb")
        cols += 1
    extra = []
    for name, vals in (fields or {}).items():
        vals = np.asarray(vals)
        if vals.shape != (n,):
            raise ValueError(f"field {name!r} must have shape ({n},), got {vals.shape}")
        if name in names:
            raise ValueError(f"duplicate point field {name!r}")
        names.append(name)
        extra.append(vals)
        cols += 1
    data = np.empty((n, cols), "<f4")
    data[:, :3] = xyz
    c = 3
    if rgb is not None:
        # PCL convention: FLOAT32 field holding the bytes b, g, r, 0 (uint32 0x00RRGGBB).
        packed = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2]
        data[:, c].view("<u4")[:] = packed
        c += 1
    for vals in extra:
        data[:, c] = vals
        c += 1
    dense = bool(np.isfinite(data[:, :3]).all()) if n else True
    return names, data, dense


def _cloud_skeleton(names, n, dense, frame_id, stamp):
    from sensor_msgs.msg import PointCloud2, PointField
    msg = PointCloud2()
    msg.header = _header(frame_id, stamp)
    msg.height = 1
    msg.width = n
    msg.fields = [PointField(name=nm, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                  for i, nm in enumerate(names)]
    msg.is_bigendian = False
    msg.point_step = 4 * len(names)
    msg.row_step = msg.point_step * n
    msg.is_dense = dense
    return msg


def pointcloud2_msg(xyz, *, rgb=None, fields: Optional[Dict[str, np.ndarray]] = None,
                    frame_id: str = "map", stamp=0.0):
    """``sensor_msgs/PointCloud2`` (height 1, unordered) with float32 ``x, y, z``, then
    ``rgb`` (packed as PCL does) if given, then each float32 field of ``fields`` in order
    (e.g. ``{"distance": d}``).  ``data`` is filled through ``array.array('B').frombytes``."""
    names, data, dense = _cloud_columns(xyz, rgb, fields)
    msg = _cloud_skeleton(names, data.shape[0], dense, frame_id, stamp)
    buf = array.array("B")
    buf.frombytes(data.tobytes())
    msg.data = buf
    return msg


def pointcloud2_bytes(xyz, *, rgb=None, fields: Optional[Dict[str, np.ndarray]] = None,
                      frame_id: str = "map", stamp=0.0) -> bytes:
    """Serialized :func:`pointcloud2_msg`, written from numpy."""
    if not fast_path_ok():
        from rclpy.serialization import serialize_message
        return serialize_message(pointcloud2_msg(xyz, rgb=rgb, fields=fields, frame_id=frame_id,
                                                 stamp=stamp))
    return _pointcloud2_fast(xyz, rgb, fields, frame_id, stamp)


def _pointcloud2_fast(xyz, rgb, fields, frame_id, stamp, writer: Optional[CdrWriter] = None) -> bytes:
    names, data, dense = _cloud_columns(xyz, rgb, fields)
    msg = _cloud_skeleton(names, data.shape[0], dense, frame_id, stamp)
    return serialize(msg, {(id(msg), "data"): RawSeq(data.nbytes, 1, _u8(data))},
                     writer)


def pointcloud2_to_array(msg) -> Dict[str, np.ndarray]:
    """``{field_name: (N,) array}`` of a float32-fields PointCloud2 (tests, tools)."""
    n = msg.width * msg.height
    raw = np.frombuffer(msg.data, np.uint8)
    out = {}
    for f in msg.fields:
        dt = np.dtype(">f4" if msg.is_bigendian else "<f4")
        col = np.ndarray((n,), dt, raw, f.offset, (msg.point_step,))
        out[f.name] = col.astype(np.float32)
    return out


# ------------------------------------------------------------------------- self-check
_check_lock = threading.Lock()
_check_result: Optional[bool] = None
_check_reason = ""


def compare_with_rclpy(fast: bytes, ref_msg, padding: Optional[Sequence[Tuple[int, int]]] = None) -> str:
    """'' if ``fast`` equals ``serialize_message(ref_msg)`` (same length, same bytes outside
    ``padding``, deserializes to the same message), else a description of the difference."""
    from rclpy.serialization import deserialize_message, serialize_message
    ref = serialize_message(ref_msg)
    if len(fast) != len(ref):
        return f"length {len(fast)} != rclpy's {len(ref)}"
    if padding is not None:
        a = np.frombuffer(fast, np.uint8).copy()
        b = np.frombuffer(ref, np.uint8).copy()
        for off, n in padding:
            a[off:off + n] = 0
            b[off:off + n] = 0
        diff = np.flatnonzero(a != b)
        if diff.size:
            return f"bytes differ from rclpy's at offset {int(diff[0])}"
    # compare with the reference after its own round trip (float32 fields are rounded)
    back = deserialize_message(fast, type(ref_msg))
    if back != deserialize_message(ref, type(ref_msg)):
        return "deserialized message differs from the reference"
    return ""


def _probe() -> str:
    from visualization_msgs.msg import MarkerArray
    if MarkerArray.get_fields_and_field_types() != {"markers": "sequence<visualization_msgs/Marker>"}:
        return f"unexpected MarkerArray fields {MarkerArray.get_fields_and_field_types()}"
    rng = np.random.default_rng(0)
    v = rng.normal(size=(6, 3))
    c = rng.integers(0, 256, size=(6, 3), dtype=np.uint8)
    # odd-length strings so that alignment differs between markers
    for ns, frame in (("mesh", "map"), ("m", "odom_x"), ("blk", "ma")):
        kw = dict(frame_id=frame, stamp=12.5, ns=ns)
        chunks = [MeshChunk(3, v, c), MeshChunk(4, v[:3], None), MeshChunk(5, v[:0], None),
                  MeshChunk(-6, v[3:], c[3:].astype(np.float32) / 255.0)]
        for dels, dall in (([], False), ([7, 9], False), ([1], True)):
            w = CdrWriter()
            arr_msg = marker_array_msg(chunks, dels, delete_all=dall, **kw)
            generic = _marker_array_generic(chunks, dels, delete_all=dall,
                                            color=(0.7, 0.7, 0.7, 1.0), writer=w, **kw)
            err = compare_with_rclpy(generic, arr_msg, w.padding)
            if err:
                return f"MarkerArray probe ({ns!r}, {frame!r}, deletes={dels}): {err}"
            fast = _marker_array_fast(_prepare_chunks(chunks), dels, delete_all=dall,
                                      color=(0.7, 0.7, 0.7, 1.0), **kw)
            if fast != generic:
                return f"MarkerArray probe ({ns!r}, {frame!r}, deletes={dels}): templated bytes " \
                    "differ from the generic writer's"
        for rgb, fields in ((None, None), (c, None), (None, {"distance": v[:, 0]}), (c, {"d": v[:, 1]})):
            w = CdrWriter()
            fast = _pointcloud2_fast(v, rgb, fields, frame, 3.25, w)
            err = compare_with_rclpy(fast, pointcloud2_msg(v, rgb=rgb, fields=fields, frame_id=frame,
                                                           stamp=3.25), w.padding)
            if err:
                return (f"PointCloud2 probe ({frame!r}, rgb={rgb is not None}, "
                        f"fields={fields and list(fields)}): {err}")
    return ""


def fast_path_ok() -> bool:
    """True when the numpy CDR writer agrees with rclpy's serializer on this installation
    (checked once per process; the reason for a failure is logged once)."""
    global _check_result, _check_reason
    if _check_result is None:
        with _check_lock:
            if _check_result is None:
                try:
                    _check_reason = _probe()
                except Exception as exc:  # noqa: BLE001 - any failure means: use the slow path
                    _check_reason = f"{type(exc).__name__}: {exc}"
                _check_result = not _check_reason
                if not _check_result:
                    log.warning("fast CDR writer disagrees with rclpy on this installation (%s); "
                                "publishing through the slow object path", _check_reason)
    return _check_result


def fast_path_reason() -> str:
    fast_path_ok()
    return _check_reason
