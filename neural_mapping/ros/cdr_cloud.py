"""PointCloud2 (height 1, unordered, float32 ``x, y, z`` then ``rgb`` and/or other float32
fields such as ``distance``) as a message object (:func:`pointcloud2_msg`, the reference)
or as CDR bytes written from numpy (:func:`pointcloud2_generic`); publish through
:func:`neural_mapping.ros.fast_cdr.pointcloud2_bytes`, which picks the path."""

from __future__ import annotations

import array
from typing import Dict, Optional

import numpy as np

from neural_mapping.ros.cdr_writer import CdrWriter, RawSeq, byte_view, serialize
from neural_mapping.ros.conversions import header_msg


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
    msg.header = header_msg(frame_id, stamp)
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


def pointcloud2_generic(xyz, rgb, fields, frame_id, stamp, writer: Optional[CdrWriter] = None) -> bytes:
    names, data, dense = _cloud_columns(xyz, rgb, fields)
    msg = _cloud_skeleton(names, data.shape[0], dense, frame_id, stamp)
    return serialize(msg, {(id(msg), "data"): RawSeq(data.nbytes, 1, byte_view(data))},
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
