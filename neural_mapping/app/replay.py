"""``neural-mapping replay BAG``: the bag's topics chosen (or named by flags), printed, and mapped
with the offline pipeline (:func:`neural_mapping.app.pipeline.run`)."""

from __future__ import annotations

import sys

from neural_mapping.app.cli import fmt_value, offline_config
from neural_mapping.datasets import DatasetError


def _open_bag(args, cfg):
    """The bag with the topics named by the flags, the others chosen (and printed)."""
    from neural_mapping.datasets.rosbag import RosbagDataset, is_rosbag
    from neural_mapping.datasets.rosbag_topics import choose_topics
    from neural_mapping.io.bags import bag_topics

    if not is_rosbag(args.bag):
        raise DatasetError(f"{args.bag} is not a rosbag2 (a folder with metadata.yaml, or a .mcap / .db3 file)")
    pose_topic = args.pose_topic if args.pose_frame is None else ""
    ch = choose_topics(bag_topics(args.bag), depth=args.depth_topic, color=args.color_topic,
                       camera_info=args.camera_info_topic, pose=pose_topic)
    from_tf = ch.pose_from_tf or args.pose_frame is not None
    if from_tf and args.pose_frame is not None:
        ch.notes.append(f"pose: TF, the depth frame in {args.pose_frame or 'the root frame'} (--pose-frame)")
    print("topics (neural-mapping replay --help: how to choose others):\n" + ch.describe())
    optional = [k for k, v in (("color", args.color_topic), ("pose", args.pose_topic)) if v is None]
    return RosbagDataset(args.bag, max_frames=cfg.run.max_frames or None, stride=cfg.run.frame_stride,
                         depth_topic=ch.depth, color_topic=ch.color, camera_info_topic=ch.camera_info,
                         pose_topic=None if from_tf else ch.pose, optional=optional,
                         sync_tolerance_s=args.sync_tolerance_s, max_pose_gap_s=args.max_pose_gap_s,
                         pose_from_tf=from_tf, pose_frame=args.pose_frame or "",
                         camera_mount=args.camera_mount, camera_mount_frame=args.camera_mount_frame)


def cmd_replay(args) -> int:
    from neural_mapping.app.pipeline import run

    cfg = offline_config(args, "replay")
    if cfg is None:
        return 2
    try:
        ds = _open_bag(args, cfg)
    except (DatasetError, ValueError) as e:
        print(f"neural-mapping replay: {e}", file=sys.stderr)
        return 2
    if cfg.run.pose_source in ("external", "external+refine") and ds.pose_topic is None:
        ds.close()
        print(f"neural-mapping replay: pose_source {cfg.run.pose_source!r} needs a pose topic and the "
              "bag has none in use (--pose-topic TOPIC, or --pose-source track)", file=sys.stderr)
        return 2
    try:
        with ds:
            res = run(ds, cfg, progress=not args.no_progress, render_views=not args.no_views)
    except DatasetError as e:
        print(f"neural-mapping replay: {e}", file=sys.stderr)
        return 2
    m = res.metrics
    print(f"bag            {ds.describe()}")
    print(f"frames         {m['frames']} integrated ({m['frames_skipped_no_pose']} without pose skipped, "
          f"{ds.dropped_no_color} depth images without colour dropped)")
    print(f"speed          {fmt_value(m['fps'], ' frames/s', 1)} end to end on {m['device']}")
    print(f"map            {m['blocks']} blocks, mesh {m['mesh_vertices']} vertices, "
          f"{m['mesh_triangles']} triangles")
    if "ate_rmse_cm" in m:
        print(f"trajectory     ATE RMSE {fmt_value(m['ate_rmse_cm'], ' cm')} against the pose topic "
              f"(pose source: {m['pose_source']})")
    print(f"outputs        {res.out_dir}/: " + ", ".join(sorted(p.name for p in res.files.values())))
    return 0
