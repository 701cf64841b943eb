"""Command line: ``neural-mapping run DATASET --out DIR`` and ``neural-mapping eval EST GT --out DIR``.

``python -m neural_mapping.cli ...`` works the same.  Map options come from the typed
config (:mod:`neural_mapping.config`): one ``--flag`` per field, the same names as the
ROS parameters and the YAML keys.  Precedence: defaults < ``--config YAML`` < flags.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

from .config import MappingConfig, add_config_arguments, config_from_args
from .datasets import SUPPORTED_LAYOUTS, DatasetError

RUN_EPILOG = f"""\
dataset formats (detected automatically):
{SUPPORTED_LAYOUTS}

outputs in --out: mesh.ply, poses.txt (TUM: t tx ty tz qx qy qz qw, camera-to-world),
config.yaml (effective config, reusable with --config), metrics.json (speed, map size,
ATE/RPE when the dataset has ground truth), trajectory.png, view_color.png /
view_shaded.png (bird's-eye raycast of the map), view_last_color.png /
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neural-mapping",
        description="Dense RGB-D mapping (torch voxel-block TSDF), offline on datasets.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="{run,eval}")
    sub.required = True

    r = sub.add_parser("run", help="map a dataset and write mesh, poses, metrics and pictures",
                       description="Map DATASET and write the results to --out.",
                       epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("dataset", metavar="DATASET",
                   help="dataset folder (7-Scenes or TUM RGB-D layout) or the word 'synthetic'")
    r.add_argument("--out", "-o", metavar="DIR", default=None,
                   help="output folder (default: output_dir of the config, 'output')")
    r.add_argument("--config", metavar="YAML", default=None,
                   help="config file (neural_mapping: ros__parameters: {...} or flat keys); "
                        "flags given on the command line override it")
    io = r.add_argument_group("dataset options")
    io.add_argument("--undistort", type=_str2bool, default=None, metavar="{true,false}",
                    help="TUM only: undistort depth and colour with the Freiburg plumb_bob "
                         "coefficients (default: true)")
    io.add_argument("--synthetic-frames", type=int, default=None, metavar="N",
                    help="synthetic only: frames in the generated orbit (default: 120)")
    io.add_argument("--synthetic-size", default=None, metavar="WxH",
                    help="synthetic only: image size (default: 640x480)")
    io.add_argument("--synthetic-noise-m", type=float, default=None, metavar="SIGMA",
                    help="synthetic only: depth noise std at 1 m, grows with z^2 (default: 0)")
    misc = r.add_argument_group("run options")
    misc.add_argument("--no-progress", action="store_true", help="no progress bar")
    misc.add_argument("--no-views", action="store_true", help="do not render the view_*.png pictures")
    add_config_arguments(r, skip=("output_dir",))

    e = sub.add_parser("eval", help="ATE/RPE of an estimated TUM trajectory against ground truth",
                       description="Evaluate trajectory EST against ground truth GT (TUM files).",
                       epilog=EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("est", metavar="EST", help="estimated trajectory (TUM format)")
    e.add_argument("gt", metavar="GT", help="ground-truth trajectory (TUM format)")
    e.add_argument("--out", "-o", metavar="DIR", required=True, help="output folder")
    e.add_argument("--max-diff-s", type=float, default=0.02, metavar="S",
                   help="largest timestamp difference of a pose pair (default: 0.02 s)")
    return p


def _dataset_kwargs(args) -> dict:
    name = str(args.dataset).strip().lower()
    kw = {}
    if name == "synthetic":
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


def _fmt(v, unit="", digits=2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}{unit}"


def cmd_run(args) -> int:
    from .pipeline import run

    try:
        # offline runs are deterministic by default: every frame tracked, then integrated
        base = MappingConfig.from_flat({"sync_mode": "strict"})
        if args.config:
            base = MappingConfig.from_yaml(args.config, base)
        cfg = config_from_args(args, base)
        if args.out:
            cfg = MappingConfig.from_flat({"output_dir": args.out}, cfg)
    except (ValueError, OSError) as e:
        print(f"neural-mapping run: configuration error: {e}", file=sys.stderr)
        return 2
    try:
        res = run(args.dataset, cfg, progress=not args.no_progress,
                  dataset_kwargs=_dataset_kwargs(args), render_views=not args.no_views)
    except DatasetError as e:
        print(f"neural-mapping run: {e}", file=sys.stderr)
        return 2
    except NotImplementedError as e:
        print(f"neural-mapping run: {e}", file=sys.stderr)
        return 2
    m = res.metrics
    print(f"dataset        {m['dataset']}: {m['frames']} frames integrated "
          f"({m['frames_skipped_no_pose']} without pose skipped)")
    print(f"speed          {_fmt(m['fps'], ' frames/s', 1)} end to end, integration "
          f"{_fmt(m['integrate_ms_mean'], ' ms', 1)}/frame on {m['device']}")
    print(f"map            {m['blocks']} blocks of {cfg.grid.block_size_vox}^3 voxels at "
          f"{m['voxel_size_m'] * 100:g} cm, {_fmt(m['memory_mb'], ' MB', 1)}; mesh "
          f"{m['mesh_vertices']} vertices, {m['mesh_triangles']} triangles")
    if "ate_rmse_cm" in m:
        print(f"trajectory     ATE RMSE {_fmt(m['ate_rmse_cm'], ' cm')} (SE3-aligned), "
              f"{_fmt(m['ate_first_frame_rmse_cm'], ' cm')} (first frame); RPE "
              f"{_fmt(m['rpe_trans_rmse_cm'], ' cm')} / {_fmt(m['rpe_rot_rmse_deg'], ' deg')} per frame "
              f"(pose source: {m['pose_source']})")
    print(f"outputs        {res.out_dir}/: " + ", ".join(sorted(p.name for p in res.files.values())))
    return 0


def cmd_eval(args) -> int:
    from .evaluation import evaluate_tum_files, write_evaluation

    try:
        ev = evaluate_tum_files(args.est, args.gt, max_diff_s=args.max_diff_s)
    except (ValueError, OSError) as e:
        print(f"neural-mapping eval: {e}", file=sys.stderr)
        return 2
    m = write_evaluation(args.out, ev, name=Path(args.est).name,
                         extra={"est_file": str(args.est), "gt_file": str(args.gt)})
    print(f"{m['num_poses']} pose pairs ({m['num_est_poses']} estimated, {m['num_gt_poses']} ground truth)")
    print(f"ATE RMSE {_fmt(m['ate_rmse_cm'], ' cm')} (SE3-aligned), mean {_fmt(m['ate_mean_cm'], ' cm')}, "
          f"max {_fmt(m['ate_max_cm'], ' cm')}; first-frame aligned {_fmt(m['ate_first_frame_rmse_cm'], ' cm')}")
    print(f"RPE RMSE {_fmt(m['rpe_trans_rmse_cm'], ' cm')}, {_fmt(m['rpe_rot_rmse_deg'], ' deg')} per pose")
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'trajectory.png'}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    return cmd_eval(args)


if __name__ == "__main__":
    sys.exit(main())
