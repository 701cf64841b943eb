"""Hot loops compiled with TorchScript, so they run without the GIL.

The tracking thread, the mapping thread and the ROS executor share one interpreter.  A loop
of small torch ops called from Python takes the GIL back after every op: two such threads on
two cores measured 4x slower together than one alone (and half as fast as running them one
after the other).  A TorchScript function runs its whole body in C++ with the GIL released,
and saves the Python overhead of each op as well.

Every function here is plain Python in the TorchScript subset and is *also* the eager
reference: :func:`script` compiles it, or returns it unchanged when TorchScript is unavailable
or ``NEURAL_MAPPING_NO_SCRIPT=1`` is set (tests compare both).  Same code on CPU and CUDA.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

ENABLED = os.environ.get("NEURAL_MAPPING_NO_SCRIPT", "") not in ("1", "true", "yes")


def script(fn: Callable) -> Callable:
    """``torch.jit.script(fn)`` (its deprecation warning silenced), or ``fn`` itself."""
    if not ENABLED:
        return fn
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = torch.jit.script(fn)
    except Exception:  # pragma: no cover - a torch without TorchScript: stay eager
        return fn
    compiled.eager = fn  # the reference implementation, for tests
    return compiled


# ------------------------------------------------------------------ grid lookups
def voxel_index(vx: Tensor, vy: Tensor, vz: Tensor, index: Tensor, origin: List[int],
                shape: List[int], block: int, long_index: bool) -> Tensor:
    """Linear index ``slot * B^3 + (i*B + j)*B + k`` of integer voxel coordinates (int32
    tensors) into a one-channel attribute pool, negative where the block is not allocated;
    ``index`` is the grid's dense block index (flattened), ``origin``/``shape`` its box (see
    ``grid.VoxelBlockGrid.voxel_index_xyz``; coordinates outside the box read -1)."""
    if block & (block - 1) == 0:
        sh = 0
        while (1 << sh) < block:
            sh += 1
        bx, by, bz = vx >> sh, vy >> sh, vz >> sh
        m = block - 1
        loc = (vz & m) + (vy & m) * block + (vx & m) * (block * block)
    else:
        bx = torch.div(vx, block, rounding_mode="floor")
        by = torch.div(vy, block, rounding_mode="floor")
        bz = torch.div(vz, block, rounding_mode="floor")
        loc = (vz - bz * block) + (vy - by * block) * block + (vx - bx * block) * (block * block)
    rx = (bx - origin[0]).clamp(0, shape[0] - 1)
    ry = (by - origin[1]).clamp(0, shape[1] - 1)
    flat = (bz - origin[2]).clamp(0, shape[2] - 1) + ry * shape[2] + rx * (shape[1] * shape[2])
    slots = index.index_select(0, flat.reshape(-1)).view(flat.shape)
    b3 = block * block * block  # (int ** int is a float in TorchScript)
    if long_index:
        return loc.long() + slots.long() * b3
    return loc + slots * b3


# ------------------------------------------------------------------ sampling
def trilinear(pts: Tensor, index: Tensor, origin: List[int], shape: List[int], block: int,
              long_index: bool, tsdf: Tensor, weight: Tensor, color: Optional[Tensor],
              corner_offs: Tensor, corner_lin: Tensor, inv_vs: float, with_grad: bool
              ) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """Trilinear signed distance (``tsdf``: a field's ``sdf`` pool) at world points ``pts``
    ``[3, K]`` (see ``grid.sampling.trilinear``): returns the distance (renormalised over
    observed corners, 1 where none is), ``weight``, the gradient ``[3, K]`` (per metre,
    ``with_grad``) and the color ``[K, 3]`` (if ``color`` is given).
    ``corner_offs`` ``[3, 8, 1]`` int32 and ``corner_lin`` ``[8, 1]`` are the corner offsets
    as coordinates and as linear offsets inside a block."""
    K = pts.shape[1]
    g = pts * inv_vs - 0.5  # voxel v's centre is at (v + 0.5) * vs
    base_f = torch.floor(g)
    frac = g - base_f
    base = base_f.to(torch.int32)
    # Corners inside the base voxel's block are the base index + a constant; only points on
    # a block's upper face need the other blocks looked up.
    lin = voxel_index(base[0], base[1], base[2], index, origin, shape, block, long_index).unsqueeze(0) + corner_lin
    edge = (torch.remainder(base, block) == block - 1).any(dim=0).nonzero().squeeze(1)
    if edge.numel() > 0:
        ve = base.index_select(1, edge).unsqueeze(1) + corner_offs  # [3, 8, E]
        lin.index_copy_(1, edge, voxel_index(ve[0], ve[1], ve[2], index, origin, shape, block, long_index))
    ok = lin >= 0
    safe = lin.clamp(min=0).view(-1)
    wv = weight.index_select(0, safe).view(8, K) * ok.to(weight.dtype)
    tv = tsdf.index_select(0, safe).view(8, K)
    one_m = 1.0 - frac
    ax = torch.stack([one_m[0], frac[0]])  # [2, K]
    ay = torch.stack([one_m[1], frac[1]])
    az = torch.stack([one_m[2], frac[2]])
    ayz = (ay.unsqueeze(1) * az.unsqueeze(0)).reshape(4, K)
    tri = (ax.unsqueeze(1) * ayz.unsqueeze(0)).reshape(8, K)
    obs = (wv > 0).to(tri.dtype) * tri
    norm = obs.sum(dim=0)
    has = norm > 0
    inv = torch.where(has, 1.0 / norm.clamp(min=1e-12), 0.0)
    t_out = torch.where(has, (obs * tv).sum(dim=0) * inv, 1.0)
    w_out = (tri * wv).sum(dim=0)
    grad: Optional[Tensor] = None
    if with_grad:
        tg = torch.where(ok, tv, 1.0).view(2, 2, 2, K)
        axz = ax.unsqueeze(1) * az.unsqueeze(0)  # [2(x), 2(z), K]
        axy = ax.unsqueeze(1) * ay.unsqueeze(0)  # [2(x), 2(y), K]
        ayz2 = ayz.view(2, 2, K)
        gx = ((tg[1] - tg[0]) * ayz2).sum(dim=(0, 1))
        gy = ((tg[:, 1] - tg[:, 0]) * axz).sum(dim=(0, 1))
        gz = ((tg[:, :, 1] - tg[:, :, 0]) * axy).sum(dim=(0, 1))
        grad = torch.stack([gx, gy, gz]) * inv_vs
    col: Optional[Tensor] = None
    if color is not None:
        cv = color.view(-1, 3).index_select(0, safe).view(8, K, 3)
        col = torch.einsum("ck,ckd->kd", obs, cv) * inv.unsqueeze(1)
    return t_out, w_out, grad, col


# ------------------------------------------------------------------ ray marching
def march(index: Tensor, origin: List[int], shape: List[int], block: int, long_index: bool,
          tsdf: Tensor, weight: Tensor, weight_threshold: float, o_v: Tensor, S: Tensor,
          act: Tensor, vs: float, block_m: float, truncation_m: float, step_obs: float,
          steps: int, max_steps: int, tail_rays: int, chunk: int, hit: Tensor, hit_a: Tensor,
          hit_b: Tensor, hit_ta: Tensor, hit_tb: Tensor) -> int:
    """The fine march of ``grid.raycast.raycast`` (see its docstring for the rules): state ``S``
    rows ``s, prev_t, prev_s, last_step, s_end, unknown_step, dir/vs (3)`` for the rays
    ``act``; hits are written into ``hit*`` (bracket along the ray and its two samples).
    When at most ``tail_rays`` rays are left, their remaining range is sampled densely.
    Returns the step count."""
    nan = math.nan
    K = act.numel()
    while K > 0 and steps < max_steps:
        steps += 1
        s, prev_t, prev_s, last, u_step = S[0], S[1], S[2], S[3], S[5]
        vi = torch.floor(o_v + S[6:9] * s.unsqueeze(0)).to(torch.int32)
        lin = voxel_index(vi[0], vi[1], vi[2], index, origin, shape, block, long_index)
        alloc = lin >= 0
        safe = lin.clamp(min=0)
        tv = tsdf.index_select(0, safe)
        observed = (weight.index_select(0, safe) > weight_threshold) & alloc
        tk = torch.where(observed, tv, nan)
        crossing = (prev_t > 0) & (tk <= 0)
        ended = ((prev_t < 0) & (tk > 0)) | crossing
        over = (tk < 0) & torch.isnan(prev_t) & (last > 1.5 * vs)
        step = torch.where(observed, (tk * step_obs).clamp(min=vs),
                           torch.where(alloc, u_step.clamp(max=truncation_m), u_step))
        u_new = torch.where(observed, block_m, u_step)
        s_new = s + step
        prev_new = s
        if bool(over.any()):
            s_new = torch.where(over, prev_s + vs, s_new)
            step = torch.where(over, vs, step)
            u_new = torch.where(over, vs, u_new)
            prev_new = torch.where(over, prev_s, s)
            tk = torch.where(over, nan, tk)
        if bool(crossing.any()):
            ci = crossing.nonzero().squeeze(1)
            ids = act.index_select(0, ci)
            hit[ids] = True
            hit_a[ids] = prev_s.index_select(0, ci)
            hit_b[ids] = s.index_select(0, ci)
            hit_ta[ids] = prev_t.index_select(0, ci)
            hit_tb[ids] = tk.index_select(0, ci)
        keep = ((~ended) & (s_new <= S[4])).nonzero().squeeze(1)
        S = torch.stack([s_new, tk, prev_new, step, S[4], u_new, S[6], S[7], S[8]]).index_select(1, keep)
        act = act.index_select(0, keep)
        K = act.numel()
        if K > 0 and K <= tail_rays:
            steps += march_dense(index, origin, shape, block, long_index, tsdf, weight,
                                 weight_threshold, o_v, S, act, vs, chunk, hit, hit_a, hit_b,
                                 hit_ta, hit_tb)
            break
    return steps


def march_dense(index: Tensor, origin: List[int], shape: List[int], block: int, long_index: bool,
                tsdf: Tensor, weight: Tensor, weight_threshold: float, o_v: Tensor, S: Tensor,
                act: Tensor, vs: float, chunk: int, hit: Tensor, hit_a: Tensor, hit_b: Tensor,
                hit_ta: Tensor, hit_tb: Tensor) -> int:
    """Finish the rays ``act`` (state ``S`` of :func:`march`) by sampling every voxel-size
    step of their remaining range, ``chunk`` samples per ray per pass; same hit rule (first
    ``+`` -> ``-`` change between observed samples; ``-`` -> ``+`` ends the ray).  Returns
    the number of passes."""
    nan = math.nan
    prev_t, prev_s, s_end, d = S[1], S[2], S[4], S[6:9]
    # After an unknown sample the march may have stepped far: resume one voxel after it.
    start = torch.where(torch.isnan(prev_t), torch.minimum(prev_s + vs, S[0]), S[0])
    offs = torch.arange(chunk, device=S.device, dtype=S.dtype) * vs
    passes = 0
    while act.numel() > 0:
        passes += 1
        K = act.numel()
        sv = start.unsqueeze(1) + offs.unsqueeze(0)  # K x chunk
        vi = torch.floor(o_v.unsqueeze(2) + d.unsqueeze(2) * sv.unsqueeze(0)).to(torch.int32)
        lin = voxel_index(vi[0], vi[1], vi[2], index, origin, shape, block, long_index)
        safe = lin.clamp(min=0)
        observed = (weight[safe] > weight_threshold) & (lin >= 0) & (sv <= s_end.unsqueeze(1))
        t = torch.where(observed, tsdf[safe], nan)
        t = torch.cat([prev_t.unsqueeze(1), t], 1)
        sv = torch.cat([prev_s.unsqueeze(1), sv], 1)
        a, b = t[:, :-1], t[:, 1:]
        cross = (a > 0) & (b <= 0)
        event = cross | ((a < 0) & (b > 0))
        has = event.any(1)
        j = event.to(torch.uint8).argmax(1)  # first event
        rows = torch.arange(K, device=S.device)
        is_hit = has & cross[rows, j]
        if bool(is_hit.any()):
            r = is_hit.nonzero().squeeze(1)
            jj = j[r]
            ids = act[r]
            hit[ids] = True
            hit_a[ids] = sv[r, jj]
            hit_b[ids] = sv[r, jj + 1]
            hit_ta[ids] = t[r, jj]
            hit_tb[ids] = t[r, jj + 1]
        nxt = start + chunk * vs
        keep = ((~has) & (nxt <= s_end)).nonzero().squeeze(1)
        act = act[keep]
        prev_t, prev_s = t[keep, -1], sv[keep, -1]
        start, s_end, d = nxt[keep], s_end[keep], d[:, keep]
    return passes


# ------------------------------------------------------------------ ICP
def noise_scale(q: Tensor, nm: Tensor, z: Tensor, fx_sensor: float, model: int) -> Tensor:
    """Standard deviation of a point-to-plane residual relative to a frontal surface at 1 m,
    from the Kinect v1 noise model of Nguyen, Izadi, Lovell (3DIMPVT 2012).  ``q`` frame
    points in the model camera, ``nm`` model normals, ``z`` the frame depths, ``fx_sensor``
    the sensor's focal length (px).  model 2: the axial sigma(z) = 1.2 mm + 1.9 mm (z - 0.4)^2
    only; model 3: the axial noise with its incidence-angle term, projected on the normal,
    plus the lateral noise (0.8 px + 0.035 px theta / (pi/2 - theta)) z / f."""
    zc = z.clamp(min=0.5)
    ax = 0.0012 + 0.0019 * (zc - 0.4) * (zc - 0.4)
    ref = 0.0012 + 0.0019 * 0.36
    if model == 2:
        return ax / ref
    iq = torch.rsqrt((q * q).sum(0).clamp(min=1e-12))
    c = ((q * nm).sum(0) * iq).abs().clamp(min=0.05, max=1.0)  # cos of the incidence angle
    th = torch.acos(c)
    g = th / (0.5 * math.pi - th)
    ax = ax + 0.0001 / torch.sqrt(zc) * g * g
    lat = (0.8 + 0.035 * g) * zc / fx_sensor
    var = ax * ax * c * c + lat * lat * (1.0 - c * c)
    return torch.sqrt(var) / ref


def icp_system(P: Tensor, N: Tensor, A: Tensor, R: Tensor, t: Tensor, table: Tensor,
               fx: float, fy: float, cx: float, cy: float, width: int, height: int,
               max_dist: float, cos_angle: float, huber: float, noise_model: int,
               fx_sensor: float, symmetric: bool, chunk: int) -> Tuple[Tensor, int]:
    """One projective association + point-to-plane linearisation of ``tracking.Tracker``:
    frame points ``P``/normals ``N`` ``(3, n)`` (n a multiple of ``chunk``; padding has
    z = 0), moved by ``R, t`` into the model camera, projected into the model ``table``
    ``(6, H*W)`` (points, normals; pixel 0 is an invalid sentinel).  ``noise_model``: residual
    weights 1 (0), 1 / z^4 (1: sigma ~ z^2) or the Kinect model of :func:`noise_scale` (2, 3);
    ``symmetric``: the residual and its Jacobian use the mean of the model and frame normals
    (symmetric point-to-plane, Rusinkiewicz 2019) instead of the model's.  Returns the 7x7 float64
    matrix ``[A w]^T [A]`` of the rows ``(n_model, p x n_model | r)`` (H = M[:6,:6],
    b = M[:6,6], robust RSS = M[6,6]) and the inlier count."""
    q = R @ P + t  # (3, n)
    z = q[2]
    iz = 1.0 / z.clamp(min=1e-3)
    u = torch.round(q[0] * iz * fx + cx)
    v = torch.round(q[1] * iz * fy + cy)
    inb = (z > 1e-3) & (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1)
    idx = ((v * width + u) * inb.to(u.dtype)).long()
    G = table.index_select(1, idx)
    nm = G[3:]
    diff = q - G[:3]
    dist2 = (diff * diff).sum(0)
    r = (diff * nm).sum(0)
    Nr = R @ N
    cosang = (Nr * nm).sum(0)
    keep = (dist2 < max_dist * max_dist) & (cosang > cos_angle)
    if symmetric:
        ns = nm + Nr
        nm = ns * torch.rsqrt((ns * ns).sum(0).clamp(min=1e-12))
        r = (diff * nm).sum(0)
    keepf = keep.to(r.dtype)
    if noise_model == 1:
        sc = (P[2] * P[2]).clamp(min=0.25)
        w = (huber * sc / r.abs().clamp(min=1e-9)).clamp(max=1.0) * keepf / (sc * sc)
    elif noise_model >= 2:
        sc = noise_scale(q, nm, P[2], fx_sensor, noise_model)
        w = (huber * sc / r.abs().clamp(min=1e-9)).clamp(max=1.0) * keepf / (sc * sc)
    else:
        w = (huber / r.abs().clamp(min=1e-9)).clamp(max=1.0) * keepf
    A[0:3] = nm
    A[3] = q[1] * nm[2] - q[2] * nm[1]
    A[4] = q[2] * nm[0] - q[0] * nm[2]
    A[5] = q[0] * nm[1] - q[1] * nm[0]
    A[6] = r
    Aw = A * w
    c = A.shape[1] // chunk
    M = torch.bmm(Aw.view(7, c, chunk).transpose(0, 1),
                  A.view(7, c, chunk).permute(1, 2, 0)).sum(0).double()
    return M, int(keep.sum())


# ------------------------------------------------------------------ image ops
def down2(d: Tensor, rel_tol: float, far: float) -> Tensor:
    """2x2 mean of the valid (> 0) depths, 0 where none is valid or the block spans a depth
    edge (see ``tracking.downsample_depth``)."""
    H, W = d.shape[0], d.shape[1]
    h, w = H // 2, W // 2
    q0 = d[0:2 * h:2, 0:2 * w:2]
    q1 = d[0:2 * h:2, 1:2 * w:2]
    q2 = d[1:2 * h:2, 0:2 * w:2]
    q3 = d[1:2 * h:2, 1:2 * w:2]
    s = q0 + q1 + q2 + q3
    mx = torch.maximum(torch.maximum(q0, q1), torch.maximum(q2, q3))
    i0, i1, i2, i3 = (q0 <= 0).to(d.dtype), (q1 <= 0).to(d.dtype), (q2 <= 0).to(d.dtype), (q3 <= 0).to(d.dtype)
    cnt = 4.0 - (i0 + i1 + i2 + i3)
    mn = torch.minimum(torch.minimum(q0 + i0 * far, q1 + i1 * far),
                       torch.minimum(q2 + i2 * far, q3 + i3 * far))
    ok = (cnt > 0) & (mx - mn <= rel_tol * mn + 0.01)
    return s / cnt.clamp(min=1.0) * ok.to(d.dtype)


def bilateral(d: Tensor, radius: int, sigma_px: float, sigma_rel: float) -> Tensor:
    """Edge-preserving smoothing of a depth image (KinectFusion's bilateral filter): each
    valid pixel becomes the weighted mean of the valid pixels within ``radius``, weights
    ``exp(-dx^2 / 2 sigma_px^2 - dz^2 / 2 (sigma_rel z^2)^2)``; holes stay holes."""
    H, W = d.shape[0], d.shape[1]
    pad = torch.nn.functional.pad(d.unsqueeze(0).unsqueeze(0), [radius, radius, radius, radius]).squeeze(0).squeeze(0)
    num = torch.zeros_like(d)
    den = torch.zeros_like(d)
    sz = sigma_rel * d * d + 1e-4
    inv2 = 0.5 / (sz * sz)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            nb = pad[radius + dy:radius + dy + H, radius + dx:radius + dx + W]
            dd = nb - d
            w = torch.exp(-(dx * dx + dy * dy) / (2.0 * sigma_px * sigma_px) - dd * dd * inv2) * (nb > 0).to(d.dtype)
            num += w * nb
            den += w
    return torch.where(d > 0, num / den.clamp(min=1e-12), d)


def normals(X: Tensor, Y: Tensor, Z: Tensor, d: Tensor, max_rel_jump: float
            ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normals of a vertex map (planar ``X, Y, Z`` ``(H, W)``) from central differences,
    oriented towards the camera, and their validity (see ``tracking.normal_map``)."""
    H, W = d.shape[0], d.shape[1]
    zeros = torch.zeros((H, W), dtype=d.dtype, device=d.device)
    valid = torch.zeros((H, W), dtype=torch.bool, device=d.device)
    if H < 3 or W < 3:
        return zeros, zeros.clone(), zeros.clone(), valid
    dx0 = X[1:-1, 2:] - X[1:-1, :-2]
    dx1 = Y[1:-1, 2:] - Y[1:-1, :-2]
    dx2 = Z[1:-1, 2:] - Z[1:-1, :-2]
    dy0 = X[2:, 1:-1] - X[:-2, 1:-1]
    dy1 = Y[2:, 1:-1] - Y[:-2, 1:-1]
    dy2 = Z[2:, 1:-1] - Z[:-2, 1:-1]
    nx = dx1 * dy2 - dx2 * dy1
    ny = dx2 * dy0 - dx0 * dy2
    nz = dx0 * dy1 - dx1 * dy0
    norm2 = nx * nx + ny * ny + nz * nz
    dot = nx * X[1:-1, 1:-1] + ny * Y[1:-1, 1:-1] + nz * Z[1:-1, 1:-1]
    scale = torch.rsqrt(norm2.clamp(min=1e-30)) * torch.where(dot > 0, -1.0, 1.0)
    c = d[1:-1, 1:-1]
    tol = max_rel_jump * c + 0.005
    ok = (c > 0) & (norm2 > 0)
    for nb in (d[1:-1, 2:], d[1:-1, :-2], d[2:, 1:-1], d[:-2, 1:-1]):
        ok = ok & (nb > 0) & ((nb - c).abs() < tol)
    okf = ok.to(d.dtype)
    ox, oy, oz = zeros, zeros.clone(), zeros.clone()
    ox[1:-1, 1:-1] = nx * scale * okf
    oy[1:-1, 1:-1] = ny * scale * okf
    oz[1:-1, 1:-1] = nz * scale * okf
    valid[1:-1, 1:-1] = ok
    return ox, oy, oz, valid


voxel_index = script(voxel_index)
trilinear = script(trilinear)
march_dense = script(march_dense)
march = script(march)
noise_scale = script(noise_scale)
icp_system = script(icp_system)
down2 = script(down2)
normals = script(normals)
bilateral = script(bilateral)
