"""The model view: what a frame is aligned to (vertex and normal maps of the map seen from a
reference pose), stored for one gather per ICP iteration."""

from __future__ import annotations

import numpy as np
import torch

from neural_mapping.geometry import inv_pose
from neural_mapping.grid.raycast import RaycastResult
from neural_mapping.tracking.pyramid import FAR, downsample_depth, normal_map, scaled_to, to_tensor, vertex_map
from neural_mapping.types import CameraIntrinsics


class ModelView:
    """Vertex/normal maps of the model seen from ``T_world_ref``, stored in that camera's
    frame as one ``(6, H*W)`` table (x y z nx ny nz rows) for a single gather per
    iteration.  Invalid pixels -- and always pixel 0, the sentinel that out-of-image
    projections are sent to -- hold a far point and a zero normal.  Build with
    :meth:`from_raycast` (a render of the map, :meth:`Tracker.predict
    <neural_mapping.tracking.tracker.Tracker.predict>`) or :meth:`from_depth` (a depth image:
    frame-to-frame tracking, tests)."""

    def __init__(self, points_ref: torch.Tensor, normals_ref: torch.Tensor, valid: torch.Tensor,
                 intrinsics: CameraIntrinsics, T_world_ref: np.ndarray):
        h, w = intrinsics.height, intrinsics.width
        if tuple(points_ref.shape[:2]) != (h, w):
            raise ValueError(f"model maps are {tuple(points_ref.shape[:2])} but intrinsics are {w}x{h}")
        valid = valid & torch.isfinite(points_ref).all(-1) & torch.isfinite(normals_ref).all(-1)
        valid = valid & (points_ref[..., 2] > 0)
        # Normals face the camera (raycasters differ in sign conventions).
        flip = (normals_ref * points_ref).sum(-1, keepdim=True) > 0
        normals_ref = torch.where(flip, -normals_ref, normals_ref)
        valid = valid.reshape(-1).clone()
        valid[0] = False
        table = torch.cat([points_ref.reshape(-1, 3), normals_ref.reshape(-1, 3)], 1)
        fill = torch.tensor([FAR, FAR, FAR, 0, 0, 0], dtype=table.dtype, device=table.device)
        table = torch.where(valid[:, None], table, fill)
        self.table = table.T.contiguous()  # (6, H*W)
        self.valid = valid
        self.intrinsics = intrinsics
        self.T_world_ref = np.asarray(T_world_ref, dtype=np.float64)
        self.num_valid = int(valid.sum())
        self.intensity = None  # (h, w) gray in [0, 1] of the rendered color (set_intensity)

    def set_intensity(self, gray_image: torch.Tensor) -> "ModelView":
        """Attach the gray image of the view (photometric alignment): intensity, its gradients,
        where they are usable, and the depth map for the occlusion check."""
        from neural_mapping.tracking.photometric import model_gradients
        h, w = self.intrinsics.height, self.intrinsics.width
        valid = self.valid.reshape(h, w)
        I = gray_image.to(self.table.device, torch.float32).reshape(h, w)
        self.grad_x, self.grad_y, self.intensity_ok = model_gradients(I, valid)
        self.intensity = I
        self.depth_map = torch.where(valid, self.table[2].reshape(h, w), torch.zeros_like(I))
        return self

    @property
    def points(self) -> torch.Tensor:
        return self.table[:3].T

    @property
    def normals(self) -> torch.Tensor:
        return self.table[3:].T

    @classmethod
    def from_raycast(cls, result: RaycastResult, device=None) -> "ModelView":
        """From a render of the map (world-frame points and normals, ``valid``, at
        ``result.intrinsics`` and ``result.T_world_cam``), on ``device`` (default: the render's)."""
        dev = result.points_world.device if device is None else torch.device(device)
        T_ref_world = inv_pose(result.T_world_cam)
        R = torch.as_tensor(T_ref_world[:3, :3], dtype=torch.float32, device=dev)
        t = torch.as_tensor(T_ref_world[:3, 3], dtype=torch.float32, device=dev)
        P = to_tensor(result.points_world, dev)
        N = to_tensor(result.normals_world, dev)
        V = to_tensor(result.valid, dev, torch.bool) & torch.isfinite(P).all(-1)
        P = torch.where(V[..., None], P, torch.zeros_like(P)) @ R.T + t
        N = torch.where(V[..., None], N, torch.zeros_like(N)) @ R.T
        view = cls(P, N, V, result.intrinsics, result.T_world_cam)
        C = result.color
        if C is not None and C.numel() == V.numel() * 3 and bool((C > 0).any()):
            view.set_intensity(to_tensor(C, dev).mean(-1) / 255.0)
        return view

    @classmethod
    def from_depth(cls, depth, intrinsics: CameraIntrinsics, T_world_ref, device="cpu",
                   width=None) -> "ModelView":
        """Model view from a depth image (metres; 0 / non-finite = invalid) seen at
        ``T_world_ref``: vertices and normals computed from the depth, block-averaged to
        ``width`` if given."""
        dev = torch.device(device)
        d = to_tensor(depth, dev)
        d = torch.where(d > 0, d, torch.zeros_like(d))  # NaN -> 0
        if width is not None and width != intrinsics.width:
            d = downsample_depth(d, max(1, intrinsics.width // width))
            intrinsics = scaled_to(intrinsics, d.shape[1], d.shape[0])
        V = vertex_map(d, intrinsics)
        N, nvalid = normal_map(V, d)
        return cls(V, N, nvalid, intrinsics, T_world_ref)
