"""Depth-noise handling of the tracker: residual weights from the Kinect v1 noise model
(Nguyen et al. 2012), symmetric point-to-plane ICP, the bilateral prefilter.  Seeded
synthetic frames with the axial Kinect noise of ``datasets.sensor_models``."""

import math

import numpy as np
import pytest
import torch

from neural_mapping import geometry as g
from neural_mapping import kernels
from neural_mapping.datasets.sensor_models import axial_kinect
from neural_mapping.tracking.model_view import ModelView

from test_tracking import DEG, K, MOTIONS, T0, render_depth, tracker


@pytest.fixture(scope="module")
def view():
    return ModelView.from_depth(render_depth(T0), K, T0)


def _mean_errors(view, seeds, noise_b=0.0019, **cfg):
    """Mean translation (m) and rotation (deg) error over seeded noisy frames."""
    tr = tracker(tracking_max_rms_m=0.05, **cfg)
    dts, drs = [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        delta = MOTIONS[seed % len(MOTIONS)]
        T1 = T0 @ g.se3_exp(delta)
        d = axial_kinect(render_depth(T1), rng, b=noise_b)
        res = tr.track_depth(d, K, view, T0)
        assert res.ok, (res.reason, res.info())
        dt, dr = g.pose_distance(T1, res.T_world_cam)
        dts.append(dt)
        drs.append(math.degrees(dr))
    return float(np.mean(dts)), float(np.mean(drs))


def test_noise_weighting_reduces_error_on_kinect_noise(view):
    """Heteroscedastic noise (twice the Kinect's axial sigma(z), 1-3.5 m scene): weighting the
    residuals by the noise model lowers the error of the estimate (measured: z2 0.96x / 0.95x,
    kinect 0.93x / 0.93x of the unweighted translation / rotation error).  Every valid pixel
    (tracking_point_stride 1): the margins above are small, and six seeds of every other pixel
    are too few to resolve them (z2 then 1.04x / 0.88x)."""
    seeds = range(6)
    flat = _mean_errors(view, seeds, 0.0038, tracking_depth_noise_weighting=False, tracking_point_stride=1)
    z2 = _mean_errors(view, seeds, 0.0038, tracking_noise_model="z2", tracking_point_stride=1)
    full = _mean_errors(view, seeds, 0.0038, tracking_noise_model="kinect", tracking_point_stride=1)
    assert z2[0] < flat[0] and z2[1] < flat[1], (z2, flat)
    assert full[0] < 0.95 * flat[0] and full[1] < 0.95 * flat[1], (full, flat)


@pytest.mark.parametrize("delta", [MOTIONS[3], MOTIONS[7], MOTIONS[8]])
def test_symmetric_icp_recovers_known_motion(view, delta):
    T1 = T0 @ g.se3_exp(delta)
    res = tracker(tracking_symmetric=True).track_depth(render_depth(T1), K, view, T0)
    assert res.ok, res.reason
    dt, dr = g.pose_distance(T1, res.T_world_cam)
    assert dt < 0.002 and math.degrees(dr) < 0.2, (dt, math.degrees(dr))


def test_bilateral_smooths_planes_and_keeps_edges():
    rng = np.random.default_rng(0)
    d = np.full((60, 80), 2.0, np.float32)
    d[:, 40:] = 2.5  # a 50 cm step
    d[20:25, 10:15] = 0.0  # a hole
    noisy = torch.from_numpy(axial_kinect(d, rng))
    out = kernels.bilateral(noisy, 2, 1.5, 0.003)
    inner = torch.zeros(d.shape, dtype=torch.bool)
    inner[3:-3, 3:37] = True
    inner &= torch.from_numpy(d) > 0
    assert float(out[inner].std()) < 0.5 * float(noisy[inner].std())
    assert bool((out[20:25, 10:15] == 0).all())  # holes stay holes
    assert float((out[:, 38:40] - 2.0).abs().max()) < 0.03  # no bleeding across the step
    assert float((out[:, 40:42] - 2.5).abs().max()) < 0.04


@pytest.mark.skipif(not hasattr(kernels.icp_system, "eager"), reason="TorchScript disabled")
@pytest.mark.parametrize("noise_model,symmetric", [(2, False), (3, False), (3, True), (0, True)])
def test_new_kernel_paths_match_eager(view, noise_model, symmetric):
    d = render_depth(T0 @ g.se3_exp(MOTIONS[7]))
    tr = tracker()
    pyr, _ = tr._pyramid(d, K)
    L = pyr[-1]
    R = torch.eye(3)
    t = torch.zeros(3, 1)
    Kv = view.intrinsics
    args = (L.P, L.N, L.A, R, t, view.table, Kv.fx, Kv.fy, Kv.cx, Kv.cy, Kv.width, Kv.height,
            0.05, 0.8, 0.01, noise_model, float(K.fx), symmetric, 1024)
    M1, n1 = kernels.icp_system(*args)
    M2, n2 = kernels.icp_system.eager(*args)
    assert n1 == n2 > 1000
    torch.testing.assert_close(M1, M2, rtol=1e-5, atol=1e-8)
    x = torch.from_numpy(d)
    torch.testing.assert_close(kernels.bilateral(x, 2, 1.5, 0.003),
                               kernels.bilateral.eager(x, 2, 1.5, 0.003), rtol=1e-6, atol=1e-6)
