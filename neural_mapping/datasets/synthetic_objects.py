"""Object protocol of the map-quality benchmark: procedural objects in the unit cube, as close
to NeuralFusion's ModelNet setup (Weder et al., CVPR 2021, Sec. 5.1) as we get without ModelNet.

:class:`ProceduralObject` (deterministic from ``seed``): a union (CSG ``min`` of signed
distances) of 4-7 primitives -- spheres, boxes, capped cylinders and thin plates (1.5-3
voxels thick), each randomly rotated -- normalised so that its bounding box spans
``[0.1, 0.9]`` along its longest axis, centred in the unit cube ``[0, 1]^3``.

* ground truth: the analytic signed distance at the centres of a ``resolution^3`` grid
  (default 128^3, voxel ``1/128``, centre of voxel ``(i, j, k)`` at ``((i, j, k) + 0.5) / 128``).
  The ``min`` of exact primitive distances is exact outside the union and within the
  truncation band except where primitives overlap inside (a bound there; its sign is exact);
* views: ``num_views`` (default 100) cameras on a sphere of radius ``distance`` (1.5) around
  the cube centre, Fibonacci-spread directions (elevations within +-70 deg), looking at the
  centre, ``width x height`` = 320 x 240, focal 300 px;
* depth: exact z-depth by Open3D ray casting of the primitives' triangle meshes (spheres and
  cylinders tessellated finely: < 0.0005 chord error, 1/16 voxel), then
  :func:`~neural_mapping.datasets.sensor_models.proportional_gaussian` with ``sigma`` (0.01)
  and :func:`~neural_mapping.datasets.sensor_models.blob_outliers` covering ``outlier_fraction``
  of the pixels, blob radius 3 px, offsets ``+-U(0.05, 0.5)`` (unit-cube lengths).

Differences from NeuralFusion's ModelNet protocol: our shapes are unions of primitives, not
ModelNet CAD models (fewer fine details, no open surfaces, no non-manifold parts); our view
count, camera radius, image size and outlier blob shape/offset distribution are our own
choices (stated above); the ground truth is an analytic SDF, not a mesh-to-grid conversion.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np

from neural_mapping.datasets import sensor_models as sm
from neural_mapping.datasets.synthetic import look_at as _look_at
from neural_mapping.types import CameraIntrinsics

__all__ = ["ProceduralObject"]


def _rot(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


class ProceduralObject:
    """One procedural object and its views (see the module docstring)."""

    def __init__(self, seed: int = 0, resolution: int = 128, num_views: int = 100, width: int = 320,
                 height: int = 240, focal_px: float = 300.0, distance: float = 1.5,
                 sigma: float = 0.01, outlier_fraction: float = 0.0):
        import open3d as o3d
        self._o3d = o3d
        self.seed = int(seed)
        self.resolution = int(resolution)
        self.voxel_size = 1.0 / self.resolution
        self.sigma = float(sigma)
        self.outlier_fraction = float(outlier_fraction)
        self.intrinsics = CameraIntrinsics(width, height, focal_px, focal_px, (width - 1) / 2.0,
                                           (height - 1) / 2.0)
        self.prims = self._primitives()
        self.poses = self._views(int(num_views), float(distance))
        self._scene = o3d.t.geometry.RaycastingScene()
        for m in self._meshes():
            self._scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(m))

    # ------------------------------------------------------------------ shape
    def _primitives(self) -> List[dict]:
        rng = np.random.default_rng([self.seed, 3])
        vs = 1.0 / 128
        prims = []
        for k in range(int(rng.integers(4, 8))):
            kind = ("sphere", "box", "cylinder", "plate")[k % 4 if k < 4 else int(rng.integers(0, 4))]
            p = {"kind": kind, "c": rng.uniform(-0.25, 0.25, 3), "R": _rot(rng)}
            if kind == "sphere":
                p["r"] = rng.uniform(0.08, 0.2)
            elif kind == "box":
                p["h"] = rng.uniform(0.05, 0.2, 3)
            elif kind == "cylinder":
                p["r"], p["hh"] = rng.uniform(0.03, 0.12), rng.uniform(0.1, 0.3)
            else:
                p["h"] = np.array([rng.uniform(0.1, 0.25), rng.uniform(0.1, 0.25), rng.uniform(0.75, 1.5) * vs])
            prims.append(p)
        # normalise: longest bounding-box side -> 0.8, centred at 0.5
        lo, hi = self._bounds(prims)
        s = 0.8 / float(np.max(hi - lo))
        mid = (lo + hi) / 2
        for p in prims:
            p["c"] = (p["c"] - mid) * s + 0.5
            for key in ("r", "hh", "h"):
                if key in p:
                    p[key] = p[key] * s
        return prims

    @staticmethod
    def _bounds(prims) -> Tuple[np.ndarray, np.ndarray]:
        lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
        for p in prims:
            if p["kind"] == "sphere":
                e = np.full(3, p["r"])
            elif p["kind"] == "cylinder":
                e = np.abs(p["R"]) @ np.array([p["r"], p["r"], p["hh"]])
            else:
                e = np.abs(p["R"]) @ p["h"]
            lo, hi = np.minimum(lo, p["c"] - e), np.maximum(hi, p["c"] + e)
        return lo, hi

    def sdf(self, pts: np.ndarray) -> np.ndarray:
        """Signed distance (negative inside) of the union at points ``[N, 3]``."""
        out = np.full(len(pts), np.inf)
        for p in self.prims:
            q = (pts - p["c"]) @ p["R"]  # into the primitive's frame
            if p["kind"] == "sphere":
                d = np.linalg.norm(q, axis=1) - p["r"]
            elif p["kind"] == "cylinder":
                dr = np.linalg.norm(q[:, :2], axis=1) - p["r"]
                dz = np.abs(q[:, 2]) - p["hh"]
                d = np.minimum(np.maximum(dr, dz), 0) + np.hypot(np.maximum(dr, 0), np.maximum(dz, 0))
            else:
                e = np.abs(q) - p["h"]
                d = np.linalg.norm(np.maximum(e, 0), axis=1) + np.minimum(e.max(axis=1), 0)
            out = np.minimum(out, d)
        return out

    def gt_sdf(self, offset_vox: float = 0.5, clip: Optional[float] = None) -> np.ndarray:
        """Analytic SDF at the voxel centres, ``[res, res, res]`` indexed ``[i, j, k]`` = x, y, z;
        voxel ``i`` at ``(i + offset_vox) / res`` (Open3D's voxel grid puts voxel ``i`` at
        ``i * voxel_size``: ``offset_vox=0``).  ``clip``: values clipped to ``[-clip, clip]``,
        computed exactly only in 4^3-voxel cells whose centre is within ``clip`` + the cell's
        half diagonal of the surface (the SDF is 1-Lipschitz, so the rest is +-clip exactly)."""
        n, vs = self.resolution, self.voxel_size
        if clip is None or n % 4:
            r = (np.arange(n) + float(offset_vox)) * vs
            X, Y, Z = np.meshgrid(r, r, r, indexing="ij")
            out = self.sdf(np.stack([X.ravel(), Y.ravel(), Z.ravel()], 1)).reshape(X.shape)
            return out if clip is None else np.clip(out, -clip, clip)
        m = n // 4
        rc = (4 * np.arange(m) + 1.5 + float(offset_vox)) * vs
        X, Y, Z = np.meshgrid(rc, rc, rc, indexing="ij")
        sc = self.sdf(np.stack([X.ravel(), Y.ravel(), Z.ravel()], 1)).reshape(m, m, m)
        out = np.repeat(np.repeat(np.repeat(np.where(sc < 0, -clip, clip), 4, 0), 4, 1), 4, 2)
        near = np.argwhere(np.abs(sc) < clip + 1.5 * math.sqrt(3.0) * vs + 1e-9)
        o = np.stack(np.meshgrid(np.arange(4), np.arange(4), np.arange(4), indexing="ij"), -1).reshape(-1, 3)
        idx = (near[:, None, :] * 4 + o[None]).reshape(-1, 3)
        out[idx[:, 0], idx[:, 1], idx[:, 2]] = np.clip(self.sdf((idx + float(offset_vox)) * vs), -clip, clip)
        return out

    def _meshes(self):
        o3d = self._o3d
        out = []
        for p in self.prims:
            if p["kind"] == "sphere":
                m = o3d.geometry.TriangleMesh.create_sphere(p["r"], resolution=60)
            elif p["kind"] == "cylinder":
                m = o3d.geometry.TriangleMesh.create_cylinder(p["r"], 2 * p["hh"], resolution=96, split=1)
            else:
                m = o3d.geometry.TriangleMesh.create_box(*(2 * p["h"]))
                m.translate(-p["h"])
            m.rotate(p["R"], center=(0, 0, 0))
            m.translate(p["c"])
            out.append(m)
        return out

    def gt_mesh(self):
        o3d = self._o3d
        out = o3d.geometry.TriangleMesh()
        for m in self._meshes():
            out += m
        return out

    # ------------------------------------------------------------------ views
    def _views(self, n: int, dist: float) -> np.ndarray:
        poses = np.empty((n, 4, 4))
        golden = math.pi * (3.0 - math.sqrt(5.0))
        lim = math.sin(math.radians(70))
        for k in range(n):
            z = lim * (1 - 2 * (k + 0.5) / n)
            rr = math.sqrt(1 - z * z)
            d = np.array([rr * math.cos(golden * k), rr * math.sin(golden * k), z])
            poses[k] = _look_at(0.5 + dist * d, np.full(3, 0.5))
        return poses

    def clean_depth(self, i: int) -> np.ndarray:
        o3d = self._o3d
        K = self.intrinsics
        Km = np.array([[K.fx, 0, K.cx + 0.5], [0, K.fy, K.cy + 0.5], [0, 0, 1]])
        rays = o3d.t.geometry.RaycastingScene.create_rays_pinhole(
            o3d.core.Tensor(Km), o3d.core.Tensor(np.linalg.inv(self.poses[i])), K.width, K.height)
        t = self._scene.cast_rays(rays)["t_hit"].numpy()
        return np.where(np.isfinite(t), t, 0.0).astype(np.float32)

    def depth(self, i: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """Noisy depth of view ``i`` (seeded from ``(seed, i)`` unless ``rng`` is given)."""
        rng = rng or np.random.default_rng([self.seed, i, 11])
        d = sm.proportional_gaussian(self.clean_depth(i), rng, self.sigma)
        if self.outlier_fraction > 0:
            d, _ = sm.blob_outliers(d, rng, self.outlier_fraction, radius_px=3,
                                    max_offset=0.5, min_offset=0.05)
        return d

    def __len__(self) -> int:
        return len(self.poses)
