"""The ``neural`` backend's config section (``backend: neural``)."""

from __future__ import annotations

from dataclasses import dataclass

from neural_mapping.config.fields import param


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
        10, "Mapping steps during which the decoders are trained; after that they are frozen "
        "(NICE-SLAM freezes its pretrained ones): features optimised under one decoder decode "
        "differently under a later one, so a decoder that keeps changing leaves the map "
        "inconsistent (measured: completion ratio 0.44 -> 0.40 once all blocks were re-decoded "
        "with the final decoder). 0: never trained (the zero-initialised output layers then "
        "keep the residual at 0).", lo=0, hi=1_000_000_000)
    neural_weight_sdf: float = param(
        0.1, "Loss weight: SDF inside the truncation band. Small with the prior (it already holds "
        "the multi-view average of these projective targets; one view's targets measured as "
        "noise); ~10 without it (ESLAM's ratio).", lo=0.0, hi=1e6)
    neural_weight_free: float = param(0.1, "Loss weight: free space (SDF = 1) in front of the "
                                      "band (~1 without the prior).", lo=0.0, hi=1e6)
    neural_weight_depth: float = param(1.0, "Loss weight: rendered depth (per truncation; ~0.1 "
                                       "without the prior).", lo=0.0, hi=1e6)
    neural_weight_color: float = param(0.5, "Loss weight: rendered color (0..1).", lo=0.0, hi=1e6)
    neural_depth_from_crossing: bool = param(
        False, "Depth loss on the ray's interpolated first zero crossing (false: on the "
        "volume-rendered depth, the bell-weighted mean of the samples).")
    neural_weight_residual: float = param(
        10.0, "With the prior: loss weight of the squared SDF residual (truncation units) at the "
        "samples, which keeps the correction of the prior at 0 where the data does not ask for "
        "one.", lo=0.0, hi=1e6)
    neural_field_max_blocks: int = param(
        256, "Each integration re-decodes at most this many stale blocks of the field (the "
        "current frame's first; 0 = all): the others keep their last decoded residual on the "
        "current prior until their turn (readers never decode: they see the field as of the "
        "last integration).",
        unit="blocks", lo=0, hi=100_000_000)
