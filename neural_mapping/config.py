"""Typed configuration: the single source of truth.

Every tunable is a field of one of the section dataclasses below, declared with
:func:`param` (default, description, units, range or choices).  Field names are
unique across sections and carry their unit (``voxel_size_m``), so the same flat
name is used everywhere a user meets it:

* ROS parameters (``voxel_size_m``), generated with descriptors by ``neural_mapping.ros``;
* ``config/*.yaml`` (``neural_mapping: ros__parameters: {voxel_size_m: ...}``);
* CLI flags (``--voxel-size-m``).

``test/test_config.py`` checks that these views agree.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Type

import yaml


def param(default: Any, help: str, *, unit: str = "", lo: Optional[float] = None,
          hi: Optional[float] = None, choices: Optional[Sequence[Any]] = None):
    """Declare a config field with its documentation and valid range."""
    return field(default=default, metadata={
        "help": help, "unit": unit, "lo": lo, "hi": hi,
        "choices": tuple(choices) if choices is not None else None})


@dataclass
class GridConfig:
    voxel_size_m: float = param(0.02, "Edge length of one voxel.", unit="m", lo=0.001, hi=1.0)
    block_size_vox: int = param(8, "Voxels per block edge (blocks are block_size_vox^3 voxels).",
                                unit="voxels", lo=2, hi=32)
    initial_capacity_blocks: int = param(
        4096, "Blocks allocated up front in the block pool; the pool doubles when full.",
        unit="blocks", lo=16, hi=10_000_000)
    max_capacity_blocks: int = param(
        300_000, "Upper bound on allocated blocks (bounded memory); integration raises a clear "
        "error past it.", unit="blocks", lo=16, hi=50_000_000)
    device: str = param("auto", "Torch device for the map: auto (cuda if available), cpu, cuda, cuda:N.")


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
    tracking_point_stride: int = param(1, "Use every n-th valid pixel of the finest pyramid level "
                                       "(its iterations dominate the tracking time).", lo=1, hi=64)
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
        True, "Weight residuals by the depth noise model (sigma ~ z^2).")
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
        1e-4, "Smallest / largest eigenvalue of the (depth-normalised) 6x6 ICP system below this: "
        "the frame fails (degenerate, e.g. a flat wall).", lo=0.0, hi=1.0)
    tracking_max_motion_m: float = param(0.30, "Estimate further than this from the initial guess: "
                                         "the frame fails (large_motion).", unit="m", lo=0.001, hi=100.0)
    refine_time_constant_s: float = param(
        1.0, "external+refine: the map->odom correction follows the tracker's estimate with this "
        "time constant (a complementary filter: the external odometry is trusted over shorter "
        "times, the alignment to the map over longer ones). 0 = take every tracked pose as is.",
        unit="s", lo=0.0, hi=3600.0)
    tracking_max_motion_deg: float = param(30.0, "Rotation from the initial guess above this: the "
                                           "frame fails (large_motion).", unit="deg", lo=0.1, hi=180.0)
    tracking_model_margin_trunc: float = param(
        1.5, "The model view after a fused frame marches each ray only within this many truncation "
        "distances of that frame's depths around its pixel (0 = march the whole depth range).",
        unit="truncation distances", lo=0.0, hi=100.0)


@dataclass
class OccupancyConfig:
    """Planner outputs derived from the TSDF (``neural_mapping/occupancy.py``).

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


@dataclass
class NeuralConfig:
    """The neural backend (``backend: neural``, :mod:`neural_mapping.backends.neural`): feature
    grids on the TSDF prior's blocks decoded by small MLPs, optimised online in ``integrate``.
    Defaults are sized for a CPU mapping thread."""

    neural_mode: str = param(
        "grid", "grid: feature grids on the allocated blocks, only the current frame's blocks are "
        "optimised (local updates). imap: one global MLP with positional encoding is the whole map "
        "(iMAP; forgets what it no longer sees).", choices=("grid", "imap"))
    neural_sdf_prior: bool = param(
        True, "grid mode: the decoded SDF/color is the TSDF prior plus a learned residual "
        "(H2-Mapping); false: the decoders alone give the SDF/color (the prior still allocates "
        "blocks and says which voxels are observed).")
    neural_coarse_spacing_vox: int = param(4, "Feature vertex spacing of the coarse geometry level "
                                           "(a divisor of block_size_vox).", unit="voxels", lo=1, hi=32)
    neural_fine_spacing_vox: int = param(2, "Feature vertex spacing of the fine geometry level "
                                         "(a divisor of block_size_vox).", unit="voxels", lo=1, hi=32)
    neural_color_spacing_vox: int = param(4, "Feature vertex spacing of the color level (a divisor "
                                          "of block_size_vox).", unit="voxels", lo=1, hi=32)
    neural_channels: int = param(8, "Feature channels per level.", lo=1, hi=128)
    neural_hidden: int = param(32, "Width of the two hidden layers of the decoders (iMAP mode: "
                               "twice this, three layers).", lo=4, hi=1024)
    neural_imap_frequencies: int = param(6, "iMAP mode: octaves of the positional encoding.",
                                         lo=1, hi=16)
    neural_map_every_frames: int = param(2, "Run a mapping step (optimisation) every n-th "
                                         "integrated frame; every frame feeds the TSDF prior.",
                                         unit="frames", lo=1, hi=1000)
    neural_iterations: int = param(4, "Optimiser iterations per mapping step.", lo=0, hi=10000)
    neural_rays: int = param(1024, "Rays (pixels) per iteration, drawn from the current frame and "
                             "the keyframe window.", lo=16, hi=1_000_000)
    neural_current_fraction: float = param(0.5, "Share of the rays drawn from the current frame "
                                           "(the rest from the keyframe window).", lo=0.0, hi=1.0)
    neural_keyframe_every_frames: int = param(5, "Every n-th integrated frame becomes a keyframe.",
                                              unit="frames", lo=1, hi=10000)
    neural_max_keyframes: int = param(200, "Keyframes kept (oldest dropped first).", lo=1,
                                      hi=100000)
    neural_keyframe_rays: int = param(4096, "Rays stored per keyframe (valid pixels drawn at random).",
                                      lo=16, hi=1_000_000)
    neural_window_keyframes: int = param(4, "Keyframes in the window: those sharing the most blocks "
                                         "with the current frame.", lo=0, hi=1000)
    neural_replay_fraction: float = param(
        0.25, "Share of the rays replayed from keyframes outside the window (drawn at random): they "
        "keep the shared decoders consistent with the parts of the map the camera left (Co-SLAM's "
        "global replay; only the decoders and the current frame's features are optimised).",
        lo=0.0, hi=1.0)
    neural_replay_keyframes: int = param(8, "Keyframes the replayed rays are drawn from per mapping "
                                         "step.", lo=0, hi=100000)
    neural_samples_uniform: int = param(8, "Stratified samples per ray between depth_min_m and "
                                        "the surface + truncation.", lo=0, hi=1024)
    neural_samples_surface: int = param(8, "Samples per ray within the truncation band around "
                                        "the measured depth.", lo=1, hi=1024)
    neural_sharpness: float = param(8.0, "Volume rendering weight of a sample: sigmoid(k s) "
                                    "sigmoid(-k s) with s the SDF in truncation units.", lo=0.1,
                                    hi=1000.0)
    neural_lr_features: float = param(0.01, "Adam learning rate of the features.", lo=0.0, hi=10.0)
    neural_lr_decoders: float = param(0.005, "Adam learning rate of the decoders.", lo=0.0,
                                      hi=10.0)
    neural_decoder_steps: int = param(
        100000, "Mapping steps during which the decoders are trained; after that they are frozen "
        "(0: never trained, the seeded initialisation stays).", lo=0, hi=1_000_000_000)
    neural_weight_sdf: float = param(
        0.1, "Loss weight: SDF inside the truncation band. Small with the prior (it already holds "
        "the multi-view average of these projective targets; one view's targets measured as "
        "noise); ~10 without it (ESLAM's ratio).", lo=0.0, hi=1e6)
    neural_weight_free: float = param(0.1, "Loss weight: free space (SDF = 1) in front of the "
                                      "band (~1 without the prior).", lo=0.0, hi=1e6)
    neural_weight_depth: float = param(1.0, "Loss weight: rendered depth (per truncation; ~0.1 "
                                       "without the prior).", lo=0.0, hi=1e6)
    neural_weight_color: float = param(0.5, "Loss weight: rendered color (0..1).", lo=0.0, hi=1e6)
    neural_field_max_blocks: int = param(
        256, "Each integration re-decodes at most this many stale blocks of the field (the "
        "current frame's first; 0 = all): the others keep their last decoded residual on the "
        "current prior until their turn. A copy (snapshot, save) decodes every stale block.",
        unit="blocks", lo=0, hi=100_000_000)


SECTIONS: Tuple[Type, ...] = (GridConfig, IntegrationConfig, SystemConfig, TrackingConfig, RunConfig,
                               OccupancyConfig, NeuralConfig)


@dataclass
class MappingConfig:
    grid: GridConfig = field(default_factory=GridConfig)
    integration: IntegrationConfig = field(default_factory=IntegrationConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    occupancy: OccupancyConfig = field(default_factory=OccupancyConfig)
    neural: NeuralConfig = field(default_factory=NeuralConfig)

    # ---- views -------------------------------------------------------------------------
    def sections(self) -> Iterator[Any]:
        for f in dataclasses.fields(self):
            yield getattr(self, f.name)

    def to_flat(self) -> Dict[str, Any]:
        """``{leaf_name: value}`` over all sections (leaf names are unique)."""
        out: Dict[str, Any] = {}
        for sec in self.sections():
            for f in dataclasses.fields(sec):
                out[f.name] = getattr(sec, f.name)
        return out

    def to_yaml_dict(self) -> Dict[str, Any]:
        return {"neural_mapping": {"ros__parameters": self.to_flat()}}

    def dump_yaml(self, path) -> None:
        with open(path, "w") as fh:
            yaml.safe_dump(self.to_yaml_dict(), fh, sort_keys=False)

    @classmethod
    def from_flat(cls, values: Dict[str, Any], base: Optional["MappingConfig"] = None) -> "MappingConfig":
        """Overlay ``{leaf_name: value}`` on ``base`` (defaults), validating every value."""
        cfg = dataclasses.replace(base) if base is not None else cls()
        cfg = cls(**{f.name: dataclasses.replace(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)})
        index = {spec.name: (sec, spec) for sec, spec in cfg._leaves()}
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known keys: {sorted(index)}")
        for name, value in values.items():
            sec, spec = index[name]
            setattr(sec, name, coerce(spec, value))
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path, base: Optional["MappingConfig"] = None) -> "MappingConfig":
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
        if "neural_mapping" in data:
            data = data["neural_mapping"]
        if "ros__parameters" in data:
            data = data["ros__parameters"]
        return cls.from_flat(data, base)

    def _leaves(self) -> Iterator[Tuple[Any, dataclasses.Field]]:
        for sec in self.sections():
            for f in dataclasses.fields(sec):
                yield sec, f

    def validate(self) -> None:
        for sec, f in self._leaves():
            check_value(f, getattr(sec, f.name))
        i = self.integration
        if i.depth_min_m >= i.depth_max_m:
            raise ValueError(f"depth_min_m ({i.depth_min_m}) must be < depth_max_m ({i.depth_max_m})")
        if self.grid.initial_capacity_blocks > self.grid.max_capacity_blocks:
            raise ValueError("initial_capacity_blocks must be <= max_capacity_blocks")
        o = self.occupancy
        if o.occupancy_min_z_m >= o.occupancy_max_z_m:
            raise ValueError(f"occupancy_min_z_m ({o.occupancy_min_z_m}) must be < "
                             f"occupancy_max_z_m ({o.occupancy_max_z_m})")
        if o.costmap_inscribed_radius_m > o.costmap_inflation_radius_m > 0:
            raise ValueError("costmap_inscribed_radius_m must be <= costmap_inflation_radius_m")
        if o.map_up_source == "vector" and o.map_up_x ** 2 + o.map_up_y ** 2 + o.map_up_z ** 2 < 1e-12:
            raise ValueError("map_up_x/y/z must not all be 0 with map_up_source=vector")

    @property
    def truncation_m(self) -> float:
        return self.integration.truncation_vox * self.grid.voxel_size_m


def leaf_fields() -> List[dataclasses.Field]:
    """All config fields, in declaration order."""
    return [f for sec in SECTIONS for f in dataclasses.fields(sec)]


def _type_of(f: dataclasses.Field) -> type:
    t = f.type if isinstance(f.type, type) else {"float": float, "int": int, "bool": bool,
                                                 "str": str}[str(f.type)]
    return t


def coerce(f: dataclasses.Field, value: Any) -> Any:
    t = _type_of(f)
    if t is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{f.name}: expected a boolean, got {value!r}")
        if isinstance(value, (bool, int)):
            return bool(value)
        raise ValueError(f"{f.name}: expected a boolean, got {value!r}")
    if t is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{f.name}: expected an integer, got {value!r}")
        return int(value)
    if t is float:
        if isinstance(value, bool):
            raise ValueError(f"{f.name}: expected a number, got {value!r}")
        return float(value)
    return str(value)


def check_value(f: dataclasses.Field, value: Any) -> None:
    md = f.metadata
    unit = f" {md['unit']}" if md.get("unit") else ""
    if md.get("choices") is not None and value not in md["choices"]:
        raise ValueError(f"{f.name}={value!r} is not one of {list(md['choices'])}")
    if md.get("lo") is not None and value < md["lo"]:
        raise ValueError(f"{f.name}={value}{unit} is below its minimum {md['lo']}{unit}")
    if md.get("hi") is not None and value > md["hi"]:
        raise ValueError(f"{f.name}={value}{unit} is above its maximum {md['hi']}{unit}")
    if isinstance(value, float) and value != value:
        raise ValueError(f"{f.name} is NaN")


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """Add one ``--flag`` per config field (default: unset, i.e. keep the config's value)."""
    group = parser.add_argument_group("map configuration (defaults shown; also settable in --config YAML)")
    for f in leaf_fields():
        if f.name in skip:
            continue
        md = f.metadata
        t = _type_of(f)
        extra = []
        if md.get("unit"):
            extra.append(f"unit: {md['unit']}")
        if md.get("lo") is not None or md.get("hi") is not None:
            extra.append(f"range: [{md.get('lo')}, {md.get('hi')}]")
        helptext = f"{md['help']} (default: {f.default}" + ("; " + "; ".join(extra) if extra else "") + ")"
        kwargs: Dict[str, Any] = dict(dest=f.name, default=None, help=helptext)
        if md.get("choices") is not None:
            kwargs["choices"] = list(md["choices"])
        if t is bool:
            kwargs["type"] = lambda s, _f=f: coerce(_f, s)
            kwargs["metavar"] = "{true,false}"
        else:
            kwargs["type"] = t
        group.add_argument(flag_name(f.name), **kwargs)


def config_from_args(args: argparse.Namespace, base: Optional[MappingConfig] = None) -> MappingConfig:
    values = {f.name: getattr(args, f.name) for f in leaf_fields()
              if getattr(args, f.name, None) is not None}
    return MappingConfig.from_flat(values, base)
