"""Tracking benchmark: our frame-to-model tracker vs Open3D's dense SLAM, same run.

For each sequence (TUM fr1/xyz, 7-Scenes redkitchen 0-499 from ../shared/data):

* **ours**: a plain sequential loop -- raycast the map at the last pose (model view at
  the tracker's resolution) -> ``Tracker.track`` (constant-velocity initial guess) ->
  integrate the frame on success (a failed frame is not integrated; its pose is the
  prediction).  The map is ``neural_mapping.tsdf.TSDFVolume`` + ``neural_mapping.raycast``
  when those exist (``--model nm``), else Open3D's VoxelBlockGrid as a stand-in map
  (``--model o3d``; integration and raycast in Open3D, tracking ours).
* **open3d**: ``o3d.t.pipelines.slam.Model`` frame-to-model (depth_max 3 m, depth_diff
  0.07, as in the issue), same voxel size.

ATE RMSE (cm) after SE(3) Umeyama alignment (and after first-frame alignment), frames/s
(wall time of the loop, images preloaded), tracking failures.  Prints a table and writes
``bench/results/tracking.json``.  ``--undistort`` undistorts TUM's depth and color (plumb_bob,
nearest-pixel remap) for *both* methods.  Run it on an idle machine: other processes on the
2 cores slow torch's OpenMP barriers badly (``--threads 1`` is the robust choice).

    .venv/bin/python bench/bench_tracking.py --threads 1 --undistort   # both sequences, ours + Open3D
    .venv/bin/python bench/bench_tracking.py                  # same, TUM depth left distorted
    .venv/bin/python bench/bench_tracking.py --sequences tum --frames 200 --no-open3d
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neural_mapping.geometry import inv_pose, pose_from_tum  # noqa: E402
from neural_mapping.pose_buffer import PoseBuffer  # noqa: E402
from neural_mapping.tracking import ModelView, Tracker, TrackerConfig  # noqa: E402
from neural_mapping.types import CameraIntrinsics  # noqa: E402

DATA = REPO.parent / "shared" / "data"

TUM_K = CameraIntrinsics(640, 480, 517.3, 516.5, 318.6, 255.3)
TUM_DIST = np.array([0.2624, -0.9531, -0.0054, 0.0026, 1.1633])


# ================================================================== data
class Sequence:
    def __init__(self, name, K, depth_scale, depths, colors, gt, stamps):
        self.name, self.K, self.depth_scale = name, K, depth_scale
        self.depths, self.colors, self.gt, self.stamps = depths, colors, gt, stamps

    def __len__(self):
        return len(self.depths)


def _read_list(path: Path) -> List[Tuple[float, str]]:
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        s, f = line.split()[:2]
        out.append((float(s), f))
    return out


def load_tum(root: Path, frames: int, undistort: bool = False) -> Sequence:
    depth_list = _read_list(root / "depth.txt")
    rgb_list = _read_list(root / "rgb.txt")
    rgb_stamps = np.array([s for s, _ in rgb_list])
    buf = PoseBuffer(max_age_s=1e9, max_size=10 ** 7)
    for line in (root / "groundtruth.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        s, T = pose_from_tum(line)
        buf.add(s, T)
    depths, colors, gt, stamps = [], [], [], []
    maps = _undistort_maps(TUM_K, TUM_DIST) if undistort else None
    for s, f in depth_list:
        if frames and len(depths) >= frames:
            break
        T = buf.query(s).T
        if T is None:
            continue
        j = int(np.argmin(np.abs(rgb_stamps - s)))
        d = np.asarray(Image.open(root / f), dtype=np.uint16).astype(np.float32) / 5000.0
        c = np.asarray(Image.open(root / rgb_list[j][1]).convert("RGB"))
        if maps is not None:
            d = _remap_nearest(d, maps)
            c = _remap_nearest(c, maps)
        depths.append(d)
        colors.append(np.ascontiguousarray(c))
        gt.append(T)
        stamps.append(s)
    return Sequence("tum_fr1_xyz", TUM_K, 5000.0, depths, colors, gt, stamps)


def _undistort_maps(K: CameraIntrinsics, dist):
    """For every pixel of the undistorted image, the (rounded) source pixel in the raw image."""
    k1, k2, p1, p2, k3 = dist
    u, v = np.meshgrid(np.arange(K.width), np.arange(K.height))
    x = (u - K.cx) / K.fx
    y = (v - K.cy) / K.fy
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    us = np.round(xd * K.fx + K.cx).astype(np.int64)
    vs = np.round(yd * K.fy + K.cy).astype(np.int64)
    ok = (us >= 0) & (us < K.width) & (vs >= 0) & (vs < K.height)
    return us, vs, ok


def _remap_nearest(img, maps):
    us, vs, ok = maps
    out = img[np.clip(vs, 0, img.shape[0] - 1), np.clip(us, 0, img.shape[1] - 1)]
    out[~ok] = 0
    return out


def load_7scenes(root: Path, frames: int) -> Sequence:
    Km = np.loadtxt(root / "camera-intrinsics.txt")
    K = CameraIntrinsics.from_matrix(Km, 640, 480)
    depths, colors, gt, stamps = [], [], [], []
    i = 0
    while (root / f"frame-{i:06d}.depth.png").exists() and (not frames or i < frames):
        raw = np.asarray(Image.open(root / f"frame-{i:06d}.depth.png"), dtype=np.uint16)
        d = raw.astype(np.float32) / 1000.0
        d[raw == 65535] = 0
        depths.append(d)
        colors.append(np.asarray(Image.open(root / f"frame-{i:06d}.color.jpg").convert("RGB")))
        gt.append(np.loadtxt(root / f"frame-{i:06d}.pose.txt"))
        stamps.append(i / 30.0)
        i += 1
    return Sequence("7scenes_redkitchen", K, 1000.0, depths, colors, gt, stamps)


# ================================================================== metrics
def umeyama_se3(src: np.ndarray, dst: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """R, t minimising |dst - (R src + t)| (no scale)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    S = (dst - mu_d).T @ (src - mu_s) / len(src)
    U, _, Vt = np.linalg.svd(S)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1
    R = U @ D @ Vt
    return R, mu_d - R @ mu_s


def ate(est: List[np.ndarray], gt: List[np.ndarray]) -> Dict[str, float]:
    P = np.array([T[:3, 3] for T in est])
    G = np.array([T[:3, 3] for T in gt])
    R, t = umeyama_se3(P, G)
    e = G - (P @ R.T + t)
    rmse = float(np.sqrt((e ** 2).sum(1).mean()))
    A = gt[0] @ inv_pose(est[0])
    e0 = G - (P @ A[:3, :3].T + A[:3, 3])
    rmse0 = float(np.sqrt((e0 ** 2).sum(1).mean()))
    out = {"ate_rmse_cm": rmse * 100, "ate_first_frame_cm": rmse0 * 100,
           "ate_max_cm": float(np.sqrt((e ** 2).sum(1)).max() * 100)}
    try:  # evo, the reference implementation, when available
        from evo.core import metrics, sync  # noqa: F401
        from evo.core.trajectory import PoseTrajectory3D
        stamps = np.arange(len(est), dtype=float)
        te = PoseTrajectory3D(poses_se3=[np.asarray(T) for T in est], timestamps=stamps)
        tg = PoseTrajectory3D(poses_se3=[np.asarray(T) for T in gt], timestamps=stamps)
        te.align(tg, correct_scale=False)
        ape = metrics.APE(metrics.PoseRelation.translation_part)
        ape.process_data((tg, te))
        out["ate_rmse_cm_evo"] = float(ape.get_statistic(metrics.StatisticsType.rmse) * 100)
    except Exception as exc:  # pragma: no cover - evo optional here
        out["evo_error"] = repr(exc)
    return out


# ================================================================== maps
class O3DMap:
    """Open3D VoxelBlockGrid as a stand-in map (integrate + vertex/normal raycast)."""

    def __init__(self, voxel: float, K: CameraIntrinsics, depth_max: float, trunc_vox: float = 4.0):
        import open3d as o3d
        import open3d.core as o3c
        self.o3d, self.o3c = o3d, o3c
        self.dev = o3c.Device("CPU:0")
        self.vbg = o3d.t.geometry.VoxelBlockGrid(
            attr_names=("tsdf", "weight"), attr_dtypes=(o3c.float32, o3c.float32),
            attr_channels=((1), (1)), voxel_size=voxel, block_resolution=8,
            block_count=200_000, device=self.dev)
        self.K = K
        self.intr = o3c.Tensor(K.K, o3c.float64)
        self.depth_max = depth_max
        self.trunc_vox = trunc_vox
        self.frustum = None
        self.vertex_normals = True

    def integrate(self, depth: np.ndarray, color, T_world_cam):
        o3d, o3c = self.o3d, self.o3c
        dimg = o3d.t.geometry.Image(o3c.Tensor((depth * 1000).astype(np.uint16)))
        extr = o3c.Tensor(inv_pose(T_world_cam), o3c.float64)
        coords = self.vbg.compute_unique_block_coordinates(dimg, self.intr, extr, 1000.0,
                                                           self.depth_max, self.trunc_vox)
        self.vbg.integrate(coords, dimg, self.intr, extr, 1000.0, self.depth_max, self.trunc_vox)
        self.frustum = coords

    def view(self, T_world_ref, Km: CameraIntrinsics) -> Optional[ModelView]:
        o3c = self.o3c
        if self.frustum is None:
            return None
        extr = o3c.Tensor(inv_pose(T_world_ref), o3c.float64)
        intr = o3c.Tensor(Km.K, o3c.float64)
        res = self.vbg.ray_cast(self.frustum, intr, extr, Km.width, Km.height,
                                ["vertex", "normal", "depth"], 1000.0, 0.1, self.depth_max, 1.0,
                                self.trunc_vox)
        V = res["vertex"].numpy()
        N = res["normal"].numpy()
        D = res["depth"].numpy()[..., 0]
        valid = D > 0
        return ModelView.from_world(V, None if self.vertex_normals else N, valid, Km, T_world_ref)


class F2FMap:
    """No map: the previous frame's depth is the model (frame-to-frame odometry, a baseline)."""

    def __init__(self, voxel, K: CameraIntrinsics, depth_max: float, **_):
        self.K, self.depth_max, self.last = K, depth_max, None

    def integrate(self, depth, color, T_world_cam):
        self.last = (depth, T_world_cam)

    def view(self, T_world_ref, Km):
        if self.last is None:
            return None
        d, T = self.last
        return ModelView.from_depth(d, self.K, T, width=Km.width, depth_max_m=self.depth_max)


class NMMap:
    """neural_mapping.tsdf.TSDFVolume + neural_mapping.raycast."""

    def __init__(self, voxel: float, K: CameraIntrinsics, depth_max: float, trunc_vox: float = 4.0):
        from neural_mapping.tsdf import TSDFVolume
        self.volume = TSDFVolume(voxel_size_m=voxel, truncation_m=trunc_vox * voxel, depth_min_m=0.1,
                                 depth_max_m=depth_max, device="cpu")
        self.K = K
        self.depth_max = depth_max
        self.trunc = trunc_vox * voxel
        self.any = False

    def integrate(self, depth, color, T_world_cam):
        self.volume.integrate(depth, self.K, T_world_cam, color)
        self.any = True

    def view(self, T_world_ref, Km):
        from neural_mapping.raycast import raycast
        if not self.any:
            return None
        rc = raycast(self.volume, Km, T_world_ref, depth_min_m=0.1, depth_max_m=self.depth_max,
                     truncation_m=self.trunc, with_color=False)
        return ModelView.from_raycast(rc, Km, T_world_ref)



# ================================================================== runs
def run_ours(seq: Sequence, args) -> Dict[str, object]:
    cfg = TrackerConfig(base_width=args.base_width, model_width=args.model_width,
                        iterations=tuple(args.iterations), max_dist_m=tuple(args.max_dist),
                        huber_m=args.huber, depth_max_m=args.depth_max,
                        depth_noise_weighting=args.noise_weighting,
                        degenerate_ratio=TrackerConfig.degenerate_ratio)
    tracker = Tracker(cfg)
    Map = {"o3d": O3DMap, "nm": NMMap, "f2f": F2FMap}[args.model]
    m = Map(args.voxel, seq.K, args.depth_max)
    Km = tracker.model_intrinsics(seq.K)
    poses: List[np.ndarray] = []
    failures = 0
    reasons: Dict[str, int] = {}
    conds, iters, inl = [], [], []
    t_track = t_map = t_ray = 0.0
    T = np.eye(4)
    t0 = time.perf_counter()
    for i in range(len(seq)):
        depth, color = seq.depths[i], seq.colors[i]
        if i == 0:
            tracker.reset(T)
        else:
            ta = time.perf_counter()
            view = m.view(tracker.last_pose, Km)
            tb = time.perf_counter()
            res = tracker.track_depth(depth, color, seq.K, view)
            tc = time.perf_counter()
            t_ray += tb - ta
            t_track += tc - tb
            conds.append(res.condition)
            iters.append(res.iterations)
            inl.append(res.inlier_ratio)
            if res.ok:
                T = res.T_world_cam
            else:
                failures += 1
                reasons[res.reason] = reasons.get(res.reason, 0) + 1
                T = tracker.initial_guess()
                if args.verbose:
                    print(f"  frame {i}: {res.reason} inliers={res.inliers} rms={res.residual:.4f} "
                          f"cond={res.condition:.2e}")
        poses.append(T)
        if i == 0 or res.ok:
            ta = time.perf_counter()
            m.integrate(depth, color, T)
            t_map += time.perf_counter() - ta
    wall = time.perf_counter() - t0
    n = len(seq)
    out = {"method": f"ours ({args.model} map)", "frames": n, "failures": failures,
           "failure_reasons": reasons, "fps": n / wall, "ms_per_frame": wall / n * 1e3,
           "track_ms": t_track / max(n - 1, 1) * 1e3, "raycast_ms": t_ray / max(n - 1, 1) * 1e3,
           "integrate_ms": t_map / n * 1e3,
           "condition_p1_p50": [float(np.nanpercentile(conds, 1)), float(np.nanpercentile(conds, 50))],
           "iterations_mean": float(np.mean(iters)), "inlier_ratio_p5": float(np.percentile(inl, 5))}
    out.update(ate(poses, seq.gt))
    return out


def run_open3d(seq: Sequence, args) -> Dict[str, object]:
    import open3d as o3d
    import open3d.core as o3c
    dev = o3c.Device("CPU:0")
    intr = o3c.Tensor(seq.K.K, o3c.float64)
    T = o3c.Tensor(np.eye(4), o3c.float64)
    model = o3d.t.pipelines.slam.Model(args.voxel, 16, 40000, T, dev)
    h, w = seq.depths[0].shape
    frame = o3d.t.pipelines.slam.Frame(h, w, intr, dev)
    raycast = o3d.t.pipelines.slam.Frame(h, w, intr, dev)
    scale = seq.depth_scale
    raw = [o3d.t.geometry.Image(o3c.Tensor(np.round(d * scale).astype(np.uint16))) for d in seq.depths]
    cols = [o3d.t.geometry.Image(o3c.Tensor(c)) for c in seq.colors]
    poses, failures = [], 0
    t0 = time.perf_counter()
    for i in range(len(seq)):
        frame.set_data_from_image("depth", raw[i])
        frame.set_data_from_image("color", cols[i])
        if i > 0:
            try:
                result = model.track_frame_to_model(frame, raycast, scale, args.depth_max, 0.07)
                T = T @ result.transformation
            except RuntimeError:
                failures += 1
        poses.append(T.cpu().numpy().copy())
        model.update_frame_pose(i, T)
        model.integrate(frame, scale, args.depth_max, 8.0)
        model.synthesize_model_frame(raycast, scale, 0.1, args.depth_max, 8.0, False)
    wall = time.perf_counter() - t0
    n = len(seq)
    out = {"method": "open3d slam.Model", "frames": n, "failures": failures, "fps": n / wall,
           "ms_per_frame": wall / n * 1e3}
    out.update(ate(poses, seq.gt))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", nargs="+", default=["tum", "7scenes"], choices=["tum", "7scenes"])
    ap.add_argument("--frames", type=int, default=0, help="first N frames (0 = all shared)")
    ap.add_argument("--voxel", type=float, default=0.01)
    ap.add_argument("--depth-max", type=float, default=3.0)
    ap.add_argument("--model", choices=["nm", "o3d", "f2f"], default=None,
                    help="map for our tracker (default: nm when neural_mapping.raycast exists)")
    ap.add_argument("--base-width", type=int, default=TrackerConfig.base_width)
    ap.add_argument("--model-width", type=int, default=TrackerConfig.model_width)
    ap.add_argument("--iterations", type=int, nargs="+", default=list(TrackerConfig.iterations))
    ap.add_argument("--max-dist", type=float, nargs="+", default=list(TrackerConfig.max_dist_m))
    ap.add_argument("--huber", type=float, default=TrackerConfig.huber_m)
    ap.add_argument("--no-noise-weighting", dest="noise_weighting", action="store_false",
                    help="do not weight residuals by sigma(z) ~ z^2")
    ap.add_argument("--undistort", action="store_true", help="undistort TUM depth (plumb_bob)")
    ap.add_argument("--no-open3d", action="store_true")
    ap.add_argument("--no-ours", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "tracking.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model is None:
        try:
            import neural_mapping.raycast  # noqa: F401
            args.model = "nm"
        except ImportError:
            args.model = "o3d"
    rows = []
    for name in args.sequences:
        t = time.perf_counter()
        if name == "tum":
            seq = load_tum(DATA / "tum_fr1_xyz", args.frames, args.undistort)
        else:
            seq = load_7scenes(DATA / "7scenes_redkitchen", args.frames)
        print(f"{seq.name}: {len(seq)} frames loaded in {time.perf_counter() - t:.1f} s", flush=True)
        if not args.no_ours:
            r = run_ours(seq, args)
            r["sequence"] = seq.name
            rows.append(r)
            print(json.dumps(r), flush=True)
        if not args.no_open3d:
            r = run_open3d(seq, args)
            r["sequence"] = seq.name
            rows.append(r)
            print(json.dumps(r), flush=True)
    print()
    print(f"{'sequence':22s} {'method':22s} {'frames':>6s} {'ATE cm':>7s} {'ATE0 cm':>8s} "
          f"{'ms/frame':>9s} {'fps':>6s} {'fail':>5s}")
    for r in rows:
        print(f"{r['sequence']:22s} {r['method']:22s} {r['frames']:6d} {r['ate_rmse_cm']:7.2f} "
              f"{r['ate_first_frame_cm']:8.2f} {r['ms_per_frame']:9.1f} {r['fps']:6.1f} {r['failures']:5d}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in vars(args).items()}
    out.write_text(json.dumps({"config": meta, "torch_threads": torch.get_num_threads(),
                               "results": rows}, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
