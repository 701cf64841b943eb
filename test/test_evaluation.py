"""Trajectory metrics (evo), TUM trajectory I/O, plots and mesh distances."""

import json
import math

import numpy as np
import pytest

from neural_mapping.io.evaluation import (TRAJECTORY_KEYS, evaluate_trajectory, evaluate_tum_files,
                                       mesh_accuracy, mesh_to_mesh_distances, plot_trajectories,
                                       trajectory_metrics, write_evaluation)
from neural_mapping.geometry import make_pose, se3_exp, so3_exp
from neural_mapping.io.images import read_tum_trajectory, write_tum_trajectory


def _trajectory(n=200, seed=0):
    """A smooth, non-planar trajectory (positions spread in 3-D, rotation varying)."""
    t = np.linspace(0, 2 * np.pi, n)
    P = np.empty((n, 4, 4))
    for k, s in enumerate(t):
        R = so3_exp([0.3 * math.sin(s), 0.5 * s, 0.2 * math.cos(2 * s)])
        P[k] = make_pose(R, [math.cos(s), 0.7 * math.sin(s), 0.3 * math.sin(3 * s)])
    return P


def test_ate_of_ground_truth_is_zero():
    G = _trajectory()
    m = trajectory_metrics(G, G, np.arange(len(G)) / 30)
    assert set(TRAJECTORY_KEYS) <= set(m)
    assert m["num_poses"] == len(G)
    for k in ("ate_rmse_cm", "ate_max_cm", "ate_first_frame_rmse_cm", "rpe_trans_rmse_cm",
              "rpe_rot_rmse_deg"):
        assert m[k] == pytest.approx(0, abs=1e-8), k


def test_rigid_offset_is_removed_by_both_alignments():
    G = _trajectory()
    off = se3_exp([0.3, -0.2, 0.5, 0.2, -0.1, 0.4])
    ev = evaluate_trajectory(off @ G, G)
    m = ev.metrics
    assert m["ate_rmse_cm"] == pytest.approx(0, abs=1e-6)
    assert m["ate_first_frame_rmse_cm"] == pytest.approx(0, abs=1e-6)
    assert m["rpe_trans_rmse_cm"] == pytest.approx(0, abs=1e-6)
    np.testing.assert_allclose(ev.alignment, np.linalg.inv(off), atol=1e-9)
    np.testing.assert_allclose(ev.est_aligned, G, atol=1e-9)


def test_first_frame_alignment_vs_umeyama():
    """Only the first estimated pose is off by 10 cm: first-frame alignment moves every other
    pose by 10 cm; SE(3) alignment barely moves."""
    G = _trajectory(n=101)
    E = G.copy()
    E[0, :3, 3] += [0.1, 0.0, 0.0]
    m = trajectory_metrics(E, G)
    n = len(G)
    assert m["ate_first_frame_rmse_cm"] == pytest.approx(10 * math.sqrt((n - 1) / n), rel=1e-6)
    assert m["ate_first_frame_max_cm"] == pytest.approx(10, rel=1e-6)
    assert m["ate_rmse_cm"] < 1.1
    assert m["ate_max_cm"] == pytest.approx(10, abs=0.2)


def test_noise_gives_expected_ate_and_rpe():
    G = _trajectory(n=2000)
    rng = np.random.default_rng(0)
    sigma = 0.01
    E = G.copy()
    E[:, :3, 3] += rng.normal(0, sigma, (len(G), 3))
    m = trajectory_metrics(E, G)
    assert m["ate_rmse_cm"] == pytest.approx(100 * sigma * math.sqrt(3), rel=0.05)
    assert m["rpe_trans_rmse_cm"] == pytest.approx(100 * sigma * math.sqrt(6), rel=0.05)
    assert m["rpe_rot_rmse_deg"] == pytest.approx(0, abs=1e-6)
    # rotation noise shows in the rotational RPE
    E2 = np.array([T @ make_pose(so3_exp(rng.normal(0, 0.01, 3)), [0, 0, 0]) for T in G])
    m2 = trajectory_metrics(E2, G)
    assert m2["ate_rmse_cm"] == pytest.approx(0, abs=1e-6)
    expected = math.degrees(math.sqrt(2 * 3) * 0.01)  # difference of two 3-D rotation noises
    assert m2["rpe_rot_rmse_deg"] == pytest.approx(expected, rel=0.1)


def test_missing_poses_are_dropped_and_degenerate_inputs():
    G = _trajectory(n=50)
    E = G.copy()
    E[3] = np.nan
    Gm = G.copy()
    Gm[7] = np.nan
    m = trajectory_metrics(E, Gm)
    assert m["num_poses"] == 48 and m["ate_rmse_cm"] == pytest.approx(0, abs=1e-8)
    one = trajectory_metrics(G[:1], G[:1])
    assert one["num_poses"] == 1 and one["ate_rmse_cm"] == pytest.approx(0, abs=1e-9)
    assert math.isnan(one["rpe_trans_rmse_cm"])
    static = np.repeat(G[:1], 10, axis=0)  # collinear/degenerate: falls back to first-frame
    assert trajectory_metrics(static, static)["ate_rmse_cm"] == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match="poses"):
        trajectory_metrics(G[:5], G[:6])


def test_tum_io_roundtrip_and_file_evaluation(tmp_path):
    G = _trajectory(n=120)
    stamps = 1305031102.0 + np.arange(len(G)) / 30
    write_tum_trajectory(tmp_path / "gt.txt", stamps, G)
    s, P = read_tum_trajectory(tmp_path / "gt.txt")
    np.testing.assert_allclose(s, stamps, atol=1e-6)
    np.testing.assert_allclose(P, G, atol=1e-7)
    # estimate at slightly shifted stamps (5 ms), every other frame, offset by 2 cm in x
    E = G[::2].copy()
    E[:, 0, 3] += 0.02
    write_tum_trajectory(tmp_path / "est.txt", stamps[::2] + 0.005, E)
    ev = evaluate_tum_files(tmp_path / "est.txt", tmp_path / "gt.txt", max_diff_s=0.01)
    assert ev.metrics["num_poses"] == 60 and ev.metrics["num_gt_poses"] == 120
    assert ev.metrics["ate_rmse_cm"] == pytest.approx(0, abs=1e-4)  # a constant offset aligns away
    m = write_evaluation(tmp_path / "out", ev, name="est")
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["num_poses"] == 60
    assert (tmp_path / "out" / "trajectory.png").stat().st_size > 1000
    assert m["num_est_poses"] == 60
    with pytest.raises(ValueError, match="no pose pairs"):
        write_tum_trajectory(tmp_path / "late.txt", stamps + 100, G)
        evaluate_tum_files(tmp_path / "late.txt", tmp_path / "gt.txt")
    (tmp_path / "bad.txt").write_text("# header\n1.0 2.0 3.0\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        read_tum_trajectory(tmp_path / "bad.txt")


def test_plot_trajectories(tmp_path):
    G = _trajectory(n=50)
    plot_trajectories(tmp_path / "a.png", G, G, title="x")
    plot_trajectories(tmp_path / "b.png", None, G, plane="xz")
    for name in ("a.png", "b.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mesh_distances():
    import open3d as o3d

    box = o3d.geometry.TriangleMesh.create_box(1.0, 1.0, 1.0)  # [0, 1]^3
    pts = np.array([[0.5, 0.5, 1.2], [0.5, 0.5, 0.5], [2.0, 0.5, 0.5], [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(mesh_to_mesh_distances(pts, box), [0.2, 0.5, 1.0, 0.0], atol=1e-6)
    v, t = np.asarray(box.vertices), np.asarray(box.triangles)
    np.testing.assert_allclose(mesh_to_mesh_distances(pts, (v, t)), [0.2, 0.5, 1.0, 0.0], atol=1e-6)
    acc = mesh_accuracy(box, box, num_samples=2000)
    assert acc["accuracy_cm"] == pytest.approx(0, abs=1e-4) and acc["fscore_5cm"] == 1.0
    shifted = o3d.geometry.TriangleMesh(box).translate((0.0, 0.0, 0.02))
    acc = mesh_accuracy(shifted, box, num_samples=2000)
    assert 0.5 < acc["accuracy_cm"] <= 2.0 + 1e-4
