"""Compressed image transports (neural_mapping.io.compressed): compressedDepth PNG / RVL with
the 12-byte config header, JPEG / PNG colour, malformed payloads rejected with a reason."""

import io
import struct
import zlib
from types import SimpleNamespace as Msg

import numpy as np
import pytest
from PIL import Image

from neural_mapping.io import compressed as c
from neural_mapping.io.msg_decode import DecodeError


def _png16_by_hand(a: np.ndarray) -> bytes:
    """A 16-bit grayscale PNG written from the spec (big-endian samples, filter 0 rows, zlib),
    as cv::imencode does: independent of PIL's writer."""
    h, w = a.shape

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + a[r].astype(">u2").tobytes() for r in range(h))
    return (c.PNG_MAGIC + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _depth_mm(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.integers(300, 6000, (h, w)).astype(np.uint16)
    d[rng.random((h, w)) < 0.2] = 0
    d[:, :5] = 0  # a run of holes
    return d


def test_compressed_depth_16uc1_png_with_hand_built_header():
    d = _depth_mm()
    data = struct.pack("<iff", 0, 0.0, 0.0) + _png16_by_hand(d)  # ConfigHeader{INV_DEPTH, 0, 0}
    for fmt in ("16UC1; compressedDepth png", "16UC1; compressedDepth"):  # new and old drivers
        z = c.depth_from_compressed(Msg(format=fmt, data=data))
        assert z.dtype == np.float32 and z.shape == d.shape
        np.testing.assert_array_equal(z, d.astype(np.float32) * np.float32(1e-3))
    assert c.is_compressed(Msg(format="x", data=b"")) and not c.is_compressed(Msg(encoding="16UC1", data=b""))


def test_compressed_depth_32fc1_inverse_depth_as_the_transport_writes_it():
    """codec.cpp: A = Z0 (Z0 + 1), B = 1 - A / max (float32), q = A / z + B saturated to uint16,
    0 for z >= max or NaN; decoded z = A / (q - B)."""
    mm = _depth_mm(seed=1)
    z = mm.astype(np.float32) / 1000
    z[mm == 0] = np.nan
    z[0, 10] = 12.0  # beyond depth_max: invalid
    A = np.float32(100.0 * 101.0)
    B = np.float32(1.0 - A / np.float32(10.0))
    ok = np.isfinite(z) & (z < 10.0)
    q = np.zeros(z.shape, np.uint16)
    q[ok] = np.clip(np.rint(A / z[ok] + B), 0, 65535)
    data = struct.pack("<iff", 0, A, B) + _png16_by_hand(q)
    out = c.depth_from_compressed(Msg(format="32FC1; compressedDepth png", data=data))
    assert (out[~ok] == 0).all() and (out[ok] > 0).all()
    err = np.abs(out[ok] - z[ok])
    assert (err <= z[ok] ** 2 / A + 1e-6).all()  # half a quantum of inverse depth, at most
    # and our writer makes the same payload
    fmt, ours = c.compress_depth(z, "png")
    assert fmt == "32FC1; compressedDepth png" and ours[:12] == data[:12]
    np.testing.assert_array_equal(c.depth_from_compressed(Msg(format=fmt, data=ours)), out)


def test_rvl_hand_built_stream_and_round_trip():
    # 1x5 image [0, 0, 5, 7, 0]: VLE nibbles zeros=2, nonzeros=2, zigzag(5)=10 -> 0xA 0x1,
    # zigzag(2)=4, zeros=1, nonzeros=0 -> word 0x22A1410 shifted into the top nibbles
    stream = struct.pack("<II", 5, 1) + struct.pack("<I", 0x22A14100)
    data = struct.pack("<iff", 1, 0.0, 0.0) + stream
    z = c.depth_from_compressed(Msg(format="16UC1; compressedDepth rvl", data=data))
    np.testing.assert_array_equal(z, np.array([[0, 0, 5, 7, 0]], np.float32) * np.float32(1e-3))
    assert c.rvl_encode(np.array([[0, 0, 5, 7, 0]], np.uint16)) == stream
    d = _depth_mm(seed=2)
    d[7, 3] = 65535  # large deltas need several nibbles
    fmt, data = c.compress_depth(d, "rvl")
    np.testing.assert_array_equal(c.rvl_decode_payload(data[12:]), d)


@pytest.mark.parametrize("codec", ["jpeg", "png"])
def test_color_jpeg_and_png(codec):
    yy, xx = np.mgrid[0:48, 0:64]
    rgb = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)  # smooth: JPEG-friendly
    fmt, data = c.compress_color(rgb, codec, quality=95)
    out = c.color_from_compressed(Msg(format=fmt, data=np.frombuffer(data, np.uint8)))
    assert out.shape == rgb.shape and out.dtype == np.uint8 and out.flags.writeable
    if codec == "png":
        np.testing.assert_array_equal(out, rgb)
    else:
        assert np.abs(out.astype(int) - rgb).mean() < 2.0
    buf = io.BytesIO()
    Image.fromarray(rgb[:, :, 1]).save(buf, format="JPEG", quality=95)  # mono8 JPEG -> gray RGB
    gray = c.color_from_compressed(Msg(format="mono8; jpeg compressed mono8", data=buf.getvalue()))
    assert gray.shape == rgb.shape and (gray[..., 0] == gray[..., 2]).all()


PNG = _png16_by_hand(_depth_mm())
HDR = struct.pack("<iff", 0, 0.0, 0.0)
MALFORMED = [  # (what, format, data, decoder, reason)
    ("empty color", "jpeg", b"", c.color_from_compressed, c.COMPRESSED_PAYLOAD),
    ("garbage color", "jpeg", b"\xff\xd8\xff garbage", c.color_from_compressed, c.COMPRESSED_PAYLOAD),
    ("truncated jpeg", "jpeg", c.compress_color(np.zeros((32, 32, 3), np.uint8))[1][:60],
     c.color_from_compressed, c.COMPRESSED_PAYLOAD),
    ("depth format on color", "16UC1; compressedDepth png", HDR + PNG, c.color_from_compressed,
     c.COMPRESSED_FORMAT),
    ("header only", "16UC1; compressedDepth png", HDR, c.depth_from_compressed, c.COMPRESSED_PAYLOAD),
    ("truncated png", "16UC1; compressedDepth png", HDR + PNG[:70], c.depth_from_compressed,
     c.COMPRESSED_PAYLOAD),
    ("no header", "16UC1; compressedDepth png", PNG, c.depth_from_compressed, c.COMPRESSED_PAYLOAD),
    ("8-bit png", "16UC1; compressedDepth png",
     HDR + c.compress_color(np.zeros((8, 8, 3), np.uint8), "png")[1], c.depth_from_compressed,
     c.COMPRESSED_PAYLOAD),
    ("unknown codec", "16UC1; compressedDepth zstd", HDR + PNG, c.depth_from_compressed,
     c.COMPRESSED_FORMAT),
    ("8-bit encoding", "bgr8; compressedDepth png", HDR + PNG, c.depth_from_compressed,
     c.COMPRESSED_FORMAT),
    ("jpeg depth", "16UC1; jpeg compressed mono16", b"\xff\xd8\xff\xe0", c.depth_from_compressed,
     c.COMPRESSED_FORMAT),
    ("rvl too short", "16UC1; compressedDepth rvl",
     struct.pack("<iff", 1, 0, 0) + struct.pack("<II", 64, 48) + b"\x00\x00\x00\x22",
     c.depth_from_compressed, c.COMPRESSED_PAYLOAD),
    ("32FC1 bad quantisation", "32FC1; compressedDepth png", struct.pack("<iff", 0, 0.0, 0.0) + PNG,
     c.depth_from_compressed, c.COMPRESSED_PAYLOAD),
]


@pytest.mark.parametrize("what,fmt,data,decode,reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_payloads_are_rejected_with_a_reason(what, fmt, data, decode, reason):
    with pytest.raises(DecodeError) as e:
        decode(Msg(format=fmt, data=data))
    assert e.value.reason == reason, str(e.value)


def _rvl_words(*values) -> bytes:
    """RVL variable-length nibbles of ``values`` packed MSB-first in little-endian int32 words."""
    nibbles = []
    for v in values:
        while True:
            nib, v = v & 7, v >> 3
            nibbles.append(nib | (8 if v else 0))
            if not v:
                break
    nibbles += [0] * (-len(nibbles) % 8)
    words = [int("".join(f"{n:x}" for n in nibbles[i:i + 8]), 16) for i in range(0, len(nibbles), 8)]
    return struct.pack(f"<{len(words)}I", *words)


def _png_bomb(w: int, h: int) -> bytes:
    """A valid 16-bit PNG of ``w x h`` zeros: a few hundred kB that decode to ``2 w h`` bytes."""
    z = zlib.compressobj(9)
    row = b"\x00" * (1 + 2 * w)
    body = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return c.PNG_MAGIC + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_declared_sizes_and_empty_runs_are_rejected_before_any_work():
    """Found while fuzzing (test_fuzz_inputs.py): a 20-byte RVL stream declaring 8000x8000 holes
    decoded to a 64 Mpx image (~190 MB allocated), a PNG of zeros (~70 kB) to 36 Mpx, and a
    stream of zero words was walked in Python once per pair of zero nibbles.  Now: sizes
    over MAX_PIXELS are refused before decoding, an empty run (never written by CompressRVL) is
    garbage."""
    rvl = struct.pack("<iff", 1, 0, 0)
    assert c.rvl_decode_payload(struct.pack("<II", 4, 1) + _rvl_words(4, 0)).shape == (1, 4)  # 4 holes
    for data, says in [
            (rvl + struct.pack("<II", 8000, 8000) + _rvl_words(64_000_000, 0), "8000x8000"),
            (rvl + struct.pack("<II", 64, 48) + b"\x00" * 4000, "empty run"),
            (HDR + _png_bomb(6000, 6000), "over")]:
        fmt = "16UC1; compressedDepth " + ("rvl" if data[:4] == rvl[:4] else "png")
        with pytest.raises(DecodeError) as e:
            c.depth_from_compressed(Msg(format=fmt, data=data))
        assert e.value.reason == c.COMPRESSED_PAYLOAD and says in str(e.value), str(e.value)
    with pytest.raises(DecodeError, match="over"):
        c.color_from_compressed(Msg(format="png", data=_png_bomb(6000, 6000)))
