"""Command line: ``neural-mapping run DATASET --out DIR``, ``neural-mapping eval EST GT --out DIR``,
``neural-mapping make-bag DATASET OUT`` and ``neural-mapping replay BAG --out DIR``.

``python -m neural_mapping.app.cli ...`` works the same.  Map options come from the typed
config (:mod:`neural_mapping.config`): one ``--flag`` per field, the same names as the
ROS parameters and the YAML keys.  Precedence: defaults < ``--config YAML`` < flags.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

from neural_mapping.config import MappingConfig, add_config_arguments, config_from_args, leaf_fields
from neural_mapping.config.view import add_view_arguments
from neural_mapping.datasets import SUPPORTED_LAYOUTS, DatasetError
from neural_mapping.io.evaluation import evaluate_tum_files

RUN_EPILOG = f"""\
dataset formats (detected automatically):
{SUPPORTED_LAYOUTS}

outputs in --out: mesh.ply, poses.txt (TUM: t tx ty tz qx qy qz qw, camera-to-world),
config.yaml (effective config, reusable with --config), occupancy.pgm + occupancy.yaml
(2D occupancy grid, Nav2 map_server format), metrics.json (speed, map size, occupancy
cells, ATE/RPE when the dataset has ground truth), trajectory.png, occupancy.png,
view_color.png / view_shaded.png (bird's-eye rendering of the map), view_last_color.png /
view_last_shaded.png (from the last camera pose).

examples:
  neural-mapping run synthetic --out output/demo
  neural-mapping run ../shared/data/7scenes_redkitchen --out output/kitchen --max-frames 200
  neural-mapping run ../shared/data/tum_fr1_xyz --out output/tum --voxel-size-m 0.01 --depth-max-m 2.5
"""

EVAL_EPILOG = """\
EST and GT are TUM trajectory files (timestamp tx ty tz qx qy qz qw per line, camera-to-world,
'#' comments); poses are paired by nearest timestamp within --max-diff-s.  Writes
metrics.json (ate_rmse_cm after SE(3) Umeyama alignment, ate_first_frame_rmse_cm after
first-frame alignment, rpe_trans_rmse_cm, rpe_rot_rmse_deg, ...) and trajectory.png.
"""


def _str2bool(s: str) -> bool:
    low = s.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def default_of(fn, name: str):
    """The default of parameter ``name`` of ``fn`` (a function or class): the help texts and the
    few options that are not config fields quote the loaders' own defaults instead of
    restating them."""
    return inspect.signature(fn).parameters[name].default


def _add_dataset_arguments(parser) -> None:
    """Options of the dataset loaders (``run`` and ``make-bag``)."""
    from neural_mapping.datasets import SyntheticRoom, TUMRGBD

    def syn(name):
        return default_of(SyntheticRoom, name)

    io = parser.add_argument_group("dataset options")
    io.add_argument("--undistort", type=_str2bool, default=None, metavar="{true,false}",
                    help="TUM only: undistort depth and colour with the Freiburg plumb_bob "
                         f"coefficients (default: {str(default_of(TUMRGBD, 'undistort')).lower()})")
    io.add_argument("--synthetic-frames", type=int, default=None, metavar="N",
                    help=f"synthetic only: frames in the generated orbit (default: {syn('num_frames')})")
    io.add_argument("--synthetic-size", default=None, metavar="WxH",
                    help=f"synthetic only: image size (default: {syn('width')}x{syn('height')})")
    io.add_argument("--synthetic-noise-m", type=float, default=None, metavar="SIGMA",
                    help="synthetic only: depth noise std at 1 m, grows with z^2 "
                         f"(default: {syn('depth_noise_m'):g})")


def _add_mapping_arguments(parser, add_input_arguments) -> None:
    """``--out``, ``--config``, the input's own options, the run options and one flag per config
    field (``run`` and ``replay``)."""
    parser.add_argument("--out", "-o", metavar="DIR", default=None,
                        help="output folder (default: output_dir of the config, 'output')")
    parser.add_argument("--config", metavar="YAML", default=None,
                        help="config file (neural_mapping: ros__parameters: {...} or flat keys); "
                             "flags given on the command line override it")
    add_input_arguments(parser)
    misc = parser.add_argument_group("run options")
    misc.add_argument("--no-progress", action="store_true", help="no progress bar")
    misc.add_argument("--no-views", action="store_true", help="do not render the view_*.png pictures")
    add_config_arguments(parser, skip=("output_dir",))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neural-mapping",
        description="Dense RGB-D mapping (torch voxel-block TSDF), offline on datasets.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="{run,eval,make-bag,replay}")
    sub.required = True

    r = sub.add_parser("run", help="map a dataset and write mesh, poses, metrics and pictures",
                       description="Map DATASET and write the results to --out.",
                       epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("dataset", metavar="DATASET",
                   help="dataset folder (7-Scenes or TUM RGB-D layout) or the word 'synthetic'")
    _add_mapping_arguments(r, _add_dataset_arguments)
    add_view_arguments(r)

    e = sub.add_parser("eval", help="ATE/RPE of an estimated TUM trajectory against ground truth",
                       description="Evaluate trajectory EST against ground truth GT (TUM files).",
                       epilog=EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("est", metavar="EST", help="estimated trajectory (TUM format)")
    e.add_argument("gt", metavar="GT", help="ground-truth trajectory (TUM format)")
    e.add_argument("--out", "-o", metavar="DIR", required=True, help="output folder")
    max_diff_s = default_of(evaluate_tum_files, "max_diff_s")
    e.add_argument("--max-diff-s", type=float, default=max_diff_s, metavar="S",
                   help=f"largest timestamp difference of a pose pair (default: {max_diff_s:g} s)")
    _add_bag_parsers(sub)
    return p


def _dataset_kwargs(args, cfg: MappingConfig) -> dict:
    name = str(args.dataset).strip().lower()
    kw = {}
    if name == "synthetic":
        kw["seed"] = cfg.run.seed
        if args.synthetic_frames is not None:
            kw["num_frames"] = args.synthetic_frames
        if args.synthetic_size:
            try:
                w, h = (int(v) for v in args.synthetic_size.lower().split("x"))
            except ValueError:
                raise SystemExit(f"--synthetic-size: expected WxH like 320x240, got {args.synthetic_size!r}")
            kw["width"], kw["height"] = w, h
        if args.synthetic_noise_m is not None:
            kw["depth_noise_m"] = args.synthetic_noise_m
    elif args.undistort is not None:
        kw["undistort"] = args.undistort
    return kw


def fmt_value(v, unit="", digits=2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}{unit}"


def offline_config(args, command: str) -> Optional[MappingConfig]:
    """Defaults, then ``--config`` YAML, then flags, then ``--out``; None (printed) if invalid.
    Offline runs are deterministic by default (the config's ``sync_mode: strict``)."""
    try:
        base = MappingConfig()
        if args.config:
            base = MappingConfig.from_yaml(args.config, base)
        cfg = config_from_args(args, base)
        if getattr(args, "out", None):
            cfg = MappingConfig.from_flat({"output_dir": args.out}, cfg)
        return cfg
    except (ValueError, OSError) as e:
        print(f"neural-mapping {command}: configuration error: {e}", file=sys.stderr)
        return None


def cmd_run(args) -> int:
    from neural_mapping.app.pipeline import run

    cfg = offline_config(args, "run")
    if cfg is None:
        return 2
    from neural_mapping.view.session import open_cli_view
    view = open_cli_view(args, cfg)  # None without --view
    if view is False:
        return 2
    try:
        res = run(args.dataset, cfg, progress=not args.no_progress,
                  dataset_kwargs=_dataset_kwargs(args, cfg), render_views=not args.no_views, view=view)
    except (DatasetError, NotImplementedError) as e:
        print(f"neural-mapping run: {e}", file=sys.stderr)
        return 2
    except BaseException:
        if view:
            view.close()
        raise
    m = res.metrics
    print(f"dataset        {m['dataset']}: {m['frames']} frames integrated "
          f"({m['frames_skipped_no_pose']} without pose skipped)")
    print(f"speed          {fmt_value(m['fps'], ' frames/s', 1)} end to end, integration "
          f"{fmt_value(m['integrate_ms_mean'], ' ms', 1)}/frame on {m['device']}")
    print(f"map            {m['blocks']} blocks of {cfg.grid.block_size_vox}^3 voxels at "
          f"{m['voxel_size_m'] * 100:g} cm, {fmt_value(m['memory_mb'], ' MB', 1)}; mesh "
          f"{m['mesh_vertices']} vertices, {m['mesh_triangles']} triangles")
    if "ate_rmse_cm" in m:
        print(f"trajectory     ATE RMSE {fmt_value(m['ate_rmse_cm'], ' cm')} (SE3-aligned), "
              f"{fmt_value(m['ate_first_frame_rmse_cm'], ' cm')} (first frame); RPE "
              f"{fmt_value(m['rpe_trans_rmse_cm'], ' cm')} / {fmt_value(m['rpe_rot_rmse_deg'], ' deg')} per frame "
              f"(pose source: {m['pose_source']})")
    if m.get("pose_source") != "external":
        print(f"tracking       {m['tracking_failures']} frames failed (not integrated), "
              f"{m.get('relocalisations', 0)} relocalised")
    print(f"outputs        {res.out_dir}/: " + ", ".join(sorted(p.name for p in res.files.values())))
    if view:
        view.hold_and_close()  # serve until Ctrl-C or --view-hold-s
    return 0


def cmd_eval(args) -> int:
    from neural_mapping.io.evaluation import write_evaluation

    try:
        ev = evaluate_tum_files(args.est, args.gt, max_diff_s=args.max_diff_s)
    except (ValueError, OSError) as e:
        print(f"neural-mapping eval: {e}", file=sys.stderr)
        return 2
    m = write_evaluation(args.out, ev, name=Path(args.est).name,
                         extra={"est_file": str(args.est), "gt_file": str(args.gt)})
    print(f"{m['num_poses']} pose pairs ({m['num_est_poses']} estimated, {m['num_gt_poses']} ground truth)")
    print(f"ATE RMSE {fmt_value(m['ate_rmse_cm'], ' cm')} (SE3-aligned), mean {fmt_value(m['ate_mean_cm'], ' cm')}, "
          f"max {fmt_value(m['ate_max_cm'], ' cm')}; first-frame aligned {fmt_value(m['ate_first_frame_rmse_cm'], ' cm')}")
    print(f"RPE RMSE {fmt_value(m['rpe_trans_rmse_cm'], ' cm')}, {fmt_value(m['rpe_rot_rmse_deg'], ' deg')} per pose")
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'trajectory.png'}")
    return 0


# ------------------------------------------------------------------ bags
MAKE_BAG_EPILOG = """\
topics written (rosbag2, rosbags; see neural_mapping/io/bags.py):
  /camera/depth/image_raw     sensor_msgs/Image 16UC1 (mm, 0 invalid) or 32FC1 (m, NaN invalid)
  /camera/color/image_raw     sensor_msgs/Image rgb8
  /camera/depth/camera_info   sensor_msgs/CameraInfo (K, P = [K|0]; registered to colour)
  /camera/color/camera_info   sensor_msgs/CameraInfo
  /camera/pose                geometry_msgs/PoseStamped ground truth (frame map)
  /tf_static                  tf2_msgs/TFMessage camera_link -> camera_color_optical_frame
as a robot records them (--color-transport compressed --depth-transport compressedDepth --poses tf):
  /camera/color/image_raw/compressed        sensor_msgs/CompressedImage JPEG
  /camera/depth/image_raw/compressedDepth   sensor_msgs/CompressedImage 16UC1 PNG (lossless)
  /tf                         odom -> base_link per frame (no /camera/pose)
  /tf_static                  base_link -> camera_link (mount) -> camera_color_optical_frame

examples:
  neural-mapping make-bag ../shared/data/7scenes_redkitchen output/kitchen_bag --max-frames 300
  neural-mapping replay output/kitchen_bag --out output/kitchen_replay
  ros2 launch neural_mapping replay.launch.py bag:=output/kitchen_bag
"""

REPLAY_EPILOG = """\
Runs the same offline pipeline as `run` (strict sync: deterministic) straight from the
bag, without ROS. Frames follow the depth topic; colour is paired by nearest header
stamp within --sync-tolerance-s, the pose topic (PoseStamped, Odometry or
TransformStamped) is interpolated to the depth stamp, never extrapolated. Images may be
raw (sensor_msgs/Image) or compressed (CompressedImage: jpeg/png colour, compressedDepth).
A topic flag left out: the bag's only depth / colour / camera_info / pose topic (make-bag's
name when there are several); with no pose topic but /tf in the bag, the depth frame's pose
from TF in the root frame of its tree (--pose-frame to name another frame). What was chosen
is printed. A topic named explicitly must exist (the error lists the bag's topics); ''
disables the colour or pose topic. A pose topic of another frame than the depth image's
(Odometry of base_link) is composed with the camera mount: --camera-mount, else the bag's TF.

outputs in --out: as `run` (mesh.ply, poses.txt with the bag's header stamps, config.yaml,
occupancy.pgm/.yaml/.png, metrics.json, trajectory.png, view_*.png).
"""


MAKE_BAG_FIELDS = ("max_frames", "frame_stride", "seed")


def _add_bag_parsers(sub) -> None:
    b = sub.add_parser("make-bag", help="write a dataset as a rosbag2 (mcap or sqlite3)",
                       description="Convert DATASET (7-Scenes, TUM RGB-D or 'synthetic') into the "
                                   "rosbag2 folder OUT with standard camera topics.",
                       epilog=MAKE_BAG_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("dataset", metavar="DATASET",
                   help="dataset folder (7-Scenes or TUM RGB-D layout) or the word 'synthetic'")
    b.add_argument("bag_out", metavar="OUT", help="rosbag2 folder to create (must not exist)")
    b.add_argument("--format", choices=("mcap", "sqlite3"), default="mcap",
                   help="rosbag2 storage (default: mcap)")
    b.add_argument("--depth-encoding", choices=("16UC1", "32FC1"), default="16UC1",
                   help="16UC1: millimetres, 0 invalid (default); 32FC1: metres, NaN invalid (lossless)")
    b.add_argument("--time-offset-s", type=float, default=None, metavar="S",
                   help="added to the dataset timestamps (default: 1700000000 when the dataset's "
                        "clock starts near 0, as 7-Scenes and synthetic; else 0)")
    b.add_argument("--no-color", action="store_true", help="write no colour topics")
    b.add_argument("--color-transport", choices=("raw", "compressed"), default="raw",
                   help="raw: sensor_msgs/Image rgb8 (default); compressed: CompressedImage JPEG on .../compressed")
    b.add_argument("--depth-transport", choices=("raw", "compressedDepth"), default="raw",
                   help="raw: sensor_msgs/Image (default); compressedDepth: PNG (lossless) on .../compressedDepth")
    b.add_argument("--poses", choices=("topic", "tf", "odom"), default="topic",
                   help="topic: /camera/pose PoseStamped (default); tf: odom -> base_link on /tf and the "
                        "static mount base_link -> camera_link -> optical on /tf_static; odom: "
                        "nav_msgs/Odometry of base_link on /odom and the same static mount")
    b.add_argument("--jpeg-quality", type=int, default=90, metavar="Q", help="JPEG quality (default 90)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--config", metavar="YAML", default=None,
                   help="config file: its max_frames, frame_stride and seed apply; flags override it")
    _add_dataset_arguments(b)
    # frame selection and the synthetic scene's seed: the typed config's fields (defaults there)
    add_config_arguments(b, skip=[f.name for f in leaf_fields() if f.name not in MAKE_BAG_FIELDS])

    r = sub.add_parser("replay", help="map a rosbag2 offline (no ROS), same outputs as run",
                       description="Map the rosbag2 BAG (folder, .mcap or .db3) with the offline "
                                   "pipeline and write the results to --out.",
                       epilog=REPLAY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("bag", metavar="BAG", help="rosbag2 folder (metadata.yaml) or .mcap / .db3 file")
    _add_mapping_arguments(r, _add_topic_arguments)


def _add_topic_arguments(r) -> None:
    from neural_mapping.datasets import RosbagDataset
    from neural_mapping.io.bag_format import COLOR_TOPIC, DEPTH_INFO_TOPIC, DEPTH_TOPIC, POSE_TOPIC

    t = r.add_argument_group("topics")
    t.add_argument("--depth-topic", default=None, metavar="TOPIC",
                   help="depth Image / CompressedImage (default: the bag's only one, else " + DEPTH_TOPIC + ")")
    t.add_argument("--color-topic", default=None, metavar="TOPIC",
                   help="colour Image / CompressedImage, '' for none (default: the bag's only one, else " + COLOR_TOPIC + ")")
    t.add_argument("--camera-info-topic", default=None, metavar="TOPIC",
                   help="CameraInfo of the depth image (default: the one next to the depth topic, else " + DEPTH_INFO_TOPIC + ")")
    t.add_argument("--pose-topic", default=None, metavar="TOPIC",
                   help="PoseStamped / Odometry / TransformStamped, '' for none "
                        f"(default: the bag's only one, else {POSE_TOPIC}; none: TF if the bag has /tf)")
    t.add_argument("--pose-frame", default=None, metavar="FRAME",
                   help="poses from /tf + /tf_static: the depth frame in FRAME ('' = root of its tree)")
    t.add_argument("--camera-mount", default="", metavar="'X Y Z QX QY QZ QW'",
                   help="pose of the depth optical frame in the pose topic's frame (m, quaternion)")
    t.add_argument("--camera-mount-frame", default="", metavar="FRAME",
                   help="frame --camera-mount is from, checked against child_frame_id")
    for flag, name, what in (("--sync-tolerance-s", "sync_tolerance_s",
                              "largest depth-colour stamp difference of a pair"),
                             ("--max-pose-gap-s", "max_pose_gap_s",
                              "do not interpolate poses across a longer gap")):
        default = default_of(RosbagDataset, name)
        t.add_argument(flag, type=float, default=default, metavar="S", help=f"{what} (default: {default:g})")


def cmd_make_bag(args) -> int:
    from neural_mapping.io.bags import make_bag

    cfg = offline_config(args, "make-bag")
    if cfg is None:
        return 2
    try:
        s = make_bag(args.dataset, args.bag_out, storage=args.format, max_frames=cfg.run.max_frames or None,
                     stride=cfg.run.frame_stride, depth_encoding=args.depth_encoding,
                     time_offset_s=args.time_offset_s, with_color=not args.no_color,
                     dataset_kwargs=_dataset_kwargs(args, cfg), progress=not args.no_progress,
                     color_transport=args.color_transport, depth_transport=args.depth_transport,
                     poses=args.poses, jpeg_quality=args.jpeg_quality)
    except (DatasetError, ValueError, FileExistsError) as e:
        print(f"neural-mapping make-bag: {e}", file=sys.stderr)
        return 2
    print(f"wrote {s.path} ({s.storage}, {s.size_bytes / 2 ** 20:.1f} MiB): {s.frames} frames, "
          f"{s.duration_s:.2f} s from {s.start_s:.3f} s (time offset {s.time_offset_s:g} s), "
          f"{s.wall_s:.1f} s to write")
    for topic, n in s.messages.items():
        print(f"  {topic:28s} {n} messages")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "make-bag":
        return cmd_make_bag(args)
    if args.command == "replay":
        from neural_mapping.app.replay import cmd_replay
        return cmd_replay(args)
    return cmd_eval(args)


if __name__ == "__main__":
    sys.exit(main())
