"""Ray casting: analytic scenes fused then rendered back; real 7-Scenes data."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from neural_mapping.grid.raycast import RaycastResult, depth_range_from_depth, raycast, render_shaded
from neural_mapping.backends.tsdf.volume import TSDFVolume
from neural_mapping.types import CameraIntrinsics, depth_from_uint16

from test_tsdf import K_MED, TILTED_C, TILTED_N, TRUNC, VOX, look_at, plane_depth, sphere_depth, volume


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def cast(vol, K, T, **kw):
    """:func:`raycast` of a TSDF backend's field over its depth range."""
    return raycast(vol.field(), K, T, depth_min_m=vol.depth_min_m, depth_max_m=vol.depth_max_m, **kw)


def fuse(vol, depth_fn, poses, K=K_MED):
    for T in poses:
        vol.integrate(depth_fn(K, T), K, T)


def test_plane_rendered_back():
    vol = volume()
    poses = [look_at([x, -0.1, 0.0], [0.0, 0.0, 1.0]) for x in (-0.1, 0.0, 0.1)]
    fuse(vol, lambda K, T: plane_depth(K, T, TILTED_N, TILTED_C), poses)
    T = look_at([0.05, -0.05, 0.05], [0.0, 0.0, 1.0])
    r = vol.render(K_MED, T)
    assert isinstance(r, RaycastResult) and r.depth.shape == (K_MED.height, K_MED.width)
    truth = plane_depth(K_MED, T, TILTED_N, TILTED_C)
    valid = r.valid.numpy()
    assert valid.mean() > 0.9
    err = np.abs(r.depth.numpy() - truth)[valid]
    assert np.median(err) < 0.1 * VOX and err.max() < 0.5 * VOX
    assert np.all(r.depth.numpy()[~valid] == 0)
    ang = angle_deg(r.normals_world.numpy()[valid], TILTED_N[None])
    assert np.median(ang) < 2.0 and np.percentile(ang, 95) < 5.0
    # Points lie on the plane and are consistent with the depth.
    pts = r.points_world.numpy()[valid]
    assert np.abs(pts @ TILTED_N - TILTED_C).max() < 0.5 * VOX


def test_sphere_rendered_back_and_misses_where_empty():
    centre, radius = np.array([0.0, 0.0, 1.2]), 0.3
    vol = volume()
    eyes = [[0.0, 0.0, 0.0], [0.3, 0.0, 0.1], [-0.3, 0.1, 0.1], [0.0, -0.3, 0.1], [0.0, 0.3, 0.1]]
    fuse(vol, lambda K, T: sphere_depth(K, T, centre, radius), [look_at(e, centre) for e in eyes])
    T = look_at([0.1, -0.05, 0.0], centre)
    r = vol.render(K_MED, T)
    truth = sphere_depth(K_MED, T, centre, radius)
    valid = r.valid.numpy()
    hit = truth > 0
    # Misses where the sphere is not (2 pixels = 1.5 cm of slack at the silhouette, where
    # the fused surface bulges out by about a voxel: projective distances at grazing angles).
    border = hit.copy()
    for _ in range(2):
        for sh in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            border |= np.roll(border, sh, axis=(0, 1))
    assert not np.any(valid & ~border)
    # Where the sphere faces the camera: depth within half a voxel, normals within degrees.
    pts_true = T[:3, 3] + (np.stack(np.meshgrid((np.arange(K_MED.width) - K_MED.cx) / K_MED.fx,
                                                (np.arange(K_MED.height) - K_MED.cy) / K_MED.fy),
                                    -1) @ T[:3, :2].T + T[:3, 2]) * truth[..., None]
    n_true = (pts_true - centre) / radius
    ray = pts_true - T[:3, 3]
    with np.errstate(invalid="ignore"):  # rays that miss have ray = 0
        cos = np.abs((ray / np.linalg.norm(ray, axis=-1, keepdims=True) * n_true).sum(-1))
    facing = hit & (cos > math.cos(math.radians(60)))
    assert (valid & facing).sum() > 0.97 * facing.sum()
    m = valid & facing
    err = np.abs(r.depth.numpy() - truth)[m]
    assert np.median(err) < 0.15 * VOX and np.percentile(err, 99) < 0.5 * VOX, \
        (np.median(err), np.percentile(err, 99), err.max())
    ang = angle_deg(r.normals_world.numpy()[m], n_true[m])
    # Trilinear-gradient normals of a 2 cm grid on a 30 cm sphere.
    assert np.median(ang) < 3.0 and np.percentile(ang, 95) < 8.0, (np.median(ang), np.percentile(ang, 95))


def test_lower_resolution_and_shaded_render():
    vol = volume()
    fuse(vol, lambda K, T: plane_depth(K, T, TILTED_N, TILTED_C), [np.eye(4)])
    color = np.full((K_MED.height, K_MED.width, 3), (10, 200, 30), np.uint8)
    vol.integrate(plane_depth(K_MED, np.eye(4), TILTED_N, TILTED_C), K_MED, np.eye(4), color)
    for f in (0.5, 0.25):
        K = K_MED.scaled(f)
        r = vol.render(K, np.eye(4))
        assert r.depth.shape == (K.height, K.width) and r.valid.float().mean() > 0.9
        truth = plane_depth(K, np.eye(4), TILTED_N, TILTED_C)
        inner = r.valid.numpy().copy()  # away from the edge of the (single) observed view
        inner[:2], inner[-2:], inner[:, :2], inner[:, -2:] = False, False, False, False
        assert np.abs(r.depth.numpy() - truth)[inner].max() < 0.5 * VOX
    r = vol.render(K_MED, np.eye(4))
    torch.testing.assert_close(r.color[r.valid].mean(0), torch.tensor([10.0, 200.0, 30.0]) / 2,
                               atol=1.0, rtol=0)  # first frame had no color: (0 + c) / 2
    img = render_shaded(r)
    assert img.shape == (K_MED.height, K_MED.width, 3) and img.dtype == np.uint8
    assert np.all(img[~r.valid.numpy()] == 0) and img[r.valid.numpy()].max() > 0
    grey = render_shaded(r, use_color=False, light_dir=(0, 0, -1))
    g = grey[r.valid.numpy()].astype(float)
    assert np.all(g[:, 0] == g[:, 1]) and g.mean() > 100
    # Nothing mapped in view: all misses.
    away = look_at([0.0, 0.0, 0.0], [0.0, 0.0, -1.0])
    assert not vol.render(K_MED.scaled(0.25), away).valid.any()


def _sphere_and_plane(K, T, centre, radius):
    """A sphere in front of a tilted plane (depth edges at the silhouette)."""
    sph = sphere_depth(K, T, centre, radius)
    pla = plane_depth(K, T, TILTED_N, TILTED_C + 0.6)
    return np.where(sph > 0, np.minimum(sph, np.where(pla > 0, pla, np.inf)), pla).astype(np.float32)


def test_depth_range_hint_and_dense_tail_agree_with_the_full_march():
    """The tracker's fast paths render the same surface as the plain march: rays bounded by
    the depth just fused at this pose (``depth_range``), and the dense finish of the last
    marching rays (``tail_fraction``)."""
    centre, radius = np.array([0.0, 0.0, 1.0]), 0.25
    vol = volume()
    eyes = [[0.0, 0.0, 0.0], [0.2, 0.0, 0.05], [-0.2, 0.1, 0.05]]
    for e in eyes:
        T = look_at(e, centre)
        vol.integrate(_sphere_and_plane(K_MED, T, centre, radius), K_MED, T)
    T = look_at(eyes[-1], centre)
    depth = _sphere_and_plane(K_MED, T, centre, radius)
    depth[:20, :30] = 0.0  # a hole: those rays get no hint and march the whole range
    K = K_MED.scaled(0.5)
    truth = torch.from_numpy(_sphere_and_plane(K, T, centre, radius))
    full = cast(vol, K, T, tail_fraction=0.0)
    assert full.valid.float().mean() > 0.9
    for kw in ({}, {"tail_fraction": 1.0},  # everything but the first step sampled densely
               {"depth_range": depth_range_from_depth(depth, K, 1.5 * TRUNC, dilate_px=0)},
               {"depth_range": depth_range_from_depth(depth, K, 1.5 * TRUNC)}):
        r = cast(vol, K, T, **kw)
        assert abs(int(r.valid.sum()) - int(full.valid.sum())) <= 0.01 * full.valid.sum(), kw
        m = r.valid & (truth > 0)
        err = (r.depth - truth)[m].abs()
        # as accurate as the full march (median 0.1 mm, p95 1.6 mm, p99 7 mm: silhouettes)
        assert err.median() < 0.05 * VOX and err.quantile(0.95) < 0.25 * VOX, (kw, err.quantile(0.95))
        assert err.quantile(0.99) < 0.5 * VOX, (kw, err.quantile(0.99))
        if kw:
            assert r.steps < full.steps / 2, (kw, r.steps, full.steps)
    # the hole's rays found the surface without a hint
    assert r.valid[:8, :12].sum() >= 0.95 * full.valid[:8, :12].sum() > 0


def test_fast_render_is_the_full_render_without_color():
    """``fast`` (the tracker's model view) puts the points where the full refinement does and
    takes the normal at the interpolated crossing: the same surface, normals as accurate."""
    vol = volume()
    poses = [look_at([x, -0.1, 0.0], [0.0, 0.0, 1.0]) for x in (-0.1, 0.0, 0.1)]
    fuse(vol, lambda K, T: plane_depth(K, T, TILTED_N, TILTED_C), poses)
    T = look_at([0.05, -0.05, 0.05], [0.0, 0.0, 1.0])
    K = K_MED.scaled(0.5)
    full = vol.render(K, T, color=False)
    fast = vol.render(K, T, color=False, fast=True)
    assert torch.equal(full.valid, fast.valid) and full.valid.float().mean() > 0.9
    torch.testing.assert_close(fast.depth, full.depth, rtol=0, atol=0)
    m = full.valid.numpy()
    a_full, a_fast = (angle_deg(r.normals_world.numpy()[m], TILTED_N[None]) for r in (full, fast))
    # measured: median 1.50 / 1.51 deg, p95 4.64 / 4.69 deg
    assert np.median(a_fast) < 2.0 and np.percentile(a_fast, 95) < 5.0
    assert abs(np.median(a_fast) - np.median(a_full)) < 0.2
    assert not fast.color.any()


def test_depth_range_from_depth():
    K = CameraIntrinsics(4, 2, 2.0, 2.0, 1.5, 0.5)  # 8x4 depth -> 2x2 blocks per pixel
    d = np.zeros((4, 8), np.float32)
    d[0:2, 0:2] = [[1.0, 2.0], [0.0, np.nan]]  # pixel (0, 0): min 1, max 2
    d[2:4, 6:8] = [[3.0, 3.5], [0.0, 0.0]]  # pixel (1, 3)
    near, far = depth_range_from_depth(d, K, 0.1, dilate_px=0)
    np.testing.assert_allclose(near.numpy(), [[0.9, 0, 0, 0], [0, 0, 0, 2.9]], atol=1e-6)
    np.testing.assert_allclose(far.numpy(), [[2.1, 0, 0, 0], [0, 0, 0, 3.6]], atol=1e-6)
    near, far = depth_range_from_depth(d, K, 0.1)  # empty pixels take their neighbours' range
    np.testing.assert_allclose(near.numpy(), [[0.9, 0.9, 2.9, 2.9], [0.9, 0.9, 2.9, 2.9]], atol=1e-6)
    np.testing.assert_allclose(far.numpy(), [[2.1, 2.1, 3.6, 3.6], [2.1, 2.1, 3.6, 3.6]], atol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        depth_range_from_depth(np.zeros((5, 8), np.float32), K, 0.1)


def test_bad_arguments():
    vol = volume()
    with pytest.raises(TypeError, match="VoxelField"):
        raycast(vol.grid, K_MED, np.eye(4), depth_min_m=0.1, depth_max_m=3.0)
    with pytest.raises(ValueError, match="depth_min_m < depth_max_m"):
        raycast(vol.field(), K_MED, np.eye(4), depth_min_m=3.0, depth_max_m=3.0)
    with pytest.raises(TypeError, match="CameraIntrinsics"):
        cast(vol, None, np.eye(4))
    with pytest.raises(ValueError, match="not rigid"):
        cast(vol, K_MED, np.diag([2.0, 1.0, 1.0, 1.0]))
    # fast renders color at the interpolated crossing (the tracker's photometric model view)
    fast_color = cast(vol, K_MED, np.eye(4), fast=True, with_color=True)
    assert fast_color.color.shape == (K_MED.height, K_MED.width, 3)
    with pytest.raises(ValueError, match="depth_range maps"):
        cast(vol, K_MED, np.eye(4), depth_range=(np.ones((2, 2)), np.ones((2, 2))))
    with pytest.raises(ValueError, match="light_dir"):
        render_shaded(cast(vol, K_MED.scaled(0.25), np.eye(4)), light_dir=(0, 0, 0))


def _load_7scenes(root: Path, index: int):
    from PIL import Image

    depth = depth_from_uint16(np.array(Image.open(root / f"frame-{index:06d}.depth.png")), 1000.0)
    pose = np.loadtxt(root / f"frame-{index:06d}.pose.txt")
    return depth, pose


def test_real_data_fused_map_matches_measured_depth(redkitchen):
    """7-Scenes frames 0-99 (every 3rd, to keep it fast) fused at 2 cm; the raycast at a
    GT pose agrees with that frame's measured depth."""
    K = CameraIntrinsics.from_matrix(np.loadtxt(redkitchen / "camera-intrinsics.txt"), 640, 480)
    vol = TSDFVolume(voxel_size_m=0.02, truncation_m=0.08, depth_max_m=3.0, device="cpu")
    for i in range(0, 100, 3):
        depth, pose = _load_7scenes(redkitchen, i)
        vol.integrate(depth, K, pose)
    depth, pose = _load_7scenes(redkitchen, 50)  # not fused
    r = vol.render(K.scaled(0.5), pose)
    measured = torch.from_numpy(depth[::2, ::2].copy())  # pixel centres of the half-res image
    m = r.valid & (measured > 0)
    assert m.float().mean() > 0.8
    err = (r.depth - measured)[m].abs()
    assert err.median() < 0.015
