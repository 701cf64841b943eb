"""A small CDR writer driven by the *installed* message definitions.

:func:`serialize` walks ``get_fields_and_field_types()`` recursively in field order, so
Humble, Jazzy and Kilted layouts (e.g. ``Marker`` gained ``texture``/``uv_coordinates``/
``mesh_file``) all come out right.  Scalars come from a real message object; sequences named
in ``raw`` are written from pre-packed numpy bytes instead of the object's (empty) field.

The encoding is XCDR1 / PLAIN_CDR little endian (what rmw_fastrtps and rmw_cyclonedds use
for ROS types): primitives aligned to their size (8 at most) relative to the start of the
payload (after the 4-byte encapsulation header), ``uint32`` lengths before sequences and
strings, strings NUL-terminated with the NUL counted in the length.  The bytes are exactly
``bytes`` (rclpy's ``publish`` refuses ``bytearray``/``memoryview``).

:func:`compare_with_rclpy` checks written bytes against ``rclpy.serialization`` (the
self-check of :mod:`neural_mapping.ros.fast_cdr` and the tests use it).
"""

from __future__ import annotations

import array
import re
import struct
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

# name in get_fields_and_field_types() -> (struct code, size)
_PRIMS: Dict[str, Tuple[str, int]] = {
    "boolean": ("?", 1), "octet": ("B", 1), "char": ("B", 1), "uint8": ("B", 1), "int8": ("b", 1),
    "int16": ("h", 2), "uint16": ("H", 2), "int32": ("i", 4), "uint32": ("I", 4),
    "int64": ("q", 8), "uint64": ("Q", 8), "float": ("f", 4), "double": ("d", 8),
}
_SEQ_RE = re.compile(r"^sequence<(.+?)(?:,\s*(\d+))?>$")
_ARR_RE = re.compile(r"^(.+)\[(\d+)\]$")
_BSTR_RE = re.compile(r"^string<=(\d+)$")


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


def byte_view(a: np.ndarray) -> memoryview:
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
            write_struct(w, v, raw)
        return
    raise NotImplementedError(f"CDR writer: unsupported element type {elem!r}")


def write_struct(w: CdrWriter, msg, raw: Optional[Dict[Tuple[int, str], RawSeq]]) -> None:
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
            write_struct(w, value, raw)
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
    write_struct(w, msg, raw)
    return w.getvalue()


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
