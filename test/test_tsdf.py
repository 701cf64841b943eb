"""TSDF fusion: analytic scenes rendered as exact depth images from known poses."""

import math

import numpy as np
import pytest
import torch

from neural_mapping.config import MappingConfig
from neural_mapping.grid.voxel_grid import CapacityError, VoxelBlockGrid
from neural_mapping.backends.tsdf.integrate import integrate, touched_blocks
from neural_mapping.backends.tsdf.volume import TSDFVolume
from neural_mapping.types import CameraIntrinsics, RGBDFrame

VOX = 0.02
TRUNC = 4 * VOX
K_SMALL = CameraIntrinsics(80, 60, 60.0, 60.0, 39.5, 29.5)
# Pixels of ~8 mm at 1 m: the nearest-pixel depth error stays well inside half a voxel.
K_MED = CameraIntrinsics(160, 120, 120.0, 120.0, 79.5, 59.5)


def rays(K: CameraIntrinsics) -> np.ndarray:
    v, u = np.mgrid[0:K.height, 0:K.width].astype(np.float64)
    return np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u)], axis=-1)


def look_at(eye, target, up=(0.0, -1.0, 0.0)) -> np.ndarray:
    """T_world_cam of a camera at ``eye`` looking at ``target`` (x right, y down, z forward)."""
    eye, target, up = (np.asarray(x, dtype=np.float64) for x in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(-up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T


def plane_depth(K, T, n, c) -> np.ndarray:
    """Depth (camera z) of the plane ``n . p = c`` (world) seen from ``T``; 0 where missed."""
    r = rays(K) @ T[:3, :3].T  # world direction of the z = 1 ray
    denom = r @ n
    z = (c - n @ T[:3, 3]) / np.where(np.abs(denom) > 1e-9, denom, np.nan)
    return np.where(np.isfinite(z) & (z > 0), z, 0.0).astype(np.float32)


def sphere_depth(K, T, centre, radius) -> np.ndarray:
    r = rays(K) @ T[:3, :3].T
    oc = T[:3, 3] - centre
    a = (r * r).sum(-1)
    b = 2 * r @ oc
    c = oc @ oc - radius ** 2
    disc = b * b - 4 * a * c
    z = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    return np.where((disc > 0) & (z > 0), z, 0.0).astype(np.float32)


def voxel_centres(grid: VoxelBlockGrid) -> torch.Tensor:
    """World centres ``[num_blocks, B, B, B, 3]`` of all allocated voxels."""
    B = grid.block_size
    r = torch.arange(B)
    off = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1)
    vox = grid.active_coords().to(torch.float64)[:, None, None, None, :] * B + off
    return (vox + 0.5) * grid.voxel_size_m


def nearest_pixel(K, T, pts):
    """Nearest pixel (u, v) and camera z of world points ``[..., 3]`` (numpy)."""
    pc = (pts - T[:3, 3]) @ T[:3, :3]
    z = pc[..., 2]
    u = np.floor(K.fx * pc[..., 0] / z + K.cx + 0.5).astype(np.int64)
    v = np.floor(K.fy * pc[..., 1] / z + K.cy + 0.5).astype(np.int64)
    return u, v, z


def volume(**kw) -> TSDFVolume:
    args = dict(voxel_size_m=VOX, truncation_m=TRUNC, depth_min_m=0.1, depth_max_m=4.0,
                max_weight=64.0, device="cpu")
    args.update(kw)
    return TSDFVolume(**args)


TILTED_N = np.array([0.0, math.sin(math.radians(20)), -math.cos(math.radians(20))])
TILTED_C = -math.cos(math.radians(20))  # plane through (0, 0, 1), tilted 20 degrees about x


def check_against_truth(vol, T, hit_depth, euclid, normal, tol=0.5 * VOX):
    """Stored tsdf vs (1) the analytic *projective* distance (exact surface depth along the
    voxel's own ray minus its z, as KinectFusion/Open3D define the TSDF) within half a
    voxel; (2) the Euclidean signed distance: same sign everywhere in the band, and
    within half a voxel near the surface where it faces the camera (the projective
    distance is the Euclidean one divided by cos(ray, normal))."""
    g = vol.grid
    pts = voxel_centres(g).numpy()
    pc = (pts - T[:3, 3]) @ T[:3, :3]
    z = pc[..., 2]
    ray_world = (pc / z[..., None]) @ T[:3, :3].T  # the voxel's z = 1 ray
    proj = hit_depth(T[:3, 3], ray_world) - z
    eu = euclid(pts)
    tsdf = g.active("tsdf").numpy().astype(np.float64)
    w = g.active("weight").numpy()
    ray_unit = ray_world / np.linalg.norm(ray_world, axis=-1, keepdims=True)
    cos = np.abs((ray_unit * normal(pts)).sum(-1))
    # Beyond ~60 degrees of incidence the depth changes by over a voxel within a pixel.
    band = (w > 0) & (np.abs(proj) < TRUNC - VOX) & (cos > 0.5)
    assert band.sum() > 500
    err = np.abs(tsdf[band] * TRUNC - proj[band])
    assert err.max() < tol, f"max |tsdf - projective sdf| = {err.max():.4f} m"
    near = (w > 0) & (np.abs(eu) < 1.5 * VOX) & (cos > math.cos(math.radians(30)))
    assert near.sum() > 100
    err = np.abs(tsdf[near] * TRUNC - eu[near])
    assert err.max() < tol, f"max |tsdf - sdf| near the surface = {err.max():.4f} m"
    clear = (w > 0) & (np.abs(eu) > 0.5 * VOX) & (np.abs(eu) < TRUNC)
    assert (np.sign(tsdf[clear]) == np.sign(eu[clear])).all()
    # Free space in front of the band reads exactly +1.
    front = (w > 0) & (proj > TRUNC + VOX)
    assert front.sum() > 0 and np.all(tsdf[front] == 1.0)


def plane_hit(n, c):
    def hit(o, r):
        den = r @ n
        return np.where(np.abs(den) > 1e-9, (c - n @ o) / np.where(den == 0, 1, den), np.nan)
    return hit


def sphere_hit(centre, radius):
    def hit(o, r):
        oc = o - centre
        a = (r * r).sum(-1)
        b = 2 * r @ oc
        disc = b * b - 4 * a * (oc @ oc - radius ** 2)
        return np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.nan)
    return hit


def test_plane_tsdf_matches_signed_distance():
    T = look_at([0.1, -0.2, 0.0], [0.0, 0.0, 1.0])
    vol = volume()
    d = plane_depth(K_MED, T, TILTED_N, TILTED_C)
    stats = vol.integrate(d, K_MED, T)
    assert stats["blocks_new"] == stats["blocks_total"] == vol.grid.num_blocks > 0
    # Signed distance, positive on the camera side (n points towards the camera).
    check_against_truth(vol, T, plane_hit(TILTED_N, TILTED_C), lambda p: p @ TILTED_N - TILTED_C,
                        lambda p: np.broadcast_to(TILTED_N, p.shape))


def test_sphere_tsdf_matches_signed_distance():
    K = K_MED
    centre, radius = np.array([0.1, -0.05, 1.3]), 0.35
    vol = volume()
    T = look_at([0.0, 0.0, 0.0], centre)
    vol.integrate(sphere_depth(K, T, centre, radius), K, T)
    check_against_truth(vol, T, sphere_hit(centre, radius),
                        lambda p: np.linalg.norm(p - centre, axis=-1) - radius,
                        lambda p: (p - centre) / np.linalg.norm(p - centre, axis=-1, keepdims=True))


def test_weights_accumulate_and_saturate():
    T = np.eye(4)
    d = plane_depth(K_SMALL, T, TILTED_N, TILTED_C)
    vol = volume(max_weight=3.0)
    vol.integrate(d, K_SMALL, T)
    t1 = vol.grid.active("tsdf").clone()
    w1 = vol.grid.active("weight").clone()
    seen = w1 > 0
    assert torch.all(w1[seen] == 1.0)
    for k in range(2, 6):
        vol.integrate(d, K_SMALL, T)
        w = vol.grid.active("weight")
        assert torch.all(w[seen] == min(k, 3.0))
        assert torch.all(w[~seen] == 0)
        torch.testing.assert_close(vol.grid.active("tsdf"), t1, rtol=0, atol=1e-6)


def test_weighted_average_of_two_depths_and_max_weight_rule():
    T = np.eye(4)
    d1 = np.full((K_SMALL.height, K_SMALL.width), 1.00, np.float32)
    d2 = np.full_like(d1, 1.03)
    d3 = np.full_like(d1, 0.98)

    def obs(vol, d):
        zc = voxel_centres(vol.grid)[..., 2].to(torch.float32)
        return torch.clamp((float(d[0, 0]) - zc) / TRUNC, max=1.0)

    vol = volume(max_weight=64.0)
    vol.integrate(d1, K_SMALL, T)
    v1 = obs(vol, d1)
    vol.integrate(d2, K_SMALL, T)
    n = vol.grid.num_blocks
    v1 = torch.cat([v1, torch.ones((n - v1.shape[0],) + v1.shape[1:])])  # new blocks (not hit)
    v2 = obs(vol, d2)
    w = vol.grid.active("weight")
    both = (w == 2)
    assert both.sum() > 1000
    expect = (1 * v1 + 1 * v2) / 2  # V = (W V + w v) / (W + w)
    torch.testing.assert_close(vol.grid.active("tsdf")[both], expect[both], rtol=0, atol=2e-6)

    # max_weight = 1: the stored weight stays 1 and each frame has a fixed share 1/2.
    vol = volume(max_weight=1.0)
    for d in (d1, d2, d3):
        vol.integrate(d, K_SMALL, T)
    w = vol.grid.active("weight")
    assert torch.all((w == 0) | (w == 1))
    vs = [obs(vol, d) for d in (d1, d2, d3)]
    expect = ((vs[0] + vs[1]) / 2 + vs[2]) / 2
    sel = (w == 1) & (voxel_centres(vol.grid)[..., 2] < 0.98 + TRUNC - 0.01).to(torch.bool)
    sel &= (torch.stack(vs) > -1).all(dim=0)
    torch.testing.assert_close(vol.grid.active("tsdf")[sel], expect[sel], rtol=0, atol=2e-6)


def test_color_fused_with_the_same_weights():
    T = np.eye(4)
    d = np.full((K_SMALL.height, K_SMALL.width), 1.0, np.float32)
    red = np.zeros((K_SMALL.height, K_SMALL.width, 3), np.uint8)
    red[..., 0] = 200
    blue = np.zeros_like(red)
    blue[..., 2] = 100
    vol = volume()
    vol.integrate(d, K_SMALL, T, red)
    vol.integrate(d, K_SMALL, T, blue)
    c = vol.grid.active("color")
    w = vol.grid.active("weight")
    torch.testing.assert_close(c[w == 2], torch.tensor([100.0, 0.0, 50.0]).expand_as(c[w == 2]))
    # integrate_color=False leaves color alone.
    vol = volume(integrate_color=False)
    vol.integrate(d, K_SMALL, T, red)
    assert torch.all(vol.grid.active("color") == 0)


def test_invalid_depth_leaves_voxels_untouched():
    T = np.eye(4)
    d = plane_depth(K_SMALL, T, TILTED_N, TILTED_C)
    col = np.full((K_SMALL.height, K_SMALL.width, 3), 77, np.uint8)
    vol = volume(depth_max_m=1.3)
    vol.integrate(d, K_SMALL, T, col)
    snap = {k: v.clone() for k, v in vol.grid.state_dict()["attrs"].items()}
    n = vol.grid.num_blocks

    # All invalid (0, NaN, beyond depth_max): nothing changes, bit for bit.
    bad = np.zeros_like(d)
    bad[::2] = np.nan
    bad[:, ::3] = 5.0
    vol.integrate(bad, K_SMALL, T, col)
    assert vol.grid.num_blocks == n
    for k, v in vol.grid.state_dict()["attrs"].items():
        assert torch.equal(v, snap[k]), k

    # Left half invalid: voxels whose nearest pixel is in the left half are untouched.
    half = d.copy()
    half[:, :K_SMALL.width // 2] = np.where(np.arange(K_SMALL.height)[:, None] % 2, 0.0, np.nan)
    vol.integrate(half, K_SMALL, T, col)
    u, v, z = nearest_pixel(K_SMALL, T, voxel_centres(vol.grid).numpy()[:n])
    left = torch.from_numpy((u < K_SMALL.width // 2) | (z <= 0))
    for k, val in vol.grid.state_dict()["attrs"].items():
        assert torch.equal(val[:n][left], snap[k][left]), k
    right_seen = ~left & (snap["weight"] > 0)
    assert torch.all(vol.grid.active("weight")[:n][right_seen] == 2)


def test_capacity_error_is_clear_and_map_unchanged():
    T = np.eye(4)
    d = plane_depth(K_SMALL, T, TILTED_N, TILTED_C)
    vol = volume(initial_capacity=16, max_capacity=16)
    with pytest.raises(CapacityError, match="max_capacity_blocks is 16"):
        vol.integrate(d, K_SMALL, T)
    assert vol.grid.num_blocks == 0
    assert torch.all(vol.grid.attrs["weight"] == 0)


def test_boundary_checks():
    T = np.eye(4)
    d = np.ones((K_SMALL.height, K_SMALL.width), np.float32)
    vol = volume()
    with pytest.raises(ValueError, match="depth must be"):
        vol.integrate(d[None], K_SMALL, T)
    with pytest.raises(TypeError, match="float32"):
        vol.integrate(d.astype(np.float64), K_SMALL, T)
    with pytest.raises(ValueError, match="intrinsics"):
        vol.integrate(d[:, :-1], K_SMALL, T)
    with pytest.raises(TypeError, match="uint8"):
        vol.integrate(d, K_SMALL, T, np.zeros(d.shape + (3,), np.float32))
    with pytest.raises(ValueError, match="color must be"):
        vol.integrate(d, K_SMALL, T, np.zeros(d.shape + (4,), np.uint8))
    with pytest.raises(ValueError, match="not rigid"):
        vol.integrate(d, K_SMALL, np.diag([1.1, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="4x4"):
        vol.integrate(d, K_SMALL, np.eye(3))
    with pytest.raises(TypeError, match="CameraIntrinsics"):
        vol.integrate(d, None, T)
    frame = RGBDFrame(depth=d, intrinsics=K_SMALL)
    with pytest.raises(ValueError, match="no pose"):
        vol.integrate(frame)
    with pytest.raises(ValueError, match="truncation_m"):
        TSDFVolume(voxel_size_m=0.02, truncation_m=-1.0)
    with pytest.raises(ValueError, match="depth_min_m"):
        TSDFVolume(voxel_size_m=0.02, depth_min_m=2.0, depth_max_m=1.0)
    assert vol.grid.num_blocks == 0


def test_frame_input_from_config_and_sampling():
    cfg = MappingConfig.from_flat({"voxel_size_m": 0.02, "truncation_vox": 4.0, "device": "cpu",
                                   "depth_max_m": 4.0})
    vol = TSDFVolume.from_config(cfg)
    assert vol.truncation_m == pytest.approx(0.08) and vol.grid.device.type == "cpu"
    T = np.eye(4)
    d = plane_depth(K_SMALL, T, TILTED_N, TILTED_C)
    color = np.full(d.shape + (3,), 90, np.uint8)
    vol.integrate(RGBDFrame(depth=d, intrinsics=K_SMALL, color=color, pose=T))
    vol.integrate(RGBDFrame(depth=d, intrinsics=K_SMALL, color=color), T)  # integrate(frame, T)
    # Points on the plane near the image centre: tsdf ~ 0; 3 cm in front: ~ +3 cm.
    p0 = np.array([[0.0, 0.0, 1.0], [0.05, 0.02, 1.0 + 0.02 * math.tan(math.radians(20))]])
    tsdf, weight, col = vol.sample_tsdf(torch.tensor(p0, dtype=torch.float32))
    assert torch.all(weight > 1.5)
    assert torch.all(tsdf.abs() * vol.truncation_m < 0.005)
    torch.testing.assert_close(col, torch.full((2, 3), 90.0))
    front = torch.tensor(p0 + 0.03 * TILTED_N[None], dtype=torch.float32)
    tsdf, _, _ = vol.sample_tsdf(front)
    assert torch.all((tsdf * vol.truncation_m - 0.03).abs() < 0.01)
    # Far from anything: unobserved.
    tsdf, weight, _ = vol.sample_tsdf(torch.tensor([[5.0, 5.0, 5.0]]))
    assert weight.item() == 0 and tsdf.item() == 1.0


def test_allocation_covers_the_band_of_every_pixel():
    """Blocks from the strided allocation hold (almost) every voxel that exhaustive
    allocation (every pixel, samples every half voxel) would update."""
    K = CameraIntrinsics(160, 120, 120.0, 120.0, 79.5, 59.5)
    T = look_at([0.2, -0.1, 0.0], [0.0, 0.0, 1.2])
    centre = np.array([0.0, 0.0, 1.2])
    d = np.minimum(np.where(sphere_depth(K, T, centre, 0.3) > 0, sphere_depth(K, T, centre, 0.3), 9),
                   np.where(plane_depth(K, T, TILTED_N, -1.6) > 0, plane_depth(K, T, TILTED_N, -1.6), 9))
    d = np.where(d < 9, d, 0).astype(np.float32)
    grid = VoxelBlockGrid(VOX, device="cpu")
    kw = dict(truncation_m=TRUNC, depth_min_m=0.1, depth_max_m=4.0)
    dt, Tt = torch.from_numpy(d), torch.from_numpy(T)
    fast = touched_blocks(grid, dt, K, Tt, **kw)
    full = touched_blocks(grid, dt, K, Tt, stride=1, samples=int(2 * TRUNC / (0.5 * VOX)) + 1, **kw)
    assert 0.8 * len(full) < len(fast) <= len(full)
    vol_fast = volume()
    vol_fast.integrate(d, K, T)
    vol_full = volume()
    vol_full.grid.allocate(full)  # exhaustive allocation first: integration then updates them all
    vol_full.integrate(d, K, T)
    band_full = ((vol_full.grid.active("weight") > 0)
                 & (vol_full.grid.active("tsdf").abs() < 1)).sum().item()
    band_fast = ((vol_fast.grid.active("weight") > 0)
                 & (vol_fast.grid.active("tsdf").abs() < 1)).sum().item()
    assert band_fast >= 0.97 * band_full, (band_fast, band_full)


def test_integrate_kernel_accepts_tensors():
    grid = VoxelBlockGrid(VOX, device="cpu")
    d = torch.ones(K_SMALL.height, K_SMALL.width)
    stats = integrate(grid, d, K_SMALL, torch.eye(4, dtype=torch.float64), None, truncation_m=TRUNC,
                      depth_min_m=0.1, depth_max_m=3.0, max_weight=10.0)
    assert stats["blocks_touched"] == grid.num_blocks > 0
    # The index keeps a never-allocated border layer (lookups clamp onto it).
    idx = grid._index
    for border in (idx[0], idx[-1], idx[:, 0], idx[:, -1], idx[:, :, 0], idx[:, :, -1]):
        assert torch.all(border == -1)


def test_render_depth_limits_override_the_sensor_range_for_one_render():
    """Pictures are taken from further away than the sensor's range: ``depth_limits_m`` widens
    it for that render only (the backend's own range, used by fusion and tracking, stays)."""
    from neural_mapping.types import CameraIntrinsics
    K = CameraIntrinsics(80, 60, 60.0, 60.0, 39.5, 29.5)
    vol = TSDFVolume(voxel_size_m=0.05, depth_max_m=3.0, device="cpu")
    vol.integrate(np.full((60, 80), 2.0, np.float32), K, np.eye(4))  # a wall at z = 2 m
    back = np.eye(4)
    back[2, 3] = -3.0  # 5 m from the wall: beyond depth_max_m
    assert not bool(vol.render(K, back).valid.any())
    far = vol.render(K, back, depth_limits_m=(0.05, 8.0))
    assert 0.12 < float(far.valid.float().mean()) < 0.2  # the wall covers (2 / 5)^2 = 16 %
    d = far.depth[far.valid]
    assert float((d - 5.0).abs().max()) < 0.05
    assert (vol.depth_min_m, vol.depth_max_m) == (0.1, 3.0)
