"""Loss and recovery on the seeded jump sequence (1.5 s cut out of a swing through the
furnished synthetic room): the frame after the jump is not silently accepted at a wrong pose;
with relocalisation the system finds itself again against a keyframe within a second and
keeps mapping; without it the frames after the jump fail and nothing is integrated."""

import numpy as np
import pytest

from neural_mapping import geometry as g
from neural_mapping.config import MappingConfig
from neural_mapping.system.step import Mapper


@pytest.fixture(scope="module")
def jump():
    from neural_mapping.datasets.synthetic_tracking import DegenerateSequence
    return DegenerateSequence("jump", width=320, height=240, seed=0)


def _run(ds, n, **values):
    cfg = MappingConfig.from_flat({"voxel_size_m": 0.02, "depth_max_m": 3.0, "pose_source": "track",
                                   **values})
    mapper = Mapper(cfg)
    T0 = ds[0].pose
    out = []
    for i in range(n):
        f = ds[i]
        r = mapper.register_frame(f)
        err = g.pose_distance(g.inv_pose(T0) @ f.pose, r.T_world_cam)[0]
        out.append((r, err))
    return mapper, out


def test_relocalises_after_a_jump(jump):
    j = jump.jump_index
    mapper, out = _run(jump, j + 40)
    ok = [r.ok for r, _ in out]
    assert mapper.frames_integrated == sum(ok)  # failed frames are never integrated
    reloc = [i for i, (r, _) in enumerate(out) if r.status == "relocalised"]
    assert reloc and j <= reloc[0] <= j + 30, reloc  # within 1 s of the overlap returning
    assert mapper.policy.relocalisations == len(reloc)
    errs = [e for r, e in out if r.ok]
    assert max(errs) < 0.02, max(errs)  # no accepted frame is off by 2 cm, before or after
    assert all(r.ok for r, _ in out[reloc[0]:]), [r.status for r, _ in out[reloc[0]:]]


def test_without_relocalisation_nothing_is_integrated_while_lost(jump):
    j = jump.jump_index
    mapper, out = _run(jump, j + 15, relocalisation_keyframes=0)
    assert all(r.ok for r, _ in out[:j])
    after = [r for r, _ in out[j:]]
    assert not any(r.ok for r in after), [r.status for r in after]
    assert after[-1].status == "lost"
    assert mapper.frames_integrated == j
