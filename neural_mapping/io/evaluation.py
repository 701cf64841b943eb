"""Trajectory and mesh evaluation.

Trajectories (with ``evo``):

* **ATE** (absolute trajectory error, translation part) after SE(3) Umeyama
  alignment of the estimate to the ground truth (``traj.align(ref,
  correct_scale=False)``), and after first-frame alignment (``align_origin``:
  the estimate is moved so its first pose equals the ground truth's; this is how
  an online system without global alignment would be judged);
* **RPE** between consecutive frames (``delta`` frames): translation (cm) and
  rotation angle (degrees), RMSE.  RPE needs no alignment.

Metrics are returned as a flat dict in centimetres / degrees (keys in
:data:`TRAJECTORY_KEYS`).  Pose pairs where either pose is missing (NaN rows, e.g.
frames without ground truth) are dropped first; ``num_poses`` says how many were used.

Files: TUM trajectories (``timestamp tx ty tz qx qy qz qw``) are read and written by
:mod:`neural_mapping.io.images` and associated by nearest timestamp (evo ``associate_trajectories``).

Meshes (with Open3D): distances from points to a reference mesh
(:func:`mesh_to_mesh_distances`), accuracy / completeness / F-score
(:func:`mesh_accuracy`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from neural_mapping.geometry import orthonormalize
from neural_mapping.io.images import read_tum_trajectory, write_json

log = logging.getLogger(__name__)

TRAJECTORY_KEYS = ("ate_rmse_cm", "ate_mean_cm", "ate_median_cm", "ate_max_cm",
                   "ate_first_frame_rmse_cm", "ate_first_frame_max_cm",
                   "rpe_trans_rmse_cm", "rpe_rot_rmse_deg", "num_poses")


@dataclass
class TrajectoryEvaluation:
    metrics: Dict[str, float]
    gt: np.ndarray                 # [M, 4, 4] used ground-truth poses
    est: np.ndarray                # [M, 4, 4] estimate as given
    est_aligned: np.ndarray        # [M, 4, 4] estimate after SE(3) Umeyama alignment
    est_origin_aligned: np.ndarray  # [M, 4, 4] estimate after first-frame alignment
    timestamps: np.ndarray         # [M]
    alignment: np.ndarray = field(default_factory=lambda: np.eye(4))  # T applied to est (Umeyama)


def _clean(poses) -> np.ndarray:
    P = np.asarray(poses, dtype=np.float64)
    if P.ndim != 3 or P.shape[1:] != (4, 4):
        raise ValueError(f"poses must be [N, 4, 4], got shape {P.shape}")
    return P


def _traj(poses: np.ndarray, stamps: np.ndarray):
    from evo.core.trajectory import PoseTrajectory3D
    return PoseTrajectory3D(poses_se3=[orthonormalize(T) for T in poses], timestamps=np.asarray(stamps, float))


def _stack(traj) -> np.ndarray:
    return np.stack(traj.poses_se3) if traj.num_poses else np.zeros((0, 4, 4))


def evaluate_trajectory(est_poses, gt_poses, timestamps: Optional[Sequence[float]] = None,
                        rpe_delta_frames: int = 1) -> TrajectoryEvaluation:
    """ATE/RPE of ``est_poses`` against ``gt_poses`` (both ``[N, 4, 4]`` ``T_world_cam``, pair k
    = same frame).  Pairs with a non-finite pose on either side are dropped."""
    from evo.core import metrics
    from evo.core.units import Unit

    est, gt = _clean(est_poses), _clean(gt_poses)
    if est.shape != gt.shape:
        raise ValueError(f"estimate has {len(est)} poses but ground truth {len(gt)}")
    stamps = np.arange(len(est), dtype=np.float64) if timestamps is None else \
        np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if len(stamps) != len(est):
        raise ValueError(f"{len(stamps)} timestamps for {len(est)} poses")
    ok = np.isfinite(est).all(axis=(1, 2)) & np.isfinite(gt).all(axis=(1, 2))
    est, gt, stamps = est[ok], gt[ok], stamps[ok]
    n = len(est)
    out: Dict[str, float] = {k: float("nan") for k in TRAJECTORY_KEYS}
    out["num_poses"] = n
    if n == 0:
        return TrajectoryEvaluation(out, gt, est, est, est, stamps)

    ref = _traj(gt, stamps)
    est_t = _traj(est, stamps)

    def ape_stats(e):
        ape = metrics.APE(metrics.PoseRelation.translation_part)
        ape.process_data((ref, e))
        return ape.get_all_statistics()

    # SE(3) Umeyama alignment (needs >= 3 non-collinear positions; else first-frame alignment)
    aligned = copy.deepcopy(est_t)
    T_align = np.eye(4)
    try:
        if n < 3:
            raise ValueError("fewer than 3 poses")
        r, t, _ = aligned.align(ref, correct_scale=False)
        T_align[:3, :3], T_align[:3, 3] = r, t
        if not np.all(np.isfinite(T_align)):
            raise ValueError("non-finite alignment")
    except Exception as e:  # degenerate geometry (e.g. a static camera): fall back
        log.debug("Umeyama alignment failed (%s); using first-frame alignment", e)
        aligned = copy.deepcopy(est_t)
        T_align = aligned.align_origin(ref)
    s = ape_stats(aligned)
    out.update(ate_rmse_cm=100 * s["rmse"], ate_mean_cm=100 * s["mean"],
               ate_median_cm=100 * s["median"], ate_max_cm=100 * s["max"])

    origin = copy.deepcopy(est_t)
    origin.align_origin(ref)
    s = ape_stats(origin)
    out.update(ate_first_frame_rmse_cm=100 * s["rmse"], ate_first_frame_max_cm=100 * s["max"])

    if n > rpe_delta_frames:
        for rel, key, scale in ((metrics.PoseRelation.translation_part, "rpe_trans_rmse_cm", 100.0),
                                (metrics.PoseRelation.rotation_angle_deg, "rpe_rot_rmse_deg", 1.0)):
            rpe = metrics.RPE(rel, delta=rpe_delta_frames, delta_unit=Unit.frames, all_pairs=False)
            rpe.process_data((ref, est_t))
            out[key] = scale * rpe.get_statistic(metrics.StatisticsType.rmse)
    out = {k: (float(v) if k != "num_poses" else int(v)) for k, v in out.items()}
    return TrajectoryEvaluation(out, gt, est, _stack(aligned), _stack(origin), stamps, np.asarray(T_align))


def trajectory_metrics(est_poses, gt_poses, timestamps=None) -> Dict[str, float]:
    """Only the metrics dict of :func:`evaluate_trajectory`."""
    return evaluate_trajectory(est_poses, gt_poses, timestamps).metrics


def associate_by_time(est_stamps, est_poses, gt_stamps, gt_poses, max_diff_s: float = 0.02):
    """Pairs of (estimate, ground truth) with nearest timestamps within ``max_diff_s`` (evo)."""
    from evo.core import sync
    est_t, ref_t = _traj(_clean(est_poses), est_stamps), _traj(_clean(gt_poses), gt_stamps)
    try:
        ref_s, est_s = sync.associate_trajectories(ref_t, est_t, max_diff=max_diff_s)
    except sync.SyncException as e:
        raise ValueError(f"no pose pairs within {max_diff_s} s: {e}") from None
    return est_s.timestamps, _stack(est_s), _stack(ref_s)


def evaluate_tum_files(est_path, gt_path, max_diff_s: float = 0.02) -> TrajectoryEvaluation:
    """Evaluate two TUM trajectory files, associating poses by timestamp."""
    es, ep = read_tum_trajectory(est_path)
    gs, gp = read_tum_trajectory(gt_path)
    stamps, est, gt = associate_by_time(es, ep, gs, gp, max_diff_s)
    ev = evaluate_trajectory(est, gt, stamps)
    ev.metrics["num_est_poses"] = len(es)
    ev.metrics["num_gt_poses"] = len(gs)
    return ev


# ----------------------------------------------------------------- plotting
def _plane_axes(points: np.ndarray, plane: str) -> Tuple[np.ndarray, Tuple[str, str]]:
    if plane in ("xy", "xz", "yz"):
        idx = ["xyz".index(c) for c in plane]
        A = np.zeros((3, 2))
        A[idx[0], 0] = A[idx[1], 1] = 1
        return A, (f"{plane[0]} [m]", f"{plane[1]} [m]")
    if plane != "auto":
        raise ValueError(f"plane must be auto, xy, xz or yz; got {plane!r}")
    c = points - points.mean(axis=0)
    if len(points) < 3 or not np.isfinite(c).all():
        return _plane_axes(points, "xy")
    _, _, Vt = np.linalg.svd(c, full_matrices=False)
    A = Vt[:2].T
    return A, ("principal axis 1 [m]", "principal axis 2 [m]")


def plot_trajectories(path, gt_poses: Optional[np.ndarray], est_poses: np.ndarray,
                      title: str = "", plane: str = "auto",
                      labels: Tuple[str, str] = ("ground truth", "estimate")) -> None:
    """Top view PNG of estimate vs ground truth.  ``plane="auto"``: the plane of most motion
    (PCA of the ground-truth positions, or of the estimate without ground truth)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    est = _clean(est_poses)[:, :3, 3]
    est = est[np.isfinite(est).all(axis=1)]
    gt = None
    if gt_poses is not None:
        gt = _clean(gt_poses)[:, :3, 3]
        gt = gt[np.isfinite(gt).all(axis=1)]
        if len(gt) == 0:
            gt = None
    base = gt if gt is not None else est
    A, (xl, yl) = _plane_axes(base, plane)
    mean = base.mean(axis=0) if len(base) else np.zeros(3)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    try:
        if gt is not None:
            g = (gt - mean) @ A
            ax.plot(g[:, 0], g[:, 1], "k--", lw=1.5, label=labels[0])
            ax.plot(g[:1, 0], g[:1, 1], "ko", ms=5)
        if len(est):
            e = (est - mean) @ A
            ax.plot(e[:, 0], e[:, 1], "-", color="tab:blue", lw=1.5, label=labels[1])
            ax.plot(e[:1, 0], e[:1, 1], "o", color="tab:blue", ms=5, label="start")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")
        if title:
            ax.set_title(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(str(path))
    finally:
        plt.close(fig)


def evaluation_title(name: str, m: Dict[str, float]) -> str:
    if np.isfinite(m.get("ate_rmse_cm", float("nan"))):
        return (f"{name}\nATE RMSE {m['ate_rmse_cm']:.2f} cm (SE3-aligned), "
                f"{m['ate_first_frame_rmse_cm']:.2f} cm (first frame)")
    return name


def write_evaluation(out_dir, ev: TrajectoryEvaluation, name: str = "trajectory",
                     extra: Optional[dict] = None) -> Dict[str, float]:
    """``metrics.json`` + ``trajectory.png`` (SE(3)-aligned estimate vs ground truth) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = dict(ev.metrics)
    if extra:
        metrics.update(extra)
    write_json(out_dir / "metrics.json", metrics)
    plot_trajectories(out_dir / "trajectory.png", ev.gt, ev.est_aligned,
                      title=evaluation_title(name, ev.metrics), labels=("ground truth", "estimate (aligned)"))
    return metrics


# -------------------------------------------------------------------- meshes
def _o3d_mesh(mesh_or_vt):
    import open3d as o3d
    if isinstance(mesh_or_vt, o3d.geometry.TriangleMesh):
        return mesh_or_vt
    if isinstance(mesh_or_vt, (tuple, list)) and len(mesh_or_vt) == 2:
        v, t = mesh_or_vt
    else:  # neural_mapping.products.meshing.Mesh or anything with .vertices/.triangles
        v, t = mesh_or_vt.vertices, mesh_or_vt.triangles
    v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
    t = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
    m = o3d.geometry.TriangleMesh()
    m.vertices = o3d.utility.Vector3dVector(np.asarray(v, dtype=np.float64).reshape(-1, 3))
    m.triangles = o3d.utility.Vector3iVector(np.asarray(t, dtype=np.int32).reshape(-1, 3))
    return m


def mesh_to_mesh_distances(points, reference_mesh) -> np.ndarray:
    """Unsigned distance (m) from each point ``[N, 3]`` (e.g. mesh vertices) to the surface of
    ``reference_mesh`` (Open3D ``TriangleMesh``, ``(vertices, triangles)`` or a ``Mesh``)."""
    import open3d as o3d
    p = points.detach().cpu().numpy() if hasattr(points, "detach") else np.asarray(points)
    p = np.asarray(p, dtype=np.float32).reshape(-1, 3)
    if len(p) == 0:
        return np.zeros(0, dtype=np.float32)
    ref = _o3d_mesh(reference_mesh)
    if len(ref.triangles) == 0:
        raise ValueError("reference mesh has no triangles")
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(ref))
    return scene.compute_distance(o3d.core.Tensor(p)).numpy()


def mesh_accuracy(est_mesh, gt_mesh, threshold_m: float = 0.05, num_samples: int = 200_000,
                  seed: int = 0) -> Dict[str, float]:
    """Accuracy (mean distance of estimate vertices to ground truth), completeness (mean distance
    of points sampled uniformly on the ground truth to the estimate), precision / recall
    (fractions within ``threshold_m``) and F-score; distances in cm."""
    import open3d as o3d
    est = _o3d_mesh(est_mesh)
    gt = _o3d_mesh(gt_mesh)
    ev = np.asarray(est.vertices)
    if len(ev) == 0 or len(est.triangles) == 0:
        raise ValueError("estimated mesh is empty")
    acc = mesh_to_mesh_distances(ev, gt)
    o3d.utility.random.seed(seed)
    samples = np.asarray(gt.sample_points_uniformly(num_samples).points)
    comp = mesh_to_mesh_distances(samples, est)
    prec = float(np.mean(acc < threshold_m))
    rec = float(np.mean(comp < threshold_m))
    f = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return {"accuracy_cm": 100 * float(acc.mean()), "accuracy_median_cm": 100 * float(np.median(acc)),
            "completeness_cm": 100 * float(comp.mean()),
            "completeness_median_cm": 100 * float(np.median(comp)),
            f"precision_{int(round(threshold_m * 100))}cm": prec,
            f"recall_{int(round(threshold_m * 100))}cm": rec,
            f"fscore_{int(round(threshold_m * 100))}cm": f}


as_o3d_mesh = _o3d_mesh  # public: an Open3D TriangleMesh from a Mesh, (vertices, triangles) or itself
