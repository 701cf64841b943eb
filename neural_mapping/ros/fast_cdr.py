"""Serialized CDR bytes of big ROS messages straight from numpy (no Python ``Point`` objects).

Building ``Marker.points`` from ``geometry_msgs/Point`` objects costs about a second per
300 k vertices; rclpy publishes pre-serialized bytes as well (``Publisher.publish(bytes)``
calls ``publish_raw``).  The bytes are written by:

* :mod:`.cdr_writer` -- a small XCDR1 writer driven by the installed message definitions;
* :mod:`.cdr_markers` -- MarkerArray mesh chunks (templated per marker);
* :mod:`.cdr_cloud` -- PointCloud2 with float32 fields.

This module is their public face:

* :func:`marker_array_bytes` (TRIANGLE_LIST mesh chunks of at most 65535 vertices, stable
  ``ns``/``id``, per-vertex colors, DELETE / DELETEALL markers), its concatenated form
  :func:`marker_array_bytes_packed` (many small per-block markers) and
  :func:`pointcloud2_bytes`.  :func:`marker_array_msg` and :func:`pointcloud2_msg` build the
  same content as message objects (the slow reference, and the fallback).
* :func:`fast_path_ok` checks once per process, on small probes of exactly the layouts
  used here, that the writer agrees with ``rclpy.serialization`` (same length, the bytes
  deserialize to the reference message, identical bytes outside alignment padding).  If
  it does not (an rmw with another CDR flavour), the ``*_bytes`` functions fall back to the
  slow path and serialize with rclpy, so the output is always correct.

Usage::

    pub = node.create_publisher(MarkerArray, "~/mesh", qos)
    pub.publish(marker_array_bytes(chunk_triangles(verts, colors), deleted_ids,
                                   frame_id="map", stamp=t))
"""

from __future__ import annotations

import logging
import threading
from typing import Dict, Iterable, Optional

import numpy as np

from neural_mapping.ros import cdr_markers as mk
from neural_mapping.ros.cdr_cloud import pointcloud2_generic, pointcloud2_msg, pointcloud2_to_array  # noqa: F401 (API)
from neural_mapping.ros.cdr_markers import (ADD, DELETE, DELETEALL, DEFAULT_COLOR,  # noqa: F401 (API)
                                            MAX_MARKER_VERTICES, TRIANGLE_LIST, MeshChunk,
                                            chunk_triangles, marker_array_msg)
from neural_mapping.ros.cdr_writer import CdrWriter, compare_with_rclpy, serialize  # noqa: F401 (API)

log = logging.getLogger(__name__)


def _slow(msg) -> bytes:
    from rclpy.serialization import serialize_message
    return serialize_message(msg)


def marker_array_bytes(chunks: Iterable[MeshChunk] = (), deletes: Iterable[int] = (), *,
                       frame_id: str = "map", stamp=0.0, ns: str = "mesh",
                       delete_all: bool = False, color=DEFAULT_COLOR) -> bytes:
    """Serialized ``visualization_msgs/MarkerArray`` with the content of
    :func:`marker_array_msg`, written from numpy; publish with ``publisher.publish(b)``."""
    chunks = list(chunks)
    deletes = list(deletes)
    kw = dict(frame_id=frame_id, stamp=stamp, ns=ns, delete_all=delete_all, color=color)
    if fast_path_ok():
        return mk.marker_array_templated(mk.prepare_chunks(chunks), deletes, **kw)
    return _slow(marker_array_msg(chunks, deletes, **kw))


def marker_array_bytes_packed(ids, counts, vertices, colors=None, deletes: Iterable[int] = (), *,
                              frame_id: str = "map", stamp=0.0, ns: str = "mesh",
                              delete_all: bool = False, color=DEFAULT_COLOR) -> bytes:
    """Same as :func:`marker_array_bytes` for many small markers given concatenated: marker
    ``ids[k]`` has the next ``counts[k]`` rows of ``vertices`` (and ``colors``).  Vertices and
    colors are converted once for all markers (one block per marker costs a few us)."""
    ids, counts, v, rgba = mk.packed_arrays(ids, counts, vertices, colors)
    deletes = list(deletes)
    kw = dict(frame_id=frame_id, stamp=stamp, ns=ns, delete_all=delete_all, color=color)
    if fast_path_ok():
        return mk.marker_array_templated(mk.prepare_packed(ids, counts, v, rgba), deletes, **kw)
    return _slow(marker_array_msg(mk.split_packed(ids, counts, v, rgba), deletes, **kw))


def pointcloud2_bytes(xyz, *, rgb=None, fields: Optional[Dict[str, np.ndarray]] = None,
                      frame_id: str = "map", stamp=0.0) -> bytes:
    """Serialized :func:`pointcloud2_msg`, written from numpy."""
    if fast_path_ok():
        return pointcloud2_generic(xyz, rgb, fields, frame_id, stamp)
    return _slow(pointcloud2_msg(xyz, rgb=rgb, fields=fields, frame_id=frame_id, stamp=stamp))


# ------------------------------------------------------------------------- self-check
_check_lock = threading.Lock()
_check_result: Optional[bool] = None
_check_reason = ""


def _probe() -> str:
    from visualization_msgs.msg import MarkerArray
    if MarkerArray.get_fields_and_field_types() != {"markers": "sequence<visualization_msgs/Marker>"}:
        return f"unexpected MarkerArray fields {MarkerArray.get_fields_and_field_types()}"
    rng = np.random.default_rng(0)
    v = rng.normal(size=(6, 3))
    c = rng.integers(0, 256, size=(6, 3), dtype=np.uint8)
    # odd-length strings so that alignment differs between markers
    for ns, frame in (("mesh", "map"), ("m", "odom_x"), ("blk", "ma")):
        kw = dict(frame_id=frame, stamp=12.5, ns=ns, color=DEFAULT_COLOR)
        chunks = [MeshChunk(3, v, c), MeshChunk(4, v[:3], None), MeshChunk(5, v[:0], None),
                  MeshChunk(-6, v[3:], c[3:].astype(np.float32) / 255.0)]
        for dels, dall in (([], False), ([7, 9], False), ([1], True)):
            w = CdrWriter()
            generic = mk.marker_array_generic(chunks, dels, delete_all=dall, writer=w, **kw)
            err = compare_with_rclpy(generic, marker_array_msg(chunks, dels, delete_all=dall, **kw),
                                     w.padding)
            if err:
                return f"MarkerArray probe ({ns!r}, {frame!r}, deletes={dels}): {err}"
            fast = mk.marker_array_templated(mk.prepare_chunks(chunks), dels, delete_all=dall, **kw)
            if fast != generic:
                return f"MarkerArray probe ({ns!r}, {frame!r}, deletes={dels}): templated bytes " \
                    "differ from the generic writer's"
        for rgb, fields in ((None, None), (c, None), (None, {"distance": v[:, 0]}), (c, {"d": v[:, 1]})):
            w = CdrWriter()
            fast = pointcloud2_generic(v, rgb, fields, frame, 3.25, w)
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
