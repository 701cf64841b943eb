"""Rigid-body geometry: quaternions, SO(3)/SE(3) exp/log, pose interpolation, TUM rows.

Conventions
    * Quaternions are ``(x, y, z, w)`` (TUM / ROS order), unit norm; functions that
      return one pick the sign with ``w >= 0``.
    * Poses are 4x4 homogeneous ``T_a_b`` (maps points of frame b to frame a);
      ``T_world_cam`` is camera-to-world.
    * Twists ``xi = (v, w)``: translation part first, then rotation (radians), so
      ``se3_exp(xi)`` has rotation ``so3_exp(w)`` and translation ``V(w) v``.
    * numpy functions work in float64.  The ``*_torch`` variants (used by the
      tracker) keep the input's dtype and device.
"""

from __future__ import annotations

import bisect
import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

_EPS = 1e-10


# ---------------------------------------------------------------- helpers
def hat(w) -> np.ndarray:
    """Skew-symmetric matrix ``[w]_x`` with ``hat(w) @ p == cross(w, p)``."""
    w = np.asarray(w, dtype=np.float64)
    return np.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])


def make_pose(R, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = np.asarray(R, dtype=np.float64)
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def inv_pose(T) -> np.ndarray:
    """Inverse of a rigid transform (exact: ``R^T``, ``-R^T t``)."""
    T = np.asarray(T, dtype=np.float64)
    R, t = T[:3, :3], T[:3, 3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ t
    return out


def orthonormalize(M) -> np.ndarray:
    """Closest rotation (SVD, det = +1) to a 3x3 matrix, or the 4x4 pose with its
    rotation block replaced by it (last row reset to ``[0 0 0 1]``)."""
    M = np.asarray(M, dtype=np.float64)
    if M.shape == (4, 4):
        out = np.eye(4)
        out[:3, :3] = orthonormalize(M[:3, :3])
        out[:3, 3] = M[:3, 3]
        return out
    if M.shape != (3, 3):
        raise ValueError(f"orthonormalize expects 3x3 or 4x4, got {M.shape}")
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt)) or 1.0])
    return U @ D @ Vt


# ------------------------------------------------------------ quaternions
def quat_normalize(q) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64).reshape(4)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < _EPS:
        raise ValueError(f"cannot normalise quaternion {q.tolist()}")
    q = q / n
    return -q if q[3] < 0 else q


def quat_to_rot(q) -> np.ndarray:
    """Rotation matrix of the quaternion ``(x, y, z, w)`` (normalised first)."""
    x, y, z, w = quat_normalize(q)
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz, wx, wy, wz = x * y, x * z, y * z, w * x, w * y, w * z
    return np.array([
        [1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy)],
        [2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx)],
        [2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy)]])


def rot_to_quat(R) -> np.ndarray:
    """Unit quaternion ``(x, y, z, w)``, ``w >= 0``, of a rotation matrix (Shepperd's method,
    stable for every angle; ``R`` is orthonormalised first if slightly off)."""
    R = np.asarray(R, dtype=np.float64)
    if np.abs(R @ R.T - np.eye(3)).max() > 1e-9:
        R = orthonormalize(R)
    tr = R[0, 0] + R[1, 1] + R[2, 2]
    i = int(np.argmax([R[0, 0], R[1, 1], R[2, 2], tr]))
    if i == 3:
        s = 2.0 * math.sqrt(max(1.0 + tr, 0.0))
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    elif i == 0:
        s = 2.0 * math.sqrt(max(1.0 + R[0, 0] - R[1, 1] - R[2, 2], 0.0))
        q = [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif i == 1:
        s = 2.0 * math.sqrt(max(1.0 + R[1, 1] - R[0, 0] - R[2, 2], 0.0))
        q = [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(max(1.0 + R[2, 2] - R[0, 0] - R[1, 1], 0.0))
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]
    return quat_normalize(q)


def quat_slerp(q0, q1, alpha: float) -> np.ndarray:
    """Spherical interpolation along the shortest arc (result has ``w >= 0``)."""
    q0, q1 = quat_normalize(q0), quat_normalize(q1)
    d = float(np.dot(q0, q1))
    if d < 0:
        q1, d = -q1, -d
    if d > 1 - 1e-12:
        return quat_normalize(q0 + alpha * (q1 - q0))
    th = math.acos(min(d, 1.0))
    s = math.sin(th)
    return quat_normalize((math.sin((1 - alpha) * th) * q0 + math.sin(alpha * th) * q1) / s)


# --------------------------------------------------------------------- SO(3)
def so3_exp(w) -> np.ndarray:
    """Rotation ``exp([w]_x)`` (Rodrigues, Taylor series near 0)."""
    w = np.asarray(w, dtype=np.float64).reshape(3)
    th2 = float(w @ w)
    th = math.sqrt(th2)
    W = hat(w)
    if th < 1e-6:
        A = 1.0 - th2 / 6.0
        B = 0.5 - th2 / 24.0
    else:
        A = math.sin(th) / th
        B = (1.0 - math.cos(th)) / th2
    return np.eye(3) + A * W + B * (W @ W)


def so3_log(R) -> np.ndarray:
    """Rotation vector ``w`` (``|w| <= pi``) with ``so3_exp(w) == R``; stable near 0 and pi."""
    q = rot_to_quat(R)
    v, w = q[:3], q[3]
    n = float(np.linalg.norm(v))
    if n < 1e-12:
        return 2.0 * v / max(w, _EPS)
    th = 2.0 * math.atan2(n, w)  # in [0, pi] because w >= 0
    return v * (th / n)


def rotation_angle(R) -> float:
    """Angle (radians, in [0, pi]) of a rotation matrix."""
    return float(np.linalg.norm(so3_log(R)))


def _V(w: np.ndarray) -> np.ndarray:
    th2 = float(w @ w)
    th = math.sqrt(th2)
    W = hat(w)
    if th < 1e-5:
        B = 0.5 - th2 / 24.0
        C = 1.0 / 6.0 - th2 / 120.0
    else:
        B = (1.0 - math.cos(th)) / th2
        C = (th - math.sin(th)) / (th2 * th)
    return np.eye(3) + B * W + C * (W @ W)


# --------------------------------------------------------------------- SE(3)
def se3_exp(xi) -> np.ndarray:
    """Pose ``exp(xi)`` of a twist ``xi = (v, w)`` (6,)."""
    xi = np.asarray(xi, dtype=np.float64).reshape(6)
    v, w = xi[:3], xi[3:]
    return make_pose(so3_exp(w), _V(w) @ v)


def se3_log(T) -> np.ndarray:
    """Twist ``(v, w)`` with ``se3_exp(se3_log(T)) == T``."""
    T = np.asarray(T, dtype=np.float64)
    w = so3_log(T[:3, :3])
    v = np.linalg.solve(_V(w), T[:3, 3])
    return np.concatenate([v, w])


def interpolate_pose(T0, T1, alpha: float) -> np.ndarray:
    """Pose between ``T0`` (alpha = 0) and ``T1`` (alpha = 1): translation lerp, rotation
    slerp (``R0 exp(alpha log(R0^T R1))``).  ``alpha`` outside [0, 1] extrapolates; to look
    a pose up in a trajectory (never extrapolated) use :func:`pose_at_stamp`."""
    T0 = np.asarray(T0, dtype=np.float64)
    T1 = np.asarray(T1, dtype=np.float64)
    R0, R1 = T0[:3, :3], T1[:3, :3]
    R = R0 @ so3_exp(alpha * so3_log(R0.T @ R1))
    t = (1.0 - alpha) * T0[:3, 3] + alpha * T1[:3, 3]
    return make_pose(orthonormalize(R), t)


# Statuses of pose_at_stamp.
STAMP_OK, STAMP_BEFORE, STAMP_AFTER, STAMP_GAP = "ok", "before", "after", "gap"


def pose_at_stamp(stamps: Sequence, poses: Sequence, t, max_gap=None) -> Tuple[str, Optional[np.ndarray]]:
    """The pose of a trajectory at stamp ``t``, never extrapolated: ``(status, T)``.

    ``stamps`` sorted ascending (a list or array; any unit, e.g. seconds or integer
    nanoseconds -- ``t`` and ``max_gap`` in the same unit), ``poses[i]`` the 4x4 pose at
    ``stamps[i]``.  Statuses (``T`` is None unless ``ok``):

    ``ok``      a copy of the pose at an equal stamp, else :func:`interpolate_pose` between
                the two samples that bracket ``t``;
    ``before``  ``t`` is older than the first sample;
    ``after``   ``t`` is newer than the last sample (or there is none);
    ``gap``     the bracketing samples are more than ``max_gap`` apart (None: no limit).

    The one lookup behind :meth:`PoseBuffer.query <neural_mapping.system.pose_buffer.PoseBuffer.query>`,
    the TUM ground truth and the rosbag pose topic."""
    n = len(stamps)
    if n == 0 or t > stamps[n - 1]:
        return STAMP_AFTER, None
    if t < stamps[0]:
        return STAMP_BEFORE, None
    j = bisect.bisect_left(stamps, t)
    if stamps[j] == t:
        return STAMP_OK, np.array(poses[j], dtype=np.float64)
    t0, t1 = stamps[j - 1], stamps[j]
    if max_gap is not None and t1 - t0 > max_gap:
        return STAMP_GAP, None
    return STAMP_OK, interpolate_pose(poses[j - 1], poses[j], float(t - t0) / float(t1 - t0))


def pose_distance(T0, T1) -> Tuple[float, float]:
    """``(translation metres, rotation radians)`` of ``inv(T0) @ T1``."""
    D = inv_pose(T0) @ np.asarray(T1, dtype=np.float64)
    return float(np.linalg.norm(D[:3, 3])), rotation_angle(D[:3, :3])


# ------------------------------------------------------------------ TUM rows
def pose_from_tq(t, q) -> np.ndarray:
    """4x4 pose from translation ``(x, y, z)`` and quaternion ``(qx, qy, qz, qw)``."""
    return make_pose(quat_to_rot(q), np.asarray(t, dtype=np.float64).reshape(3))


def pose_from_tum(row: Sequence[float]) -> Tuple[Optional[float], np.ndarray]:
    """``(stamp, T)`` from a TUM row ``[stamp] tx ty tz qx qy qz qw`` (8 values, or 7 without
    the stamp, then ``stamp`` is None).  Accepts a string line too."""
    if isinstance(row, str):
        row = [float(v) for v in row.split()]
    vals = np.asarray(row, dtype=np.float64).reshape(-1)
    if vals.size == 8:
        stamp, vals = float(vals[0]), vals[1:]
    elif vals.size == 7:
        stamp = None
    else:
        raise ValueError(f"a TUM row has 7 or 8 values, got {vals.size}")
    return stamp, pose_from_tq(vals[:3], vals[3:])


def pose_to_tum(T, stamp: Optional[float] = None) -> np.ndarray:
    """TUM row ``[stamp] tx ty tz qx qy qz qw`` (8 values with a stamp, else 7)."""
    T = np.asarray(T, dtype=np.float64)
    vals = np.concatenate([T[:3, 3], rot_to_quat(T[:3, :3])])
    return vals if stamp is None else np.concatenate([[float(stamp)], vals])


def format_tum_line(T, stamp: float) -> str:
    return " ".join(f"{v:.9f}" if i == 0 else f"{v:.8f}" for i, v in enumerate(pose_to_tum(T, stamp)))


# --------------------------------------------------------------------- torch
def hat_torch(w: torch.Tensor) -> torch.Tensor:
    """``[..., 3] -> [..., 3, 3]`` skew matrices."""
    z = torch.zeros_like(w[..., 0])
    return torch.stack([
        torch.stack([z, -w[..., 2], w[..., 1]], -1),
        torch.stack([w[..., 2], z, -w[..., 0]], -1),
        torch.stack([-w[..., 1], w[..., 0], z], -1)], -2)


def so3_exp_torch(w: torch.Tensor) -> torch.Tensor:
    """Batched Rodrigues: ``[..., 3] -> [..., 3, 3]`` (dtype/device of ``w``)."""
    th2 = (w * w).sum(-1, keepdim=True).unsqueeze(-1)
    th = torch.sqrt(th2)
    small = th < 1e-6
    safe = torch.where(small, torch.ones_like(th), th)
    A = torch.where(small, 1.0 - th2 / 6.0, torch.sin(safe) / safe)
    B = torch.where(small, 0.5 - th2 / 24.0, (1.0 - torch.cos(safe)) / (safe * safe))
    W = hat_torch(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(W)
    return eye + A * W + B * (W @ W)


def se3_exp_torch(xi: torch.Tensor) -> torch.Tensor:
    """Batched ``[..., 6] -> [..., 4, 4]`` (twist ``(v, w)``)."""
    v, w = xi[..., :3], xi[..., 3:]
    th2 = (w * w).sum(-1, keepdim=True).unsqueeze(-1)
    th = torch.sqrt(th2)
    small = th < 1e-5
    safe = torch.where(small, torch.ones_like(th), th)
    B = torch.where(small, 0.5 - th2 / 24.0, (1.0 - torch.cos(safe)) / (safe * safe))
    C = torch.where(small, 1.0 / 6.0 - th2 / 120.0, (safe - torch.sin(safe)) / (safe ** 3))
    W = hat_torch(w)
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand_as(W)
    R = so3_exp_torch(w)
    V = eye + B * W + C * (W @ W)
    t = (V @ v.unsqueeze(-1)).squeeze(-1)
    T = torch.zeros(xi.shape[:-1] + (4, 4), dtype=xi.dtype, device=xi.device)
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T
