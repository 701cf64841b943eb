"""Command line and offline pipeline, end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest

from neural_mapping.app.cli import build_parser, main
from neural_mapping.config import MappingConfig, flag_name, leaf_fields
from neural_mapping.datasets import SUPPORTED_LAYOUTS, SyntheticRoom
from neural_mapping.io.images import read_tum_trajectory, write_tum_trajectory

RUN_OUTPUTS = ("mesh.ply", "poses.txt", "config.yaml", "metrics.json", "trajectory.png",
               "view_color.png", "view_shaded.png", "view_last_color.png", "view_last_shaded.png",
               "occupancy.pgm", "occupancy.yaml", "occupancy.png")


def _help(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        main(list(argv) + ["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_run_help_documents_every_option(capsys):
    text = _help(capsys, "run")
    for f in leaf_fields():
        if f.name != "output_dir":  # --out sets it
            assert flag_name(f.name) in text, f.name
    for flag in ("--out", "--config", "--max-frames", "--voxel-size-m", "--pose-source", "--backend",
                 "--undistort", "--no-progress"):
        assert flag in text
    assert "camera-intrinsics.txt" in text and "rgb.txt" in text and "synthetic" in text
    text = _help(capsys, "eval")
    assert "EST" in text and "GT" in text and "--out" in text and "--max-diff-s" in text


def test_parser_has_no_duplicate_options():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        flags = [s for a in p._actions for s in a.option_strings]
        assert len(flags) == len(set(flags)), name


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "neural_mapping.app.cli", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "run" in out.stdout and "eval" in out.stdout


def test_run_rejects_unknown_folder_and_bad_config(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    assert main(["run", str(tmp_path / "data"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot tell the layout" in err and SUPPORTED_LAYOUTS.splitlines()[0] in err
    assert main(["run", "synthetic", "--out", str(tmp_path / "o"), "--depth-min-m", "5"]) == 2
    assert "depth_min_m" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "synthetic", "--pose-source", "magic"])


def test_run_track_mode_on_synthetic(tmp_path, capsys):
    out = tmp_path / "track"
    rc = main(["run", "synthetic", "--out", str(out), "--pose-source", "track", "--max-frames", "12",
               "--synthetic-frames", "360", "--synthetic-size", "320x240", "--voxel-size-m", "0.04",
               "--device", "cpu", "--no-progress", "--no-views"])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["pose_source"] == "track" and m["sync_mode"] == "strict"
    assert m["frames"] == 12 and m["tracking_failures"] == 0 and m["relocalisations"] == 0
    assert "0 frames failed (not integrated), 0 relocalised" in capsys.readouterr().out
    assert m["ate_rmse_cm"] < 2.0, m
    assert len((out / "poses.txt").read_text().strip().splitlines()) >= 12


def test_run_seven_scenes_end_to_end(redkitchen, tmp_path, capsys):
    out = tmp_path / "kitchen"
    (tmp_path / "base.yaml").write_text(
        "neural_mapping:\n  ros__parameters:\n    voxel_size_m: 0.05\n    depth_max_m: 3.5\n")
    rc = main(["run", str(redkitchen), "--out", str(out), "--max-frames", "30", "--voxel-size-m", "0.03",
               "--config", str(tmp_path / "base.yaml"), "--render-width-px", "160", "--device", "cpu",
               "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "30 frames integrated" in printed and "ATE RMSE" in printed
    for name in RUN_OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    ply = (out / "mesh.ply").read_bytes()
    assert ply.startswith(b"ply")
    # effective config: YAML value kept, flag overrides YAML
    cfg = MappingConfig.from_yaml(out / "config.yaml")
    assert cfg.grid.voxel_size_m == 0.03 and cfg.integration.depth_max_m == 3.5
    assert cfg.run.max_frames == 30 and cfg.run.output_dir == str(out)
    stamps, poses = read_tum_trajectory(out / "poses.txt")
    assert len(stamps) == 30
    np.testing.assert_allclose(stamps, np.arange(30) / 30, atol=1e-9)
    np.testing.assert_allclose(poses[7], np.loadtxt(redkitchen / "frame-000007.pose.txt"), atol=1e-3)
    m = json.loads((out / "metrics.json").read_text())
    for k in ("frames", "fps", "integrate_ms_mean", "mesh_vertices", "mesh_triangles", "voxel_size_m",
              "blocks", "memory_mb", "ate_rmse_cm", "ate_first_frame_rmse_cm", "rpe_trans_rmse_cm",
              "rpe_rot_rmse_deg"):
        assert k in m, k
    assert m["frames"] == 30 and m["mesh_triangles"] > 1000 and m["blocks"] > 0
    assert m["ate_rmse_cm"] == pytest.approx(0, abs=1e-3)  # external (GT) poses
    from PIL import Image
    im = np.asarray(Image.open(out / "view_shaded.png"))
    assert im.shape[1] == 160 and im.std() > 5  # the map is in view
    im = np.asarray(Image.open(out / "view_last_color.png"))
    assert (im.sum(axis=2) > 0).mean() > 0.3  # the last camera sees its own map
    # the Nav2 map pair loads back and agrees with the metrics
    from neural_mapping.products.occupancy import load_nav2_map
    grid = load_nav2_map(out / "occupancy.yaml")
    assert grid.resolution_m == pytest.approx(m["occupancy_resolution_m"])
    assert int((grid.data == 100).sum()) == m["occupancy_occupied_cells"] > 0


def test_pipeline_synthetic_mesh_matches_ground_truth(tmp_path):
    from neural_mapping.io.evaluation import mesh_accuracy
    from neural_mapping.app.pipeline import run

    ds = SyntheticRoom(num_frames=120, width=160, height=120, stride=8)
    cfg = MappingConfig.from_flat({"voxel_size_m": 0.04, "depth_max_m": 5.0, "device": "cpu"})
    res = run(ds, cfg, out_dir=tmp_path / "syn", progress=False, render_views=False)
    assert res.metrics["frames"] == len(ds) == 15
    assert res.poses.shape == (15, 4, 4)
    acc = mesh_accuracy(res.mesh, ds.gt_mesh(), num_samples=20000)
    assert acc["accuracy_cm"] < 1.0 and acc["precision_5cm"] > 0.9  # 4 cm voxels, thin legs/table top
    assert (tmp_path / "syn" / "mesh.ply").is_file()


def test_eval_command(tmp_path, capsys):
    rng = np.random.default_rng(1)
    t = np.linspace(0, 6, 150)
    G = np.tile(np.eye(4), (150, 1, 1))
    G[:, :3, 3] = np.stack([np.cos(t), np.sin(t), 0.2 * np.sin(2 * t)], 1)
    E = G.copy()
    E[:, :3, 3] += rng.normal(0, 0.01, (150, 3))
    write_tum_trajectory(tmp_path / "gt.txt", t, G)
    write_tum_trajectory(tmp_path / "est.txt", t, E)
    assert main(["eval", str(tmp_path / "est.txt"), str(tmp_path / "gt.txt"), "--out", str(tmp_path / "ev")]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["num_poses"] == 150 and 1.2 < m["ate_rmse_cm"] < 2.2
    assert (tmp_path / "ev" / "trajectory.png").is_file()
    assert "ATE RMSE" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "missing.txt"), str(tmp_path / "gt.txt"), "--out", str(tmp_path / "x")]) == 2


def test_pipeline_skips_frames_without_pose(tmp_path):
    from test_datasets import _make_tum

    from neural_mapping.app.pipeline import run

    root = _make_tum(tmp_path / "rgbd_dataset_freiburg3_tiny", n=4, gt_span=(0.9, 1.05), with_rgb_gap=True)
    res = run(str(root), MappingConfig.from_flat({"device": "cpu"}), out_dir=tmp_path / "o",
              progress=False, render_views=False)
    m = res.metrics
    assert (m["frames"], m["frames_total"], m["frames_skipped_no_pose"]) == (1, 3, 2)
    stamps, _ = read_tum_trajectory(tmp_path / "o" / "poses.txt")
    np.testing.assert_allclose(stamps, [1.0])


def test_birds_eye_view_sees_the_points():
    from neural_mapping.app.pictures import birds_eye_view, look_at

    T = look_at([0, 0, 2], [1, 0, 0], [0, 0, 1])
    np.testing.assert_allclose(T[:3, 2], np.array([1, 0, -2]) / np.sqrt(5))
    np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-12)
    assert T[:3, 1] @ [0, 0, 1] < 0  # image y points down in the world
    pts = np.random.default_rng(0).uniform([-2, -1, 0], [2, 1, 1], (1000, 3))
    cams = np.stack([look_at([x, -1.5, 1.5], [0, 0, 0.5], [0, 0, 1]) for x in (-1, 0, 1)])
    K, T, dmax = birds_eye_view(pts, cams, 160, 120)
    p = (np.linalg.inv(T) @ np.c_[pts, np.ones(len(pts))].T)[:3]
    u, v = K.fx * p[0] / p[2] + K.cx, K.fy * p[1] / p[2] + K.cy
    assert np.all(p[2] > 0) and p[2].max() < dmax
    assert np.mean((u >= 0) & (u < 160) & (v >= 0) & (v < 120)) > 0.97
    assert T[2, 3] > 1.0  # above the scene


def test_metrics_json_is_written_once_and_complete(tmp_path, monkeypatch):
    """metrics.json is written once, after everything is known (occupancy cells, wall time), and
    holds exactly the run's metrics; every file the run writes is named in the docs."""
    import builtins

    from neural_mapping.app.pipeline import run
    from neural_mapping.io import images

    writes = []

    def counting_open(path, mode="r", *a, **kw):
        if "w" in mode and str(path).endswith("metrics.json"):
            writes.append(str(path))
        return builtins.open(path, mode, *a, **kw)

    monkeypatch.setattr(images, "open", counting_open, raising=False)
    ds = SyntheticRoom(num_frames=60, width=64, height=48, stride=10)
    cfg = MappingConfig.from_flat({"voxel_size_m": 0.08, "depth_max_m": 5.0, "device": "cpu",
                                   "render_width_px": 48, "sync_mode": "strict"})
    res = run(ds, cfg, out_dir=tmp_path / "o", progress=False)
    assert writes == [str(tmp_path / "o" / "metrics.json")]
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m == json.loads(json.dumps(images._jsonable(res.metrics)))
    for k in ("wall_s", "occupancy_occupied_cells", "occupancy_free_cells", "occupancy_unknown_cells",
              "occupancy_resolution_m", "backend", "mesh_triangles", "blocks"):
        assert k in m, k
    assert m["occupancy_occupied_cells"] > 0 and m["wall_s"] > 0
    # the views looked from beyond the sensor range; the backend's own range is back
    assert (res.backend.depth_min_m, res.backend.depth_max_m) == (cfg.integration.depth_min_m, 5.0)
    written = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert written == sorted(RUN_OUTPUTS) == sorted(p.name for p in res.files.values())
    from neural_mapping.app import outputs, pictures
    run_help = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    for name in written:
        assert name in run_help, name
        assert name in outputs.__doc__ + pictures.__doc__, name


def _group_options(parser, command, title):
    sub = parser._subparsers._group_actions[0].choices[command]
    group = next(g for g in sub._action_groups if g.title == title)
    return [(a.option_strings, a.help, a.default) for a in group._group_actions]


def test_run_and_make_bag_share_the_dataset_options():
    p = build_parser()
    assert _group_options(p, "run", "dataset options") == _group_options(p, "make-bag", "dataset options")


def test_make_bag_frame_selection_comes_from_the_config(tmp_path, capsys):
    from neural_mapping.datasets import RosbagDataset
    from neural_mapping.app.cli import offline_config

    args = build_parser().parse_args(["make-bag", "synthetic", str(tmp_path / "b")])
    cfg = offline_config(args, "make-bag")
    default = MappingConfig()
    assert (cfg.run.max_frames, cfg.run.frame_stride) == (default.run.max_frames, default.run.frame_stride)
    common = ["--synthetic-frames", "20", "--synthetic-size", "32x24", "--no-progress", "--no-color"]
    assert main(["make-bag", "synthetic", str(tmp_path / "b"), "--max-frames", "3", "--frame-stride", "4"]
                + common) == 0, capsys.readouterr().err
    with RosbagDataset(tmp_path / "b") as ds:
        assert len(ds) == 3
        np.testing.assert_allclose(np.diff(ds.timestamps), 4 / 30, atol=1e-6)
    (tmp_path / "c.yaml").write_text("max_frames: 2\nframe_stride: 5\n")
    assert main(["make-bag", "synthetic", str(tmp_path / "c"), "--config", str(tmp_path / "c.yaml")]
                + common) == 0
    with RosbagDataset(tmp_path / "c") as ds:
        assert len(ds) == 2
        np.testing.assert_allclose(np.diff(ds.timestamps), 5 / 30, atol=1e-6)
    assert main(["make-bag", "synthetic", str(tmp_path / "d"), "--frame-stride", "0"] + common) == 2
    assert "frame_stride" in capsys.readouterr().err
