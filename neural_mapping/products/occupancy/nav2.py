"""Nav2 ``map_server`` files of a 2D occupancy grid (:mod:`.grid2d`): save, and load as the server does.

Nav2 ``map_server`` files (:func:`save_nav2_map`): binary PGM (P5, maxval 255),
occupied 0 (black), free 254, unknown 205, image top row = largest y (the
loader writes pixel row ``y`` into map row ``height - 1 - y``), and a YAML with
``image, mode: trinary, resolution, origin: [x, y, yaw], negate: 0,
occupied_thresh: 0.65, free_thresh: 0.196``.  Why 0.196 and not Nav2's saver
default 0.25: the loader computes ``occ = 1 - value / 255`` and calls a pixel
free when ``occ < free_thresh``; unknown's 205 gives ``occ = 50/255 = 0.19608``,
which is *below* 0.25 (unknown would load as free) and above 0.196 (the ROS 1
map_saver's value, chosen for exactly this).  :func:`load_nav2_map` implements
the loader's trinary rule so tests can check the round trip.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple, Union

import numpy as np

from neural_mapping.products.occupancy.grid2d import FREE, OCCUPIED, UNKNOWN, OccupancyGrid2D

__all__ = ["save_nav2_map", "read_pgm", "load_nav2_map", "PGM_OCCUPIED", "PGM_FREE", "PGM_UNKNOWN",
           "NAV2_OCCUPIED_THRESH", "NAV2_FREE_THRESH"]

# Nav2 trinary pixel values and the thresholds written with them (see the module docstring).
PGM_OCCUPIED, PGM_FREE, PGM_UNKNOWN = 0, 254, 205
NAV2_OCCUPIED_THRESH, NAV2_FREE_THRESH = 0.65, 0.196


def save_nav2_map(grid2d: OccupancyGrid2D, path_stem: Union[str, os.PathLike]) -> Tuple[Path, Path]:
    """Write ``<stem>.pgm`` + ``<stem>.yaml`` that ``nav2_map_server`` loads (module docstring).
    Returns the two paths."""
    stem = Path(path_stem)
    if stem.suffix in (".pgm", ".yaml"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    pgm, yml = stem.with_suffix(".pgm"), stem.with_suffix(".yaml")
    data = np.asarray(grid2d.data)
    img = np.full(data.shape, PGM_UNKNOWN, dtype=np.uint8)
    img[data == FREE] = PGM_FREE
    img[data == OCCUPIED] = PGM_OCCUPIED
    img = img[::-1]  # image top row = largest y
    H, W = data.shape
    with open(pgm, "wb") as fh:
        fh.write(f"P5\n# neural_mapping occupancy, {grid2d.resolution_m!r} m/cell\n{W} {H}\n255\n".encode())
        fh.write(np.ascontiguousarray(img).tobytes())
    ox, oy = (float(v) for v in grid2d.origin_xy)
    text = (f"image: {pgm.name}\n"
            "mode: trinary\n"
            f"resolution: {float(grid2d.resolution_m)!r}\n"
            f"origin: [{ox!r}, {oy!r}, 0.0]\n"
            "negate: 0\n"
            f"occupied_thresh: {NAV2_OCCUPIED_THRESH}\n"
            f"free_thresh: {NAV2_FREE_THRESH}\n")
    yml.write_text(text)
    return pgm, yml


def read_pgm(path: Union[str, os.PathLike]) -> np.ndarray:
    """A binary 8-bit PGM (P5) as uint8 ``[rows, cols]`` (comments allowed in the header)."""
    raw = Path(path).read_bytes()
    fields, pos = [], 0
    while len(fields) < 4:
        while raw[pos:pos + 1].isspace():
            pos += 1
        if raw[pos:pos + 1] == b"#":
            pos = raw.index(b"\n", pos) + 1
            continue
        start = pos
        while not raw[pos:pos + 1].isspace():
            pos += 1
        fields.append(raw[start:pos].decode())
    pos += 1  # exactly one whitespace byte after maxval
    if fields[0] != "P5":
        raise ValueError(f"{path}: not a binary PGM (magic {fields[0]!r})")
    W, H, maxval = int(fields[1]), int(fields[2]), int(fields[3])
    if maxval != 255:
        raise ValueError(f"{path}: maxval {maxval}, expected 255")
    body = np.frombuffer(raw, dtype=np.uint8, count=W * H, offset=pos)
    return body.reshape(H, W)


def load_nav2_map(yaml_path: Union[str, os.PathLike], frame_id: str = "map") -> OccupancyGrid2D:
    """Load a map_server pair the way ``nav2_map_server`` does in trinary mode
    (``occ = 1 - value/255`` (negate 0); occupied if ``occ > occupied_thresh``, free if
    ``occ < free_thresh``, else unknown; image row ``y`` -> map row ``height - 1 - y``)."""
    import yaml

    yaml_path = Path(yaml_path)
    meta = yaml.safe_load(yaml_path.read_text())
    if meta.get("mode", "trinary") != "trinary":
        raise ValueError("only trinary maps are supported")
    img_path = Path(meta["image"])
    if not img_path.is_absolute():
        img_path = yaml_path.parent / img_path
    img = read_pgm(img_path).astype(np.float64)
    shade = img / 255.0
    occ = shade if int(meta.get("negate", 0)) else 1.0 - shade
    data = np.full(img.shape, UNKNOWN, dtype=np.int8)
    data[occ < float(meta["free_thresh"])] = FREE
    data[occ > float(meta["occupied_thresh"])] = OCCUPIED
    ox, oy, yaw = (float(v) for v in meta["origin"])
    if yaw != 0.0:
        raise ValueError("only yaw 0 origins are supported")
    return OccupancyGrid2D(data[::-1].copy(), float(meta["resolution"]), (ox, oy), frame_id)
