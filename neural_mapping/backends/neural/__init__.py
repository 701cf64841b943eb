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
  trained online from a seeded initialisation (no pretrained weights exist here, and online
  training converges within the first frames because the SDF-band and free-space losses
  supervise the SDF directly); frozen after ``neural_decoder_steps`` mapping steps.
* **Mapping step** (:mod:`.model`, :mod:`.rendering`, :mod:`.keyframes`): rays from the
  current frame and a keyframe window chosen by block overlap, stratified + near-surface
  samples, samples outside allocated blocks ignored, SDF volume rendering with bell-shaped
  weights, SDF-band + free-space + depth + color losses, Adam on the features of the
  blocks the current frame touched only (local updates: every other block is read detached
  and cannot change) plus the decoders.  Seeded: the same frames give the same map.
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
