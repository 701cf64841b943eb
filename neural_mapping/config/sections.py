"""The core's config sections (grid, integration, run, system, tracking, occupancy).

Field names are unique across all sections and carry their unit; each section is what one
part of the package takes in its constructor.
"""

from __future__ import annotations

from dataclasses import dataclass

from neural_mapping.config.fields import param


@dataclass
class GridConfig:
    voxel_size_m: float = param(0.02, "Edge length of one voxel.", unit="m", lo=0.001, hi=1.0)
    block_size_vox: int = param(8, "Voxels per block edge (blocks are block_size_vox^3 voxels).",
                                unit="voxels", lo=2, hi=32)
    initial_capacity_blocks: int = param(
        4096, "Blocks allocated up front in the block pool; the pool doubles when full.",
        unit="blocks", lo=16, hi=10_000_000)
    max_capacity_blocks: int = param(
        300_000, "Upper bound on allocated blocks (bounded memory): the mapper evicts blocks "
        "(see map_max_blocks) rather than exceed it; a backend used alone raises a clear error.",
        unit="blocks", lo=16, hi=50_000_000)
    device: str = param("auto", "Torch device for the map: auto (cuda if available), cpu, cuda, cuda:N.")
    map_radius_m: float = param(
        0.0, "Blocks farther than this from the camera are evicted (freed in the map backend; the "
        "mesh deletes them); 0 = keep everything (bounded by map_max_blocks / max_capacity_blocks).",
        unit="m", lo=0.0, hi=100_000.0)
    map_max_blocks: int = param(
        0, "Block budget: past it the blocks seen longest ago and farthest from the camera are "
        "evicted down to 90 percent of it (counted, logged once); 0 = max_capacity_blocks, where "
        "reaching the pool's end evicts the same way instead of failing.", unit="blocks", lo=0,
        hi=50_000_000)


@dataclass
class IntegrationConfig:
    depth_min_m: float = param(0.1, "Depth below this is ignored.", unit="m", lo=0.0, hi=100.0)
    depth_max_m: float = param(3.0, "Depth beyond this is ignored.", unit="m", lo=0.01, hi=100.0)
    truncation_vox: float = param(4.0, "TSDF truncation distance in voxels (the kernel takes "
                                  "metres: truncation_vox * voxel_size_m).", unit="voxels",
                                  lo=1.0, hi=64.0)
    max_weight: float = param(64.0, "Cap on the accumulated TSDF weight per voxel (a moving "
                              "average past it, so the map can adapt).", lo=1.0, hi=1e6)
    integrate_color: bool = param(True, "Fuse color with the same weights as the TSDF.")
    alloc_stride_px: int = param(4, "Every n-th pixel (both axes) of a depth image allocates the "
                                 "blocks its truncation band touches (4 as Open3D; "
                                 "bench/bench_integration.py --coverage measures what it misses).",
                                 unit="px", lo=1, hi=64)
    robust_fusion: bool = param(False, "Outlier-robust fusion (backends/tsdf/robust.py): drop "
                                "small depth segments and flying pixels before allocation, carve "
                                "free space in allocated blocks along the rays. Off by default: "
                                "bench/bench_quality.py shows where it wins and where it does not.")
    robust_jump_ratio: float = param(0.04, "Robust fusion: a depth jump to a 4-neighbour larger than "
                                     "this fraction of the depth separates segments.", unit="ratio",
                                     lo=0.001, hi=1.0)
    robust_min_segment_px: int = param(40, "Robust fusion: depth segments with fewer pixels are "
                                       "dropped (isolated pixels, outlier blobs).", unit="px",
                                       lo=1, hi=1_000_000)
    robust_carve_stride_px: int = param(16, "Robust fusion: every n-th pixel (both axes) carves free "
                                        "space in the allocated blocks its ray crosses in front of "
                                        "the truncation band (0: no carving).", unit="px", lo=0, hi=64)
    robust_carve_below_weight: float = param(4.0, "Robust fusion: only blocks whose largest voxel "
                                             "weight is below this are carved (0: all).", lo=0.0,
                                             hi=1e6)


@dataclass
class RunConfig:
    pose_source: str = param("external", "Where camera poses come from: external (dataset / pose "
                             "topic), track (frame-to-model tracking), external+refine.",
                             choices=("external", "track", "external+refine"))
    backend: str = param("tsdf", "Map representation: tsdf (projective TSDF fusion) or neural "
                         "(feature grids + MLP decoders on the TSDF prior's blocks).",
                         choices=("tsdf", "neural"))
    max_frames: int = param(0, "Stop after this many frames (0 = all).", unit="frames", lo=0)
    frame_stride: int = param(1, "Use every n-th frame of a dataset.", unit="frames", lo=1, hi=1000)
    output_dir: str = param("output", "Where outputs (mesh, poses, metrics, pictures) are written.")
    render_width_px: int = param(640, "Width of the rendered PNG views.", unit="px", lo=32, hi=4096)
    seed: int = param(0, "Seed for everything random (synthetic scene, noise).", lo=0)


@dataclass
class SystemConfig:
    sync_mode: str = param(
        "strict", "strict: every frame is tracked then mapped, in order, nothing dropped (library "
        "use, offline runs, tests; deterministic). realtime: tracking always takes the newest frame, "
        "full queues drop their oldest item (counted), latency stays bounded (live robots; the ROS "
        "node's default).", choices=("strict", "realtime"))
    trajectory_max_poses: int = param(
        10000, "realtime mode keeps the last this many poses in the trajectory (bounded memory on "
        "a live robot); strict mode keeps every pose.", unit="poses", lo=1, hi=100_000_000)
    frame_queue_size: int = param(2, "Frames waiting for the tracking thread.", unit="frames", lo=1, hi=1000)
    map_queue_size: int = param(4, "Tracked frames waiting for the mapping thread.", unit="frames",
                                lo=1, hi=1000)
    pose_buffer_s: float = param(10.0, "How much external pose history is kept for interpolation.",
                                 unit="s", lo=0.1, hi=3600.0)
    pose_wait_timeout_s: float = param(
        0.5, "A frame whose stamp is newer than the newest external pose waits this long for a newer "
        "pose (never extrapolated), then expires (counted).", unit="s", lo=0.0, hi=60.0)
    lost_after_failures: int = param(5, "Consecutive tracking failures after which the tracker "
                                     "reports 'lost'.", unit="frames", lo=1, hi=10000)
    model_lag_frames: int = param(
        1, "strict mode: frame k is tracked against the map holding frames up to k-1-lag. 0: "
        "tracking waits for the previous frame's integration (one core busy at a time); 1: "
        "tracking frame k overlaps integrating frame k-1 (both threads busy, still deterministic). "
        "realtime mode always tracks against the newest map.", unit="frames", lo=0, hi=8)
    torch_threads: int = param(
        1, "torch intra-op threads for the process (0 = torch's default, one per core). 1 lets the "
        "tracking and mapping threads each use a core without oversubscribing: with 2 threads per "
        "op on 2 cores, ops slowed ~10x whenever anything else ran (measured).", lo=0, hi=256)
    malloc_keep_freed_mb: int = param(
        64, "glibc malloc (Linux): freed heap memory up to this size is kept mapped instead of "
        "returned to the OS, and allocations up to this size (at most 32 MiB) come from the heap "
        "(M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD; process-wide), so the tensors each frame "
        "allocates reuse pages instead of page-faulting them in again; bounded, so memory stays "
        "bounded. 0: glibc's defaults.", unit="MiB", lo=0, hi=4096)
    mapping_thread_nice: int = param(
        0, "Niceness added to the mapping thread (Linux; needs no privileges; 0: the same priority "
        "as the tracking thread). > 0: when the cores are busy the tracking thread runs first, so "
        "poses keep their rate and latency and fusion takes the CPU time left (in realtime mode "
        "frames it cannot fuse in time are dropped and counted).",
        lo=0, hi=19)


@dataclass
class TrackingConfig:
    """Frame-to-model ICP (pose_source track / external+refine), see
    ``neural_mapping/tracking/tracker.py``.  The depth range is the integration's
    (``depth_min_m`` / ``depth_max_m``); the consecutive-failure count is the pose policy's
    (``lost_after_failures``).  The pyramid has three levels (about 320, 160, 80 px wide):
    iterations and association distances are one field per level."""

    tracking_width_px: int = param(320, "The frame is block-averaged to about this width before "
                                   "the pyramid (640 -> 320).", unit="px", lo=32, hi=4096)
    tracking_model_width_px: int = param(80, "Width of the raycast of the map that frames are "
                                         "aligned to (the model view).", unit="px", lo=32, hi=4096)
    tracking_point_stride: int = param(2, "Use every n-th valid pixel of the finest pyramid level "
                                       "(its iterations dominate the tracking time; 2 halves them "
                                       "at the same ATE as 1 on our real and synthetic sequences, "
                                       "bench/bench_tracking.py --point-stride).", lo=1, hi=64)
    tracking_iterations_coarse: int = param(
        6, "Gauss-Newton iterations on the coarsest pyramid level (a quarter of "
        "tracking_width_px; 0 = skip the level).", unit="iterations", lo=0, hi=100)
    tracking_iterations_mid: int = param(
        4, "Gauss-Newton iterations on the middle pyramid level (half of tracking_width_px; "
        "0 = skip the level).", unit="iterations", lo=0, hi=100)
    tracking_iterations_fine: int = param(
        3, "Gauss-Newton iterations on the finest pyramid level (tracking_width_px).",
        unit="iterations", lo=1, hi=100)
    tracking_max_dist_coarse_m: float = param(
        0.10, "Data association on the coarsest level: largest distance between a frame point "
        "and its model point.", unit="m", lo=1e-3, hi=10.0)
    tracking_max_dist_mid_m: float = param(
        0.05, "Data association on the middle level: largest point distance.", unit="m",
        lo=1e-3, hi=10.0)
    tracking_max_dist_fine_m: float = param(
        0.03, "Data association on the finest level: largest point distance.", unit="m",
        lo=1e-3, hi=10.0)
    tracking_max_angle_deg: float = param(30.0, "Largest angle between frame and model normals of "
                                          "an associated pair.", unit="deg", lo=1.0, hi=90.0)
    tracking_huber_m: float = param(0.01, "Huber threshold on point-to-plane residuals.", unit="m",
                                    lo=1e-4, hi=1.0)
    tracking_depth_noise_weighting: bool = param(
        True, "Weight residuals by the depth noise model (tracking_noise_model).")
    tracking_noise_model: str = param(
        "z2", "Depth noise model of the residual weights: z2 (sigma ~ z^2), kinect_axial (Kinect "
        "v1 axial sigma(z) of Nguyen et al. 2012), kinect (axial with its incidence-angle term, "
        "projected on the normal, plus lateral noise).", choices=("z2", "kinect_axial", "kinect"))
    tracking_symmetric: bool = param(
        False, "Symmetric point-to-plane ICP: residuals along the mean of the model and frame "
        "normals (Rusinkiewicz 2019) instead of the model normal.")
    tracking_bilateral_rel: float = param(
        0.0, "Bilateral filter of the frame's depth before the pyramid (5x5, 1.5 px, as in "
        "KinectFusion) with depth sigma this times z^2 (m); 0 = off.", lo=0.0, hi=1.0)
    tracking_eps_trans_m: float = param(
        1e-4, "A pyramid level stops when an update translates less than this (and rotates less "
        "than tracking_eps_rot_rad).", unit="m", lo=0.0, hi=1.0)
    tracking_eps_rot_rad: float = param(
        1e-4, "A pyramid level stops when an update rotates less than this (and translates less "
        "than tracking_eps_trans_m).", unit="rad", lo=0.0, hi=1.0)
    tracking_min_valid_points: int = param(
        300, "Fewer valid points on the finest level: the frame fails (no_depth); fewer valid "
        "model pixels: no_model.", unit="points", lo=6, hi=10_000_000)
    tracking_min_inliers: int = param(200, "Fewer associated pairs: the frame fails (few_inliers).",
                                      lo=6, hi=10_000_000)
    tracking_min_inlier_ratio: float = param(
        0.15, "Fewer associated pairs than this fraction of the valid points: the frame fails "
        "(few_inliers).", lo=0.0, hi=1.0)
    tracking_max_rms_m: float = param(0.02, "Robust RMS residual above this: the frame fails "
                                      "(large_residual).", unit="m", lo=1e-4, hi=1.0)
    tracking_degenerate_ratio: float = param(
        5e-4, "A direction of the (depth-normalised) 6x6 ICP system whose eigenvalue is below this "
        "fraction of the largest is weak (e.g. along a wall-floor line): the estimate keeps the "
        "initial guess (motion prior) there instead of sliding.", lo=0.0, hi=1.0)
    tracking_max_weak_directions: int = param(
        3, "More weak directions than this: the frame fails (degenerate). 3 still tracks a single "
        "flat wall (in its 3 constrained directions).", unit="directions", lo=0, hi=6)
    tracking_photometric: bool = param(
        True, "Align the weak directions by intensity against the color the map renders for the "
        "model view (per-frame affine brightness); frames without color keep the motion prior there.")
    tracking_photometric_iterations: int = param(
        10, "Gauss-Newton iterations of the photometric alignment in the weak directions.",
        unit="iterations", lo=1, hi=100)
    tracking_photometric_point_stride: int = param(
        16, "The photometric term uses every n-th valid pixel of the finest pyramid level (about one "
        "per model-view pixel; every n / tracking_point_stride-th of its points).",
        lo=1, hi=64)
    tracking_photometric_weight: float = param(
        1e-3, "Joint cost on the finest pyramid level: the photometric system (gray 0..1 residuals, "
        "6 directions, see tracking_photometric_soft_ratio) is added to the point-to-plane one with this weight per point "
        "((sigma_depth / sigma_intensity)^2; 0 = photometric only in the weak directions, after ICP).",
        unit="m^2", lo=0.0, hi=1e3)
    tracking_photometric_soft_ratio: float = param(
        3e-4, "The joint photometric term acts in the geometric system's eigen-directions with the "
        "factor 1 / (1 + eigenvalue / (this * largest eigenvalue)): ~1 where depth is weak, ~0 "
        "where it is strong (0 = all six directions at full weight).", lo=0.0, hi=1.0)
    tracking_photometric_huber: float = param(
        0.1, "Huber threshold on intensity residuals (gray 0..1).", unit="intensity", lo=1e-4, hi=1.0)
    tracking_min_inlier_ratio_vs_recent: float = param(
        0.6, "An estimate whose inlier ratio falls below this fraction of the recent tracked "
        "frames' (running mean) fails (inlier_drop: a jump ICP cannot explain; relocalisation "
        "follows).", lo=0.0, hi=1.0)
    relocalisation_keyframes: int = param(
        60, "Keyframes (model views) a frame is relocalised against after a failed track (track "
        "mode; 0 = no relocalisation): the newer half the most recent, the older half spread over "
        "the map (the one whose removal leaves the smallest gap is dropped).", unit="keyframes", lo=0, hi=10000)
    relocalisation_keyframe_every: int = param(
        5, "Every n-th new model view becomes a keyframe.", unit="views", lo=1, hi=10000)
    relocalisation_candidates: int = param(
        6, "Keyframes tried per failed frame (the newest, then the others in turn).",
        unit="candidates", lo=0, hi=10000)
    relocalisation_min_inlier_ratio: float = param(
        0.5, "A relocalisation is accepted only with at least this inlier ratio (strict test).",
        lo=0.0, hi=1.0)
    relocalisation_max_rms_m: float = param(
        0.01, "A relocalisation is accepted only below this robust RMS residual (strict test).",
        unit="m", lo=1e-4, hi=1.0)
    tracking_max_motion_m: float = param(0.30, "Estimate further than this from the initial guess: "
                                         "the frame fails (large_motion).", unit="m", lo=0.001, hi=100.0)
    refine_time_constant_s: float = param(
        1.0, "external+refine: correlation time of the ICP's error against the map (consecutive "
        "frames see the same map errors): the Kalman filter on the map->odom correction counts "
        "each ICP result as dt / this of an independent measurement, so the correction moves "
        "more smoothly (0 = every frame independent).",
        unit="s", lo=0.0, hi=3600.0)
    refine_odometry_drift_m_per_s: float = param(
        0.01, "external+refine: the odometry's translation drift, the filter's process noise (a "
        "random walk whose standard deviation grows by this much in one second; the drift of "
        "bench/bench_refine.py's simulated odometry; set your odometry's spec).",
        unit="m/s", lo=1e-6, hi=100.0)
    refine_odometry_drift_deg_per_s: float = param(
        0.5, "external+refine: the odometry's rotation drift (as refine_odometry_drift_m_per_s).",
        unit="deg/s", lo=1e-6, hi=1000.0)
    refine_icp_independent_points: float = param(
        1.0, "external+refine: an ICP result's covariance is sigma^2 (H/n)^-1 divided by this many "
        "independent points (not its n inliers: neighbouring residuals share map and calibration "
        "errors); measured by bench/bench_gt_consistency.py (2 cm: TUM 1.1, 7-Scenes 4.6; "
        "the smaller, i.e. less trust in ICP, is the default).",
        unit="points", lo=1e-6, hi=1e12)
    tracking_max_motion_deg: float = param(30.0, "Rotation from the initial guess above this: the "
                                           "frame fails (large_motion).", unit="deg", lo=0.1, hi=180.0)
    tracking_model_margin_trunc: float = param(
        1.5, "The model view after a fused frame marches each ray only within this many truncation "
        "distances of that frame's depths around its pixel (0 = march the whole depth range).",
        unit="truncation distances", lo=0.0, hi=100.0)


@dataclass
class OccupancyConfig:
    """Planner outputs derived from the map (``neural_mapping/products/occupancy/``).

    The map frame is the world frame made gravity-aligned: its z axis is ``up``
    (``map_up_source``), its x axis the world x axis projected onto the horizontal
    plane (world y where x is vertical), its origin the world origin or the first
    camera (``map_origin``).  Heights below are in that frame.
    """

    occupancy_min_z_m: float = param(0.1, "Bottom of the height band projected into the 2D "
                                     "occupancy grid (map frame, z up; above the floor).",
                                     unit="m", lo=-100.0, hi=100.0)
    occupancy_max_z_m: float = param(1.2, "Top of the height band projected into the 2D occupancy "
                                     "grid (map frame; e.g. the robot's height).", unit="m",
                                     lo=-100.0, hi=100.0)
    occupancy_resolution_m: float = param(
        0.0, "Cell size of the 2D occupancy grid, ESDF slice and costmap (0 = the voxel size). "
        "Use a multiple of the voxel size: cell borders then fall on voxel borders; otherwise "
        "voxels straddling two cells mark both (obstacles grow by up to a voxel).", unit="m",
        lo=0.0, hi=10.0)
    occupancy_min_weight: float = param(2.0, "TSDF weight (number of fused observations) from which "
                                        "a voxel counts as observed; below it the voxel is unknown.",
                                        lo=0.0, hi=1e6)
    occupied_surface_margin_vox: float = param(
        0.45, "A voxel in front of a surface is occupied when the TSDF zero crossing towards an "
        "observed neighbour lies within this many voxels of its centre (0.5: anywhere in its cube; "
        "a little less keeps a surface that only touches a face out).", unit="voxels", lo=0.0,
        hi=0.5)
    occupied_thickness_m: float = param(
        0.05, "Observed voxels behind a surface count as occupied down to this (projective) "
        "distance; deeper ones are unknown (the projective TSDF also writes negative values into "
        "free space occluded by thin objects, up to the truncation).", unit="m", lo=0.0, hi=10.0)
    occupancy_free_evidence_height_m: float = param(
        0.0, "A 2D cell is free only if a free voxel was observed within this height above "
        "occupancy_min_z_m (at least one voxel; 0 = the band's lowest voxel layer): free space "
        "seen only above an unobserved lower part (the far side of an obstacle) leaves the cell "
        "unknown.", unit="m", lo=0.0, hi=100.0)
    occupancy_grid_growth_m: float = param(
        5.0, "When the map leaves the 2D grid, the grid grows by at least this much per side (or "
        "half its size, if more), so size/origin change rarely (Nav2 resizes its costmap on every "
        "change).", unit="m", lo=0.0, hi=1000.0)
    esdf_max_distance_m: float = param(2.0, "Distances in the ESDF slice are clipped to this.",
                                       unit="m", lo=0.0, hi=1000.0)
    costmap_inscribed_radius_m: float = param(0.2, "Cells closer than this to an occupied cell get "
                                              "cost 99 (the robot's inscribed radius).", unit="m",
                                              lo=0.0, hi=100.0)
    costmap_inflation_radius_m: float = param(
        0.55, "Cells within this distance of an occupied cell get a decaying cost 98..1 (Nav2 "
        "inflation layer semantics); 0 = no inflation.", unit="m", lo=0.0, hi=100.0)
    costmap_cost_scaling_factor: float = param(
        3.0, "Exponential decay rate of the inflated cost past the inscribed radius (as Nav2's "
        "cost_scaling_factor).", unit="1/m", lo=0.0, hi=1000.0)
    map_up_source: str = param(
        "world_z", "Where the map frame's up axis comes from: world_z (the world frame is already "
        "z-up: synthetic room, TUM mocap), vector (map_up_x/y/z in world coordinates, e.g. minus "
        "7-Scenes' gravity-direction.txt), first_camera (minus the optical y axis of the first "
        "pose: the first view held level).", choices=("world_z", "vector", "first_camera"))
    map_up_x: float = param(0.0, "x of the up vector in world coordinates (map_up_source=vector).",
                            lo=-1e6, hi=1e6)
    map_up_y: float = param(0.0, "y of the up vector in world coordinates (map_up_source=vector).",
                            lo=-1e6, hi=1e6)
    map_up_z: float = param(1.0, "z of the up vector in world coordinates (map_up_source=vector).",
                            lo=-1e6, hi=1e6)
    map_origin: str = param("world", "Origin of the map frame: world (the world origin) or "
                            "first_camera (below the first camera by first_camera_height_m).",
                            choices=("world", "first_camera"))
    first_camera_height_m: float = param(
        0.0, "Height of the first camera above the floor (map_origin=first_camera puts map z = 0 "
        "this far below it).", unit="m", lo=-100.0, hi=100.0)
