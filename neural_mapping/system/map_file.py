"""Map files: the backend's state, the effective config and the trajectory, in one ``torch.save``.

Only tensors and plain types are stored, and files are read with
``torch.load(weights_only=True)``: loading a map never executes code from the file.
Writes are atomic (:func:`write_map_document`): a crash or a kill in the middle of a save
leaves the previous file as it was.

File layout: the line ``neural_mapping.map/2 sha256 <64 hex digits>``, then the
``torch.save`` payload whose SHA-256 that is; a truncated or corrupted file is refused before
anything of it is unpickled.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np
import torch

MAP_FORMAT = "neural_mapping.map/2"


def map_document(backend_name: str, backend_state: Dict[str, Any], config_flat: Dict[str, Any],
                 version: int, trajectory: Sequence) -> Dict[str, Any]:
    """The saved document; ``backend_state`` must already be a private copy (:func:`copy_tensors`)."""
    poses = np.array([p.T_world_cam for p in trajectory], dtype=np.float64).reshape(-1, 4, 4)
    return {"format": MAP_FORMAT, "backend": backend_name, "config": dict(config_flat),
            "map": backend_state, "version": int(version),
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


def read_map_document(path, backend_name: str) -> Dict[str, Any]:
    """Read and check a map file for a ``backend_name`` map; ``ValueError`` says what is wrong."""
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
