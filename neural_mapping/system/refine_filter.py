"""The map->odom correction of ``external+refine``: a Kalman filter, then a low-pass.

The refined pose of a frame is ``C @ T_external``; ``C`` (map->odom) is what refinement
estimates.  Two sources of information, with different errors:

* the **odometry** is precise over short times but drifts: ``C`` changes slowly.  Modelled as
  a random walk of the odometry's error in the camera frame whose standard deviation grows by
  ``refine_odometry_drift_m_per_s`` and ``refine_odometry_drift_deg_per_s`` in one second
  (process noise ``Q_cam = diag(v^2 I, w^2 I) * 1 s * dt``; a stated odometry spec, or the
  drift of ``bench/bench_refine.py``'s simulated odometry);
* **ICP against the map** does not drift, but each frame's alignment is noisy, and noisier in
  some directions than others (a wall leaves the translation along it free).  Its covariance
  comes from its normal equations ``H`` (point-to-plane, the tracker's robust weights):
  ``sigma^2 H^-1`` with ``sigma^2`` the robust residual variance, *if* every residual were
  independent.  Neighbouring residuals share the map's and the depth calibration's errors, so
  the filter counts them as ``refine_icp_independent_points`` independent ones:
  ``R = sigma^2 (H / n)^-1 / min(n, refine_icp_independent_points)`` for ``n`` inliers
  (``bench/bench_gt_consistency.py`` measures it: aligning frames to a map fused at their
  ground-truth poses, ``6 / mean(e^T H e / rss)`` over the frames' errors ``e``).

The state is ``C`` and the 6x6 covariance ``P`` of its error as a left perturbation in the
map frame (``C_true = exp(d) C``, ``d`` = translation m, rotation rad).  Per frame:
:meth:`RefineFilter.predict` adds ``Q`` (moved into the map frame at the predicted pose) and
returns the ICP's initial guess ``C @ T_external``; :meth:`RefineFilter.update` fuses the ICP
result in information form, ``d = (I + P Lambda)^-1 P Lambda nu`` with ``Lambda = R^-1``
(singular in degenerate directions: there the correction does not move) and the innovation
``nu = log(T_icp @ inv(T_pred))``.  A confident ICP moves the correction, an uncertain one
(or one direction of it) hardly.

``refine_time_constant_s`` (tau) is expressed in the same terms: the correlation time of the
ICP's error.  Consecutive frames see the same map errors, so their ICP errors are not
independent: over tau there is about one independent measurement, and each frame's
information is scaled by ``dt / tau`` (at most 1; 0 = every frame independent).  In a
well-constrained direction the filter then settles to a low-pass whose time constant grows
like ``sqrt(tau)``; a weak direction stays slower still.  The correction is one estimate:
applied, integrated and the next initial guess (a separate low-pass after the filter built
the map with poses lagging the estimate ICP measured against: 7-Scenes got worse than the
input with it, see README).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from neural_mapping.geometry import hat, inv_pose, orthonormalize, se3_exp, se3_log


def adjoint(T: np.ndarray) -> np.ndarray:
    """6x6 adjoint of ``T`` for twists ``(v, w)``: ``exp(adjoint(T) xi) == T exp(xi) inv(T)``."""
    R, t = T[:3, :3], T[:3, 3]
    A = np.zeros((6, 6))
    A[:3, :3] = R
    A[:3, 3:] = hat(t) @ R
    A[3:, 3:] = R
    return A


class RefineFilter:
    """Kalman filter on the map->odom correction (module docstring); ``config`` is the
    :class:`~neural_mapping.config.TrackingConfig` section."""

    def __init__(self, config):
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.C = np.eye(4)  # the correction (map->odom)
        self.P = np.zeros((6, 6))  # covariance of its error (left, map frame)
        self.stamp: Optional[float] = None  # of the last predict
        self.update_stamp: Optional[float] = None  # of the last update

    def start(self, stamp: float) -> None:
        """The first frame: the map is built in the odometry frame, the correction is exact."""
        self.reset()
        self.stamp = self.update_stamp = float(stamp)

    def process_noise(self, T_world_cam: np.ndarray, dt: float) -> np.ndarray:
        """``Q`` over ``dt`` s in the map frame at the camera pose ``T_world_cam``."""
        c = self.config
        v = c.refine_odometry_drift_m_per_s
        w = np.radians(c.refine_odometry_drift_deg_per_s)
        Q_cam = np.diag([v * v] * 3 + [w * w] * 3) * (1.0 * dt)
        A = adjoint(T_world_cam)
        return A @ Q_cam @ A.T

    def predict(self, T_external: np.ndarray, stamp: float) -> np.ndarray:
        """Advance to ``stamp`` (the odometry drifts meanwhile); returns ``C @ T_external``."""
        dt = 0.0 if self.stamp is None else max(0.0, float(stamp) - self.stamp)
        self.stamp = float(stamp)
        T_pred = self.C @ T_external
        if dt > 0:
            self.P = self.P + self.process_noise(T_pred, dt)
        return T_pred

    def measurement_information(self, H: np.ndarray, inliers: int, rss: float,
                                T_world_ref: np.ndarray) -> np.ndarray:
        """``R^-1`` of an ICP result in the map frame (left perturbation): ``H`` its normal
        equations (left perturbation in the reference frame ``T_world_ref``), ``rss`` their
        robust residual sum of squares over ``inliers`` pairs."""
        n_eff = min(float(inliers), float(self.config.refine_icp_independent_points))
        Lam_ref = np.asarray(H, np.float64) * (n_eff / max(rss, 1e-12))
        A_inv = adjoint(inv_pose(T_world_ref))  # d (map) -> xi (reference frame)
        Lam = A_inv.T @ Lam_ref @ A_inv
        return 0.5 * (Lam + Lam.T)

    def update(self, T_pred: np.ndarray, T_icp: np.ndarray, information: np.ndarray) -> np.ndarray:
        """Fuse an ICP result ``T_icp`` (from ``T_pred``) with ``information`` (map frame);
        returns the new correction."""
        last, self.update_stamp = self.update_stamp, self.stamp
        tau = self.config.refine_time_constant_s
        if tau > 0 and last is not None:  # errors correlated over tau: dt / tau of one measurement
            information = information * min(1.0, max(0.0, (self.stamp - last) / tau))
        nu = se3_log(T_icp @ inv_pose(T_pred))
        G = np.linalg.inv(np.eye(6) + self.P @ information)
        d = G @ (self.P @ (information @ nu))
        P = G @ self.P
        self.P = 0.5 * (P + P.T)
        self.C = orthonormalize(se3_exp(d) @ self.C)
        return self.C

    def std(self) -> np.ndarray:
        """Standard deviations of the correction (map frame: m, m, m, rad, rad, rad)."""
        return np.sqrt(np.clip(np.diag(self.P), 0.0, None))
