"""bench/bench_track_window.py's local-consistency check (how the 7-Scenes ground-truth glitches
at frames 122 and 448 were found): on the synthetic room (exact depth and poses) the true
trajectory agrees with its own depth to a few millimetres, and a 3 cm glitch put into one
pose is flagged at that frame, while the frames before it stay consistent."""

import importlib.util
from pathlib import Path

import numpy as np

from neural_mapping.datasets.synthetic import SyntheticRoom

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_track_window", REPO / "bench" / "bench_track_window.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_local_consistency_flags_a_pose_glitch():
    ds = SyntheticRoom(num_frames=240, width=320, height=240, seed=0)  # ~2.5 cm per frame
    frames = [ds[i] for i in range(10)]
    gt = ds.gt_poses()[:10]
    glitched = gt.copy()
    glitched[9, :3, 3] += np.array([0.03, 0.0, 0.0])  # the reference jumps 3 cm at frame 9 only
    rows = _bench().local_consistency(frames, {"gt": gt, "glitched": glitched}, (7, 10), 5,
                                      voxel=0.01, depth_max=4.0, verbose=False)
    lands = {r["frame"]: (r["gt"][0], r["glitched"][0]) for r in rows}
    assert sorted(lands) == [7, 8, 9]
    for k, (exact, bad) in lands.items():
        assert exact < 0.3, (k, exact)  # cm: exact poses agree with exact depth
    assert lands[7][1] < 0.3 and lands[8][1] < 0.3  # identical to gt before the glitch
    assert lands[9][1] > 2.0  # the glitched pose is 3 cm from where its depth puts it
