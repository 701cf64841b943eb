"""The live view's logging adapter against Rerun's in-memory recording: a real mapping system on
the synthetic room, the view hooked in (no thread: steps called here), the recording read back
as chunks.  Checks entities and components (mesh blocks, deletions, pose, pinhole, images,
occupancy, counters) and that a block is logged again only when its mesh changed."""

import collections
import dataclasses

import numpy as np
import pytest

rr = pytest.importorskip("rerun", reason="the view extra (rerun-sdk) is not installed")

from neural_mapping.config import MappingConfig  # noqa: E402
from neural_mapping.config.view import ViewConfig, add_view_arguments, view_config_from_args  # noqa: E402
from neural_mapping.datasets import SyntheticRoom  # noqa: E402
from neural_mapping.system.mapping_system import MappingSystem  # noqa: E402
from neural_mapping.view.live import LiveView  # noqa: E402
from neural_mapping.view.logger import MESH_ROOT  # noqa: E402


class Recorded:
    """What ``rec`` logged, read back from Rerun's in-memory recording: :meth:`rows` gives
    ``({(entity, component): rows}, static (entity, component) pairs)`` since the previous call
    (each call starts a new memory sink)."""

    def __init__(self, rec, tmp_path):
        self.rec, self.tmp_path = rec, tmp_path
        self.mem = rec.memory_recording()
        self.n = 0

    def rows(self):
        from rerun.chunk import RrdReader
        self.rec.log("test/marker", rr.TextLog("read back"))  # never an empty stream
        self.rec.flush()
        self.n += 1
        path = self.tmp_path / f"view{self.n}.rrd"
        path.write_bytes(self.mem.drain_as_bytes())
        self.mem = self.rec.memory_recording()
        rows = collections.Counter()
        static = set()
        for chunk in RrdReader(path).stream():
            ent = chunk.entity_path.lstrip("/")
            for col in chunk.to_record_batch().schema.names:
                if ":" in col:
                    rows[(ent, col)] += chunk.num_rows
                    if chunk.is_static:
                        static.add((ent, col))
        assert rows.pop(("test/marker", "TextLog:text")) == 1
        return rows, static


def blocks_with(rows, component):
    return {e for (e, c), n in rows.items() if e.startswith(MESH_ROOT + "/") and c == component and n}


@pytest.fixture()
def setup(tmp_path):
    cfg = MappingConfig.from_flat({"voxel_size_m": 0.05, "max_frames": 8})
    room = SyntheticRoom(num_frames=8, width=160, height=120)
    rec = rr.RecordingStream("neural_mapping_test", recording_id="view-test")
    recorded = Recorded(rec, tmp_path)
    system = MappingSystem(cfg)
    view = LiveView(rec, ViewConfig(view_image_width_px=80), cfg).attach(system, thread=False)
    yield system, view, room, recorded
    if view.system is not None:
        view.detach(final=False)
    system.close()


def test_map_frames_occupancy_and_counters(setup):
    system, view, room, mem = setup
    for i in range(4):
        system.submit_pose(room[i].timestamp, room[i].pose)
        system.submit(room[i])
    system.flush()
    view.step(mesh_blocks=None, occupancy_now=True)
    rows, static = mem.rows()
    meshed = blocks_with(rows, "Mesh3D:vertex_positions")
    assert len(meshed) == len(system.mapper.mesh_cache.update(system.backend.field()).changed) > 10
    assert all((e, "Mesh3D:vertex_positions") in static for e in meshed)  # the map is static
    assert blocks_with(rows, "Mesh3D:vertex_colors") == meshed
    # only the newest frame is logged (the others were skipped, counted), at its index
    assert view.frames_skipped == 3
    assert rows[("world/camera", "Transform3D:translation")] == 1
    assert rows[("world/camera", "Transform3D:mat3x3")] == 1
    assert ("world/camera", "Transform3D:translation") not in static     # poses: frame timeline
    assert rows[("world/camera", "Pinhole:image_from_camera")] == 1
    assert ("world/camera", "Pinhole:image_from_camera") in static
    assert rows[("world/camera", "Pinhole:resolution")] == 1
    assert rows[("world/camera/color", "Image:buffer")] == 1
    assert rows[("world/camera/depth", "DepthImage:buffer")] == 1
    assert rows[("world/trajectory", "LineStrips3D:strips")] == 1
    assert rows[("occupancy", "Image:buffer")] == 1 and ("occupancy", "Image:buffer") in static
    assert rows[("stats/frames_integrated", "Scalars:scalars")] == 1
    assert rows[("stats/tracking_lost", "Scalars:scalars")] == 1
    assert rows[("stats/view_frames_skipped", "Scalars:scalars")] == 1
    assert any(e.startswith("stats/dropped") for e, _ in rows)
    assert rows[("world", "ViewCoordinates:xyz")] == 1         # the synthetic room is z-up
    assert set(view.logger.blocks) and len(view.logger.blocks) == len(meshed)


def test_blocks_relogged_only_on_change_and_cleared_on_reset(setup):
    system, view, room, mem = setup
    for i in range(3):
        system.submit_pose(room[i].timestamp, room[i].pose)
        system.submit(room[i])
    system.flush()
    view.step(mesh_blocks=None)
    first, _ = mem.rows()
    all_blocks = blocks_with(first, "Mesh3D:vertex_positions")
    # nothing changed: no block is logged again
    view.step(mesh_blocks=None)
    again, _ = mem.rows()
    assert blocks_with(again, "Mesh3D:vertex_positions") == set()
    # the same frame again changes the TSDF average only where it sees: a subset is re-logged,
    # each changed block once
    f = dataclasses.replace(room[2], index=100, timestamp=room[2].timestamp + 10.0)
    system.submit_pose(f.timestamp, f.pose)
    system.submit(f)
    system.flush()
    view.step(mesh_blocks=None)
    third, _ = mem.rows()
    relogged = blocks_with(third, "Mesh3D:vertex_positions")
    assert relogged and relogged < all_blocks | relogged
    assert all(third[(e, "Mesh3D:vertex_positions")] == 1 for e in relogged)
    # reset: every logged block is cleared
    system.reset()
    view.step(mesh_blocks=None)
    fourth, _ = mem.rows()
    cleared = blocks_with(fourth, "Clear:is_recursive")
    assert cleared == all_blocks | relogged
    assert not view.logger.blocks
    # ... and the old trajectory and occupancy image with them
    assert fourth[("world/trajectory", "Clear:is_recursive")] == 1
    assert fourth[("occupancy", "Clear:is_recursive")] == 1


def test_budget_and_view_config_flags():
    import argparse
    p = argparse.ArgumentParser()
    add_view_arguments(p)
    args = p.parse_args(["--view", "--view-port", "9300", "--view-hold-s", "2.5"])
    vc = view_config_from_args(args)
    assert args.view and vc.view_port == 9300 and vc.view_hold_s == 2.5
    assert vc.view_memory_limit_mib == ViewConfig().view_memory_limit_mib
    for f in dataclasses.fields(ViewConfig):
        assert f.metadata["help"] and f.metadata["unit"], f.name
    with pytest.raises(ValueError, match="view_port"):
        ViewConfig.from_flat({"view_port": 0})


def _python(code: str):
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True,
                          env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"}, timeout=120)


def test_core_and_cli_do_not_import_rerun_and_missing_rerun_says_how_to_install():
    r = _python("import sys\n"
                "import neural_mapping.app.cli, neural_mapping.app.pipeline, neural_mapping.view.session\n"
                "import neural_mapping.view.live, neural_mapping.view.server, neural_mapping.ros.node_config\n"
                "assert 'rerun' not in sys.modules, 'rerun imported at import time'\n")
    assert r.returncode == 0, r.stderr
    # without rerun-sdk: --view stops with the install hint (exit 2), nothing mapped
    r = _python("import sys; sys.modules['rerun'] = None\n"
                "from neural_mapping.app.cli import main\n"
                "sys.exit(main(['run', 'synthetic', '--out', '/tmp/nm_view_norerun', '--view', "
                "'--no-progress']))\n")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "pip install neural_mapping[view]" in r.stderr
