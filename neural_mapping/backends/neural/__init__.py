"""``backend: neural`` -- NICE-SLAM-style feature grids on the sparse block grid, decoded by
small MLPs, optimised online with local updates, on CPU and CUDA (pure torch).

Design (measured choices are in ``bench/bench_neural.py`` and the README)

* **Geometric prior (H2-Mapping).**  The backend holds a TSDF map of the same frames.  It
  allocates blocks as the camera sees new space (no bounding box), gives the initial SDF
  and color, and its weight says which voxels are observed.  With ``neural_sdf_prior`` the
  decoded SDF/color is the prior plus a learned residual, so a new map is the TSDF exactly
  and the optimiser only corrects it; without it the decoders alone give the SDF.
* **Feature grids** (:mod:`.features`): three levels (coarse + fine geometry, color), each a
  :class:`~neural_mapping.grid.voxel_grid.VoxelBlockGrid` with the prior's block size, so
  the same block coordinates; features at vertices every ``neural_*_spacing_vox`` voxels,
  ``neural_channels`` channels, trilinear interpolation in torch.
* **Decoders** (:mod:`.decoders`): ESLAM/Co-SLAM size (2 hidden layers of ``neural_hidden``),
  trained online from a seeded initialisation (no pretrained weights exist here; the
  SDF-band and free-space losses supervise the SDF directly, so a scene converges within a
  few frames, see ``test_tiny_scene_converges_without_the_prior``), then frozen after
  ``neural_decoder_steps`` mapping steps, as NICE-SLAM freezes its pretrained ones: features
  optimised under one decoder decode differently under a later one.  Rays replayed from
  keyframes outside the window keep decoders that stay trainable consistent with the rest of
  the map (``test_neural_forgetting``: A's held-out L1 x2.1 without replay, x0.91 with).
* **Mapping step** (:mod:`.model`, :mod:`.rendering`, :mod:`.keyframes`): rays from the
  current frame and a keyframe window chosen by block overlap, stratified + near-surface
  samples, samples outside allocated blocks ignored, SDF volume rendering with bell-shaped
  weights, SDF-band + free-space + depth + color losses (+ a small penalty on the residual),
  Adam (moments stored per vertex) on the features of the blocks the current frame touched
  only (local updates: every other block is read detached and cannot change) plus the
  decoders while they train.  Seeded: the same frames give the same map.  With the prior,
  the loss weights are depth-dominant: the SDF-band targets of single views, on top of a
  prior that already averages them over views, measured as noise.
* **Measured** (``bench/bench_neural.py``, CPU, 2 cm): the map matches the TSDF's quality
  (synthetic room: accuracy within 1.2x, completion ratio equal, held-out depth L1 within a
  few per cent; 7-Scenes held-out L1 equal) without beating it on these sequences, at
  4-7 frames/s end to end against the TSDF's 50-100.
* **iMAP mode** (``neural_mode: imap``): one global MLP on a positional encoding is the
  whole map (the prior only allocates and marks observed voxels), trained with the same
  losses on the same rays: it forgets what it no longer sees.
* **Products**: the field (SDF in truncation units + color) is decoded at every voxel
  centre of the allocated blocks into a cache (:mod:`.backend`); meshing, occupancy and the
  shared ray caster (so the ICP tracker, which is the tracking used with this backend) read
  it as a :class:`~neural_mapping.grid.field.VoxelField`.
"""

from neural_mapping.backends.neural.backend import Backend

__all__ = ["Backend"]
