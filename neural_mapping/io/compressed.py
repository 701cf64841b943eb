"""``sensor_msgs/CompressedImage`` as ``image_transport`` writes it: color (``compressed``:
JPEG / PNG) and depth (``compressedDepth``: PNG or RVL after a 12-byte config header).
Pure numpy + PIL, duck-typed on ``format`` and ``data`` like :mod:`.msg_decode` (no ROS import).

``compressedDepth`` (``compressed_depth_image_transport``, codec.cpp): ``format`` is
``"<encoding>; compressedDepth png"`` (or ``rvl``; older drivers write just
``"<encoding>; compressedDepth"``, meaning png); ``data`` is a ``ConfigHeader``
(``int32 format`` -- 0 = INV_DEPTH/png, 1 = RVL --, ``float32 depthQuantA, depthQuantB``,
little endian, 12 bytes) followed by the payload:

* ``16UC1`` + png: the 16-bit millimetre image as a 16-bit grayscale PNG (lossless);
* ``32FC1`` + png: inverse depth quantised, ``q = A / z + B`` (0 = invalid, z >= depth_max),
  decoded as ``z = A / (q - B)`` (the transport's defaults: quantisation 100, max 10 m);
* ``16UC1`` + rvl: ``uint32 cols, rows`` then Wilson's RVL stream (run lengths of zeros and
  non-zeros, zig-zag deltas, 4-bit variable length nibbles packed MSB-first in int32 words).

Color: whatever PIL reads (JPEG, PNG; mono becomes gray RGB).  PIL decodes in C;
``bench/bench_bags.py`` measures the ms per 640x480 frame and probes how much of a decode
lets other Python threads run (part of a PNG decode, little of a JPEG one).
Rejections raise :class:`~.msg_decode.DecodeError` with reason ``compressed_format`` (a format
we do not decode) or ``compressed_payload`` (truncated / corrupt / inconsistent data).
"""

from __future__ import annotations

import io
import struct
from typing import Tuple

import numpy as np
from PIL import Image

from neural_mapping.io.msg_decode import DecodeError, data_bytes

COMPRESSED_FORMAT = "compressed_format"
COMPRESSED_PAYLOAD = "compressed_payload"
CONFIG_HEADER = struct.Struct("<iff")  # compressionFormat, depthQuantA, depthQuantB
INV_DEPTH, RVL = 0, 1
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEPTH_QUANTIZATION = 100.0  # compressed_depth_image_transport defaults (32FC1 only)
DEPTH_MAX_M = 10.0
MAX_PIXELS = 1 << 25  # a declared image size beyond this (33 Mpx; 4K is 8 Mpx) is rejected before decoding


def is_compressed(msg) -> bool:
    """A CompressedImage (``format`` + ``data``), not an Image (``encoding``)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def _open(payload: bytes, what: str) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(payload))
        if im.width * im.height > MAX_PIXELS:  # before PIL allocates it (a few bytes can declare GBs)
            raise ValueError(f"declared size {im.width}x{im.height} is over {MAX_PIXELS} pixels")
        im.load()  # decode now: errors surface here
        return im
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        raise DecodeError(COMPRESSED_PAYLOAD, f"{what}: the payload does not decode "
                          f"({type(exc).__name__}: {exc})") from None


# ------------------------------------------------------------------------------ color
def color_from_compressed(msg) -> np.ndarray:
    """CompressedImage (``jpeg``/``png``, any ``format`` string PIL can read) -> (H, W, 3)
    uint8 RGB (a new, writable array)."""
    buf = data_bytes(msg.data)
    if buf.nbytes == 0:
        raise DecodeError(COMPRESSED_PAYLOAD, "compressed color image has no data")
    if "compresseddepth" in str(msg.format).lower():
        raise DecodeError(COMPRESSED_FORMAT, f"format {msg.format!r} is depth, not color")
    im = _open(buf.tobytes(), f"compressed color ({msg.format!r})")
    if im.mode not in ("RGB", "L", "RGBA", "P", "LA", "CMYK", "YCbCr"):
        raise DecodeError(COMPRESSED_FORMAT, f"compressed color has PIL mode {im.mode!r} "
                          "(16-bit?); expected 8-bit color or gray")
    return np.array(im.convert("RGB") if im.mode != "RGB" else im)


# ------------------------------------------------------------------------------ depth
def _depth_format(fmt: str) -> Tuple[str, str]:
    """``(encoding, codec)`` of a compressedDepth ``format`` string, as codec.cpp reads it."""
    enc, sep, rest = str(fmt).partition(";")
    enc, rest = enc.strip(), rest.strip()
    if not sep or rest == "compressedDepth":
        codec = "png"  # older transports: png only
    elif "compressedDepth png" in rest:
        codec = "png"
    elif "compressedDepth rvl" in rest:
        codec = "rvl"
    else:
        raise DecodeError(COMPRESSED_FORMAT, f"depth format {fmt!r} is not compressedDepth png/rvl")
    if enc not in ("16UC1", "mono16", "32FC1"):
        raise DecodeError(COMPRESSED_FORMAT, f"compressedDepth of encoding {enc!r}; supported: "
                          "16UC1, mono16 (png, rvl), 32FC1 (png, inverse depth)")
    return enc, codec


def depth_from_compressed(msg) -> np.ndarray:
    """CompressedImage depth -> (H, W) float32 metres, invalid = 0.  ``compressedDepth``
    (12-byte header + PNG/RVL) or, for the plain ``compressed`` transport, a 16-bit PNG of
    millimetres."""
    buf = data_bytes(msg.data).tobytes()
    fmt = str(msg.format)
    if "compressedDepth" not in fmt:
        if not buf.startswith(PNG_MAGIC):
            raise DecodeError(COMPRESSED_FORMAT, f"depth CompressedImage format {fmt!r} is not "
                              "compressedDepth and the data is no PNG (JPEG depth is lossy: unusable)")
        return _png16(buf, fmt).astype(np.float32) * np.float32(1e-3)
    enc, codec = _depth_format(fmt)
    if len(buf) <= CONFIG_HEADER.size:
        raise DecodeError(COMPRESSED_PAYLOAD, f"compressedDepth data has {len(buf)} B: no room for "
                          f"the {CONFIG_HEADER.size}-byte config header and an image")
    kind, qa, qb = CONFIG_HEADER.unpack_from(buf, 0)
    payload = buf[CONFIG_HEADER.size:]
    if codec == "rvl":
        if enc == "32FC1":
            raise DecodeError(COMPRESSED_FORMAT, "32FC1 compressedDepth rvl is not supported")
        raw = rvl_decode_payload(payload)
    else:
        raw = _png16(payload, fmt)
    if enc != "32FC1":
        return raw.astype(np.float32) * np.float32(1e-3)
    if not (np.isfinite(qa) and np.isfinite(qb) and qa > 0):
        raise DecodeError(COMPRESSED_PAYLOAD, f"32FC1 compressedDepth quantisation A={qa}, B={qb} "
                          "is invalid")
    q = raw.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.float32(qa) / (q - np.float32(qb))
    z[(raw == 0) | ~np.isfinite(z) | (z < 0)] = 0.0
    return z


def _png16(payload: bytes, fmt: str) -> np.ndarray:
    if not payload.startswith(PNG_MAGIC):
        raise DecodeError(COMPRESSED_PAYLOAD, f"depth ({fmt!r}): the payload is not a PNG")
    im = _open(payload, f"depth ({fmt!r})")
    if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise DecodeError(COMPRESSED_PAYLOAD, f"depth ({fmt!r}): PNG has PIL mode {im.mode!r}, "
                          "expected 16-bit gray")
    a = np.asarray(im)
    return a if a.dtype == np.uint16 else a.astype(np.uint16)


# -------------------------------------------------------------------------------- RVL
def rvl_decode_payload(payload: bytes) -> np.ndarray:
    """``uint32 cols, rows`` + RVL stream -> (rows, cols) uint16.  The variable-length nibbles
    are unpacked with numpy; only the runs (not the pixels) are walked in Python."""
    if len(payload) < 8:
        raise DecodeError(COMPRESSED_PAYLOAD, "RVL payload shorter than its 8-byte size header")
    cols, rows = struct.unpack_from("<II", payload, 0)
    n = int(cols) * int(rows)
    if n == 0 or n > MAX_PIXELS:
        raise DecodeError(COMPRESSED_PAYLOAD, f"RVL image is {cols}x{rows}")
    body = payload[8:]
    words = np.frombuffer(body[:len(body) // 4 * 4], "<u4")
    nib = ((words[:, None] >> np.arange(28, -1, -4, dtype=np.uint32)) & 0xF).reshape(-1)
    ends = np.flatnonzero((nib & 0x8) == 0)  # last nibble of each value
    if len(ends) == 0:
        raise DecodeError(COMPRESSED_PAYLOAD, "RVL stream holds no value")
    starts = np.concatenate(([0], ends[:-1] + 1))
    # value = sum (nibble & 7) << 3 * (index within its value)
    idx = np.arange(ends[-1] + 1)
    owner = np.searchsorted(ends, idx)  # which value each nibble belongs to
    shift = 3 * (idx - starts[owner])
    if shift.max(initial=0) > 30:
        raise DecodeError(COMPRESSED_PAYLOAD, "RVL value longer than 32 bits")
    vals = np.zeros(len(ends), np.int64)
    np.add.at(vals, owner, (nib[:len(idx)].astype(np.int64) & 7) << shift)
    out_runs, deltas = [], []
    i, done, nv = 0, 0, len(vals)
    while done < n:
        if i + 1 >= nv:
            raise DecodeError(COMPRESSED_PAYLOAD, f"RVL stream ends after {done} of {n} pixels")
        zeros, nonzeros = int(vals[i]), int(vals[i + 1])
        if zeros + nonzeros == 0:  # CompressRVL never writes an empty run: garbage (and a slow loop)
            raise DecodeError(COMPRESSED_PAYLOAD, f"RVL stream has an empty run after {done} of {n} pixels")
        if done + zeros + nonzeros > n or i + 2 + nonzeros > nv:
            raise DecodeError(COMPRESSED_PAYLOAD, "RVL run goes past the image / the stream")
        out_runs.append((done + zeros, nonzeros, i + 2))
        done += zeros + nonzeros
        i += 2 + nonzeros
    sel = np.zeros(n, bool)
    order = []
    for start, count, vi in out_runs:
        sel[start:start + count] = True
        order.append(vals[vi:vi + count])
    out = np.zeros(n, np.uint16)
    if order:
        pos_vals = np.concatenate(order)
        delta = (pos_vals >> 1) ^ -(pos_vals & 1)  # zig-zag
        out[sel] = (np.cumsum(delta) & 0xFFFF).astype(np.uint16)
    return out.reshape(int(rows), int(cols))


def rvl_encode(raw: np.ndarray) -> bytes:
    """(rows, cols) uint16 -> ``uint32 cols, rows`` + RVL stream, exactly as RvlCodec::CompressRVL
    (a straight Python port: for tests and small bags, not fast)."""
    raw = np.ascontiguousarray(raw, dtype=np.uint16)
    rows, cols = raw.shape
    px = raw.reshape(-1).tolist()
    words, state = [], [0, 0]  # word, nibbles written

    def vle(value):
        while True:
            nibble = value & 7
            value >>= 3
            if value:
                nibble |= 8
            state[0] = ((state[0] << 4) | nibble) & 0xFFFFFFFF
            state[1] += 1
            if state[1] == 8:
                words.append(state[0])
                state[0] = state[1] = 0
            if not value:
                return

    i, n, prev = 0, len(px), 0
    while i < n:
        z = 0
        while i < n and px[i] == 0:
            i, z = i + 1, z + 1
        vle(z)
        nz = 0
        while i + nz < n and px[i + nz]:
            nz += 1
        vle(nz)
        for _ in range(nz):
            cur = px[i]
            i += 1
            d = cur - prev
            vle(((d << 1) ^ (d >> 31)) & 0xFFFFFFFF)
            prev = cur
    if state[1]:
        words.append((state[0] << 4 * (8 - state[1])) & 0xFFFFFFFF)
    return struct.pack("<II", cols, rows) + np.asarray(words, "<u4").tobytes()


# ---------------------------------------------------------------------------- writing
def compress_color(rgb: np.ndarray, codec: str = "jpeg", quality: int = 90) -> Tuple[str, bytes]:
    """(H, W, 3) uint8 RGB -> ``(format, data)`` as compressed_image_transport writes them
    (``"rgb8; jpeg compressed bgr8"``: the file itself is a standard RGB JPEG / PNG)."""
    out = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    if codec == "jpeg":
        im.save(out, format="JPEG", quality=int(quality))
    elif codec == "png":
        im.save(out, format="PNG", compress_level=1)
    else:
        raise ValueError(f"color codec must be jpeg or png, got {codec!r}")
    return f"rgb8; {codec} compressed bgr8", out.getvalue()


def compress_depth(raw: np.ndarray, codec: str = "png") -> Tuple[str, bytes]:
    """Depth pixels as the camera publishes them -> compressedDepth ``(format, data)``:
    uint16 mm (png or rvl, lossless) or float32 m (png, inverse depth quantised with the
    transport's defaults; NaN / >= 10 m invalid)."""
    raw = np.ascontiguousarray(raw)
    if raw.dtype == np.float32:
        if codec != "png":
            raise ValueError("32FC1 compressedDepth is png only")
        qa = np.float32(DEPTH_QUANTIZATION * (DEPTH_QUANTIZATION + 1.0))
        qb = np.float32(1.0 - qa / DEPTH_MAX_M)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = qa / raw + qb
        ok = np.isfinite(raw) & (raw < DEPTH_MAX_M) & (raw > 0)
        # cv::Mat<uint16> assignment saturates and rounds to nearest
        q16 = np.where(ok, np.clip(np.rint(np.where(ok, q, 0)), 0, 65535), 0).astype(np.uint16)
        header, enc, data = CONFIG_HEADER.pack(INV_DEPTH, qa, qb), "32FC1", _png16_bytes(q16)
    elif raw.dtype == np.uint16:
        enc = "16UC1"
        if codec == "png":
            header, data = CONFIG_HEADER.pack(INV_DEPTH, 0.0, 0.0), _png16_bytes(raw)
        elif codec == "rvl":
            header, data = CONFIG_HEADER.pack(RVL, 0.0, 0.0), rvl_encode(raw)
        else:
            raise ValueError(f"depth codec must be png or rvl, got {codec!r}")
    else:
        raise TypeError(f"depth pixels must be uint16 (mm) or float32 (m), got {raw.dtype}")
    return f"{enc}; compressedDepth {codec}", header + data


def _png16_bytes(a: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a, dtype=np.uint16)).save(out, format="PNG", compress_level=1)
    return out.getvalue()
