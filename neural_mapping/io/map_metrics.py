"""Map-quality metrics of the ground-truth benchmark (``bench/bench_quality.py``).

Mesh metrics (:func:`mesh_metrics`), distances in cm:

* ``accuracy_cm``: mean distance from ``num_samples`` points sampled uniformly (area-weighted,
  Open3D ``sample_points_uniformly``, seeded) on the *estimated* mesh to the ground-truth mesh
  surface (exact point-to-triangle distance, Open3D ``RaycastingScene.compute_distance``);
* ``completion_cm``: mean distance from the ground-truth points to the estimated mesh surface.
  Ground-truth points are ``num_samples`` uniform samples of the ground-truth mesh, restricted
  to those seen by at least one view when ``visible`` is given (:func:`visible_samples`: the
  point projects into a view within ``tol_m`` of that view's exact depth), so surfaces no
  camera saw (the outside of walls, the underside of a table) do not count;
* ``completion_ratio_5cm``: fraction of ground-truth points within 5 cm of the estimate;
* ``fscore_{1,2,5}cm``: ``2 P R / (P + R)`` with precision ``P`` (fraction of estimate samples
  within the threshold of the ground truth) and recall ``R`` (fraction of ground-truth points
  within the threshold of the estimate).

Voxel metrics (:func:`voxel_metrics`), NeuralFusion's protocol on a dense grid of voxel
centres.  With truncation ``t``, ground-truth signed distance ``g`` (negative inside) and the
fused value ``p`` (metres) where the map observed the voxel:

* evaluated voxels ``M`` = observed voxels (weight > 0) plus every voxel of the ground truth's
  truncation band (``|g| < t``), so a surface the map never saw counts as missing;
* values are clamped to ``[-t, t]``; an unobserved voxel has value ``+t`` (free / unknown);
* ``mse`` = mean over ``M`` of ``(p - g)^2``, ``mad`` = mean of ``|p - g|`` (units of the
  grid's length, squared for MSE);
* occupancy: ground truth occupied iff ``g < 0`` (the interior counts as occupied); predicted
  occupied iff observed and ``p < 0``; ``occ_accuracy`` = fraction of ``M`` where they agree,
  ``iou`` = |pred & gt| / |pred | gt| over ``M``, ``f1`` = 2 |pred & gt| / (|pred| + |gt|).

Held-out depth metrics (:func:`depth_metrics`): the map rendered (its ``render()``) from views
*not* used for fusion, against those views' exact depth; pixels pooled over the views, ``P`` =
pixels whose ground-truth depth is valid (> 0, finite), a render *hit* = rendered depth > 0:

* ``depth_l1_cm``: mean ``|rendered - ground truth|`` over the hits in ``P`` (dominated by the
  few pixels at depth edges where render and truth see different surfaces);
* ``depth_median_cm``: the median of the same errors;
* ``depth_hit_ratio``: fraction of ``P`` the render hits;
* ``depth_within_5cm``: fraction of ``P`` hit within 5 cm (misses count as failures).
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch

from neural_mapping.io.evaluation import as_o3d_mesh as _o3d_mesh, mesh_to_mesh_distances
from neural_mapping.types import CameraIntrinsics

__all__ = ["mesh_metrics", "visible_samples", "voxel_metrics", "dense_tsdf", "depth_metrics", "F_THRESHOLDS_M"]

F_THRESHOLDS_M = (0.01, 0.02, 0.05)


def _sample(mesh, n: int, seed: int) -> np.ndarray:
    import open3d as o3d
    o3d.utility.random.seed(int(seed))
    return np.asarray(_o3d_mesh(mesh).sample_points_uniformly(int(n)).points)


def visible_samples(gt_mesh, depths: Iterable[np.ndarray], poses: Sequence[np.ndarray],
                    intrinsics: CameraIntrinsics, num_samples: int = 200_000, tol_m: float = 0.02,
                    seed: int = 0) -> np.ndarray:
    """Uniform samples ``[N, 3]`` of ``gt_mesh`` seen by at least one view: projected into the
    view (``T_world_cam`` in ``poses``, exact z-depth image in ``depths``) the point lands on a
    pixel whose depth is within ``tol_m`` of the point's own depth."""
    pts = _sample(gt_mesh, num_samples, seed)
    seen = np.zeros(len(pts), dtype=bool)
    K = intrinsics
    for depth, T in zip(depths, poses):
        Tc = np.linalg.inv(np.asarray(T, dtype=np.float64))
        pc = pts @ Tc[:3, :3].T + Tc[:3, 3]
        z = pc[:, 2]
        ok = z > 1e-6
        u = np.full(len(pts), -1, dtype=np.int64)
        v = np.full(len(pts), -1, dtype=np.int64)
        u[ok] = np.round(pc[ok, 0] / z[ok] * K.fx + K.cx).astype(np.int64)
        v[ok] = np.round(pc[ok, 1] / z[ok] * K.fy + K.cy).astype(np.int64)
        ok &= (u >= 0) & (u < K.width) & (v >= 0) & (v < K.height)
        idx = np.nonzero(ok)[0]
        d = depth[v[idx], u[idx]]
        seen[idx[(d > 0) & (np.abs(d - z[idx]) < tol_m)]] = True
    return pts[seen]


def mesh_metrics(est_mesh, gt_mesh, gt_points: Optional[np.ndarray] = None,
                 num_samples: int = 200_000, seed: int = 0) -> Dict[str, float]:
    """Accuracy / completion (cm), completion ratio (< 5 cm), F-score at 1/2/5 cm (module
    docstring).  ``gt_points``: the ground-truth points (default: uniform samples of ``gt_mesh``)."""
    est = _o3d_mesh(est_mesh)
    if len(est.triangles) == 0:
        raise ValueError("estimated mesh is empty")
    e = _sample(est, num_samples, seed)
    g = _sample(gt_mesh, num_samples, seed + 1) if gt_points is None else np.asarray(gt_points)
    acc = mesh_to_mesh_distances(e, gt_mesh)
    comp = mesh_to_mesh_distances(g, est)
    out = {"accuracy_cm": 100 * float(acc.mean()), "completion_cm": 100 * float(comp.mean()),
           "completion_ratio_5cm": float(np.mean(comp < 0.05))}
    for t in F_THRESHOLDS_M:
        p, r = float(np.mean(acc < t)), float(np.mean(comp < t))
        out[f"fscore_{int(round(t * 100))}cm"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    out["num_gt_points"] = int(len(g))
    return out


def voxel_metrics(pred: np.ndarray, observed: np.ndarray, gt_sdf: np.ndarray,
                  truncation: float) -> Dict[str, float]:
    """NeuralFusion-protocol voxel metrics on dense grids of the same shape (module docstring)."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt_sdf, dtype=np.float64)
    obs = np.asarray(observed, dtype=bool)
    t = float(truncation)
    m = obs | (np.abs(gt) < t)
    p = np.where(obs, np.clip(pred, -t, t), t)[m]
    g = np.clip(gt, -t, t)[m]
    po, go = (p < 0), (g < 0)
    inter, union = float(np.sum(po & go)), float(np.sum(po | go))
    return {"mse": float(np.mean((p - g) ** 2)), "mad": float(np.mean(np.abs(p - g))),
            "occ_accuracy": float(np.mean(po == go)), "iou": inter / union if union else 1.0,
            "f1": 2 * inter / float(po.sum() + go.sum()) if po.sum() + go.sum() else 1.0,
            "num_voxels": int(m.sum())}


def dense_tsdf(volume, shape: Tuple[int, int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """``(tsdf metres, observed)`` dense arrays over voxels ``[0, shape)`` of a
    :class:`~neural_mapping.backends.tsdf.volume.TSDFVolume` (voxel ``(i, j, k)`` has its centre
    at ``(i + 0.5, j + 0.5, k + 0.5) * voxel_size``); voxels outside are dropped."""
    g = volume.grid
    B = g.block_size
    n = g.num_blocks
    out = np.full(shape, 1.0, dtype=np.float32)
    seen = np.zeros(shape, dtype=bool)
    if n == 0:
        return out * volume.truncation_m, seen
    coords = g.active_coords().to(torch.int64).cpu().numpy()
    tsdf = g.active("tsdf").reshape(n, B, B, B).cpu().numpy()
    w = g.active("weight").reshape(n, B, B, B).cpu().numpy()
    r = np.arange(B)
    for c, t, ww in zip(coords, tsdf, w):
        lo = c * B
        ix, iy, iz = lo[0] + r, lo[1] + r, lo[2] + r
        kx, ky, kz = ((a >= 0) & (a < s) for a, s in zip((ix, iy, iz), shape))
        if not (kx.any() and ky.any() and kz.any()):
            continue
        sub = np.ix_(ix[kx], iy[ky], iz[kz])
        out[sub] = t[np.ix_(kx, ky, kz)]
        seen[sub] = ww[np.ix_(kx, ky, kz)] > 0
    return out * volume.truncation_m, seen


def depth_metrics(rendered: Iterable[np.ndarray], gt: Iterable[np.ndarray]) -> Dict[str, float]:
    """Held-out depth L1 (cm), hit ratio and fraction within 5 cm, pooled over views (module
    docstring); ``rendered`` / ``gt``: z-depth images in metres, 0 (or NaN for ``gt``) invalid."""
    errs, within, valid = [], 0, 0
    for r, g in zip(rendered, gt):
        r = np.asarray(r, dtype=np.float64)
        g = np.asarray(g, dtype=np.float64)
        if r.shape != g.shape:
            raise ValueError(f"rendered depth {r.shape} and ground truth {g.shape} differ")
        ok = np.isfinite(g) & (g > 0)
        hit = ok & np.isfinite(r) & (r > 0)
        e = np.abs(r[hit] - g[hit])
        errs.append(e)
        within += int((e < 0.05).sum())
        valid += int(ok.sum())
    e = np.concatenate(errs) if errs else np.zeros(0)
    hits = int(e.size)
    return {"depth_l1_cm": 100.0 * float(e.mean()) if hits else float("nan"),
            "depth_median_cm": 100.0 * float(np.median(e)) if hits else float("nan"),
            "depth_hit_ratio": hits / valid if valid else float("nan"),
            "depth_within_5cm": within / valid if valid else float("nan")}
