"""Map files are untrusted input and must survive a crash while saving.

* Loading never runs code from the file: a crafted pickle that would create a file when
  unpickled is refused (``weights_only``) and nothing runs.
* A save killed with SIGKILL in the middle leaves the previous file loadable.
* A truncated or bit-flipped file is refused with a clear error; the map is kept.
"""

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from neural_mapping.config import MappingConfig
from neural_mapping.system import MappingSystem
from neural_mapping.system.map_file import MAP_FORMAT
from neural_mapping.types import CameraIntrinsics, RGBDFrame

INTR = CameraIntrinsics(80, 60, 60.0, 60.0, 39.5, 29.5)


def cfg(voxel_size_m=0.05):
    return MappingConfig.from_flat({"voxel_size_m": voxel_size_m, "initial_capacity_blocks": 256,
                                    "device": "cpu", "pose_source": "external"})


def wall(i, z=1.0):
    pose = np.eye(4)
    pose[0, 3] = 0.01 * i
    return RGBDFrame(np.full((60, 80), z, np.float32), INTR, timestamp=i / 30.0, pose=pose, index=i)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_loading_a_crafted_map_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "map.pt"
    # what torch.load(weights_only=False) would unpickle and run, with a valid header and checksum
    payload = pickle.dumps({"format": MAP_FORMAT, "backend": "tsdf", "map": _Exploit(marker)})
    bad.write_bytes(f"{MAP_FORMAT} sha256 {hashlib.sha256(payload).hexdigest()}\n".encode() + payload)
    with MappingSystem(cfg()) as system:
        system.submit(wall(0))
        system.flush(timeout=30)
        blocks = system.backend.grid.num_blocks
        with pytest.raises(ValueError, match="not a readable neural_mapping map file"):
            system.load(bad)
        assert system.backend.grid.num_blocks == blocks > 0  # the map is untouched
    assert not marker.exists()


def test_a_save_killed_midway_leaves_the_previous_map(tmp_path):
    path = tmp_path / "map.pt"
    child = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from test_map_file import cfg, wall
        from neural_mapping.system import MappingSystem
        with MappingSystem(cfg(0.02)) as s:  # walls at 20 depths: a map of ~10 MB
            for i in range(20):
                s.submit(wall(i, z=1.0 + 0.1 * i))
            s.flush()
            s.save({str(path)!r})
            print("saved", s.backend.grid.num_blocks, flush=True)
            while True:  # save again and again until killed
                s.save({str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("saved"), line
        blocks, size = int(line.split()[1]), path.stat().st_size
        assert size > 2e6, size
        # kill while a save is being written: the map file shorter than a whole map (written
        # in place) or a temporary file beside it (written aside, then renamed)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if path.stat().st_size < size or any(p.suffix == ".tmp" for p in tmp_path.iterdir()):
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    with MappingSystem(cfg(0.02)) as system:
        system.load(path)
        assert system.backend.grid.num_blocks == blocks


@pytest.mark.parametrize("damage", ["truncate", "flip_payload", "flip_header", "other_format"])
def test_damaged_map_files_are_refused_and_the_map_kept(tmp_path, damage):
    path = tmp_path / "map.pt"
    with MappingSystem(cfg()) as system:
        for i in range(3):
            system.submit(wall(i))
        system.flush(timeout=30)
        system.save(path)
        data = bytearray(path.read_bytes())
        head = data.index(b"\n")
        if damage == "truncate":
            data = data[: len(data) * 2 // 3]
        elif damage == "flip_payload":
            data[head + 1 + (len(data) - head) // 2] ^= 0x10
        elif damage == "flip_header":
            data[head - 1] = ord("0") if data[head - 1] != ord("0") else ord("1")
        else:
            data = data.replace(MAP_FORMAT.encode(), b"neural_mapping.map/1", 1)
        path.write_bytes(bytes(data))
        blocks = system.backend.grid.num_blocks
        match = "format 'neural_mapping.map/1'" if damage == "other_format" else "corrupted or truncated"
        with pytest.raises(ValueError, match=match):
            system.load(path)
        assert system.backend.grid.num_blocks == blocks > 0


def test_metadata_is_checked_before_anything_changes(tmp_path):
    """Format, backend, voxel and block size, frame id and the structure hash are in the file;
    a mismatch is refused with the field's name and the map is kept."""
    import torch
    from neural_mapping.system.map_file import config_hash, read_map_document
    path = tmp_path / "map.pt"
    with MappingSystem(cfg()) as system:
        for i in range(3):
            system.submit(wall(i))
        system.flush(timeout=30)
        system.save(path, frame_id="map")
        doc = read_map_document(path, "tsdf")
        assert (doc["format"], doc["backend"], doc["voxel_size_m"], doc["block_size_vox"], doc["frame_id"]) == \
            (MAP_FORMAT, "tsdf", 0.05, 8, "map")
        assert doc["config_hash"] == config_hash(system.config.to_flat())
        blocks = system.backend.grid.num_blocks
        with pytest.raises(ValueError, match="frame 'map', not 'odom'"):
            system.load(path, frame_id="odom")
        system.load(path, frame_id="map")
        assert system.backend.grid.num_blocks == blocks
    other = MappingConfig.from_flat({**cfg().to_flat(), "block_size_vox": 4})
    with MappingSystem(other) as system:
        system.submit(wall(0))
        system.flush(timeout=30)
        n = system.backend.grid.num_blocks
        with pytest.raises(ValueError, match="block_size_vox=8"):
            system.load(path)
        assert system.backend.grid.num_blocks == n
    with MappingSystem(MappingConfig.from_flat({**cfg().to_flat(), "truncation_vox": 3.0})) as system:
        with pytest.raises(ValueError, match="truncation_vox"):
            system.load(path)
    # metadata that disagrees with the saved config (a file written by something else): refused
    doc["voxel_size_m"] = 0.07
    from neural_mapping.system.map_file import write_map_document
    write_map_document(doc, path)
    with MappingSystem(cfg()) as system:
        with pytest.raises(ValueError, match="metadata does not match"):
            system.load(path)
    assert torch.is_tensor(doc["trajectory_poses"])


def test_service_paths_stay_in_the_output_directory(tmp_path):
    from neural_mapping.system.paths import output_path
    out = tmp_path / "out"
    assert output_path(out, "map.pt") == out.resolve() / "map.pt" and out.is_dir()
    for bad in ("../map.pt", "/etc/passwd", "a/../../x", ""):
        with pytest.raises(ValueError):
            output_path(out, bad)
    outside = tmp_path / "elsewhere.pt"
    (out / "map.pt").symlink_to(outside)  # a link planted in the output directory
    with pytest.raises(ValueError, match="symbolic link"):
        output_path(out, "map.pt")
    (out / "sub").symlink_to(tmp_path, target_is_directory=True)  # a linked folder on the way
    with pytest.raises(ValueError, match="outside the output directory"):
        output_path(out, "sub/mesh.ply")
    linked_root = tmp_path / "link_to_out"
    linked_root.symlink_to(out, target_is_directory=True)  # output_dir itself may be a link
    assert output_path(linked_root, "mesh.ply") == out.resolve() / "mesh.ply"
    assert not outside.exists()
