"""Map files: the backend's state, the effective config and the trajectory, in one ``torch.save``.

Only tensors and plain types are stored, and files are read with
``torch.load(weights_only=True)``: loading a map never executes code from the file.
Writes are atomic (:func:`write_map_document`): a crash or a kill in the middle of a save
leaves the previous file as it was.

File layout: the line ``neural_mapping.map/2 sha256 <64 hex digits>``, then the
``torch.save`` payload whose SHA-256 that is; a truncated or corrupted file is refused before
anything of it is unpickled.  The document carries its metadata (``format``, ``backend``,
``voxel_size_m``, ``block_size_vox``, ``frame_id``, ``config_hash``: a SHA-256 of the fields
that fix the map's structure, :data:`STRUCTURE_FIELDS`); :func:`read_map_document` checks every
one against the loading system before anything changes, and names the first that differs.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

MAP_FORMAT = "neural_mapping.map/2"


@dataclass
class MapSnapshot:
    """A private copy of the map (``MappingSystem.snapshot()``) at map ``version``; ``field``
    is a :class:`~neural_mapping.grid.field.VoxelField` owned by the reader."""

    version: int
    frames_integrated: int
    field: Any

    def mesh(self):
        from neural_mapping.products.meshing import extract_mesh
        return extract_mesh(self.field)

# config fields a saved map's storage depends on: a map loads only where they agree
STRUCTURE_FIELDS = ("backend", "voxel_size_m", "block_size_vox", "truncation_vox", "neural_mode",
                    "neural_coarse_spacing_vox", "neural_fine_spacing_vox", "neural_color_spacing_vox")


def config_hash(config_flat: Dict[str, Any]) -> str:
    """SHA-256 of the :data:`STRUCTURE_FIELDS` of a flat config."""
    import json
    sub = {k: config_flat.get(k) for k in STRUCTURE_FIELDS}
    return hashlib.sha256(json.dumps(sub, sort_keys=True).encode()).hexdigest()


def map_document(backend_name: str, backend_state: Dict[str, Any], config_flat: Dict[str, Any],
                 version: int, trajectory: Sequence, frame_id: str = "") -> Dict[str, Any]:
    """The saved document; ``backend_state`` must already be a private copy (:func:`copy_tensors`);
    ``frame_id``: the frame the map's coordinates are in (the node's ``map_frame``)."""
    poses = np.array([p.T_world_cam for p in trajectory], dtype=np.float64).reshape(-1, 4, 4)
    return {"format": MAP_FORMAT, "backend": backend_name, "config": dict(config_flat),
            "map": backend_state, "version": int(version), "frame_id": str(frame_id),
            "voxel_size_m": float(config_flat["voxel_size_m"]),
            "block_size_vox": int(config_flat["block_size_vox"]), "config_hash": config_hash(config_flat),
            "trajectory_stamps": torch.tensor([float(p.stamp) for p in trajectory], dtype=torch.float64),
            "trajectory_poses": torch.from_numpy(poses),
            "trajectory_status": [str(p.status) for p in trajectory]}


def write_map_document(doc: Dict[str, Any], path) -> None:
    """Write ``doc`` to ``path`` atomically: a temporary file in the same folder, flushed and
    fsynced, then renamed over ``path`` (``os.replace``), then the folder fsynced."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(doc, buf)
    payload = buf.getbuffer()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(f"{MAP_FORMAT} sha256 {hashlib.sha256(payload).hexdigest()}\n".encode())
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_map_document(path, backend_name: str, config_flat: Optional[Dict[str, Any]] = None,
                      frame_id: Optional[str] = None) -> Dict[str, Any]:
    """Read and check a map file for a ``backend_name`` map (and, given them, a system with the
    flat config ``config_flat`` in frame ``frame_id``); ``ValueError`` says what is wrong."""
    data = Path(path).read_bytes()
    head, sep, payload = data.partition(b"\n")
    parts = head.decode("ascii", "replace").split(" ")
    if not sep or len(parts) != 3 or parts[1] != "sha256":
        raise ValueError(f"{path} is not a neural_mapping map file (no '{MAP_FORMAT} sha256' header)")
    if parts[0] != MAP_FORMAT:
        raise ValueError(f"{path} is a map file of format {parts[0]!r}; this version reads {MAP_FORMAT}")
    if hashlib.sha256(payload).hexdigest() != parts[2]:
        raise ValueError(f"{path} is corrupted or truncated (SHA-256 mismatch): not loaded")
    try:
        doc = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused (code in the file), not a torch payload...
        raise ValueError(f"{path} is not a readable neural_mapping map file ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != MAP_FORMAT:
        raise ValueError(f"{path} is not a neural_mapping map file of format {MAP_FORMAT}")
    if doc.get("backend") != backend_name:
        raise ValueError(f"{path} holds a {doc.get('backend')!r} map; this system runs the "
                         f"{backend_name!r} backend")
    if config_flat is not None:
        saved = doc.get("config") if isinstance(doc.get("config"), dict) else {}
        for k in STRUCTURE_FIELDS:
            if saved.get(k) != config_flat.get(k):
                raise ValueError(f"{path} was saved with {k}={saved.get(k)!r}; this system has "
                                 f"{k}={config_flat.get(k)!r}: not loaded")
        if doc.get("config_hash") != config_hash(saved) or doc.get("voxel_size_m") != saved.get("voxel_size_m") \
                or doc.get("block_size_vox") != saved.get("block_size_vox"):
            raise ValueError(f"{path}: its metadata does not match its config: not loaded")
    if frame_id and doc.get("frame_id") and doc["frame_id"] != frame_id:
        raise ValueError(f"{path} holds a map in frame {doc['frame_id']!r}, not {frame_id!r}: not loaded")
    return doc


def copy_tensors(obj):
    """Deep copy of the tensors in a state dict, on the CPU (on CPU a state dict may hold views
    of the live pool, which the mapping thread keeps writing once the lock is released)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: copy_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(copy_tensors(v) for v in obj)
    return obj
