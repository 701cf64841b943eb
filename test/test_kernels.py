"""The TorchScript kernels agree with their eager Python reference (the same source)."""

import numpy as np
import pytest
import torch

from neural_mapping import kernels
from neural_mapping.tracking.tracker import Tracker

from _synthetic_scene import K_QVGA as K, render_depth
from test_tracking import T0

pytestmark = pytest.mark.skipif(not hasattr(kernels.march, "eager"), reason="TorchScript disabled")


def test_image_kernels_match_eager():
    d = torch.from_numpy(render_depth(T0, K)).float()
    d[10:20, 10:40] = 0.0
    torch.testing.assert_close(kernels.down2(d, 0.03, 1e4), kernels.down2.eager(d, 0.03, 1e4), rtol=0, atol=0)
    v = torch.arange(d.shape[1], dtype=torch.float32)[None] * d / 300.0
    u = torch.arange(d.shape[0], dtype=torch.float32)[:, None] * d / 300.0
    for a, b in zip(kernels.normals(v, u, d, d, 0.05), kernels.normals.eager(v, u, d, d, 0.05)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_march_and_icp_match_eager(monkeypatch):
    from neural_mapping.backends.tsdf.volume import TSDFVolume
    from neural_mapping.config import MappingConfig
    from neural_mapping.grid.sampling import trilinear

    d0 = render_depth(T0, K)
    vol = TSDFVolume(voxel_size_m=0.02, truncation_m=0.08, depth_max_m=4.0, device="cpu")
    vol.integrate(d0, K, T0)
    Ks = K.scaled(0.5)
    scripted = vol.render(Ks, T0)
    monkeypatch.setattr(kernels, "march", kernels.march.eager)
    eager = vol.render(Ks, T0)
    assert scripted.valid.float().mean() > 0.8
    assert torch.equal(scripted.valid, eager.valid) and scripted.steps == eager.steps
    torch.testing.assert_close(scripted.depth, eager.depth, rtol=0, atol=1e-6)
    monkeypatch.undo()

    field = vol.field()
    pts = scripted.points_world[scripted.valid].T.contiguous()
    a = trilinear(field, pts, with_grad=True, with_color=True)
    monkeypatch.setattr(kernels, "trilinear", kernels.trilinear.eager)
    b = trilinear(field, pts, with_grad=True, with_color=True)
    monkeypatch.undo()
    assert a["sdf"].abs().median() < 0.05  # points on the surface
    for k in ("sdf", "weight", "grad", "color"):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)

    tr = Tracker.from_config(MappingConfig.from_flat({"depth_max_m": 4.0}), "cpu")
    view = tr.predict(vol, K, T0, d0)
    pyr, _ = tr._pyramid(render_depth(T0, K), K)
    L = pyr[-1]
    T = np.eye(4)
    T[:3, 3] = [0.01, -0.005, 0.0]
    R = torch.as_tensor(T[:3, :3], dtype=torch.float32)
    t = torch.as_tensor(T[:3, 3:4], dtype=torch.float32)
    Kv = view.intrinsics
    args = (L.P, L.N, L.A, R, t, view.table, Kv.fx, Kv.fy, Kv.cx, Kv.cy, Kv.width, Kv.height,
            0.05, 0.8, 0.01, 1, float(K.fx), False, 1024)
    M1, n1 = kernels.icp_system(*args)
    M2, n2 = kernels.icp_system.eager(*args)
    assert n1 == n2 > 1000
    torch.testing.assert_close(M1, M2, rtol=1e-6, atol=1e-9)
