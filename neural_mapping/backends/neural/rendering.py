"""Samples along rays, SDF volume rendering and the mapping losses (pure torch, any device).

Rays are parametrised by camera depth ``t`` (``point = origin + t * dir`` with ``dir`` the
world direction of the z = 1 camera ray), like the TSDF: the projective signed distance of a
sample to the measured depth ``D`` is ``D - t``.

Volume rendering (ESLAM / Co-SLAM style, bell-shaped weights on the SDF rather than densities):
``w_i = max(b(k s_i) - b(k), 0)`` with ``b(x) = sigmoid(x) sigmoid(-x)``, ``s_i`` the SDF in
truncation units and ``k`` the sharpness; the weights of the valid samples are normalised
along the ray, rendered depth ``sum w_i t_i`` and color ``sum w_i c_i``.  The weight peaks at
the zero crossing and is exactly 0 outside the band (``|s| >= 1``): without the ``- b(k)``
the many free-space samples (``s = 1``) each keep ``b(k)`` and pull the depth towards the
camera (measured: 1 cm at 2 m with 32 stratified samples, k = 8).  The samples stop at
``D + truncation``, so a second surface behind the first is never seen.

Losses (the ESLAM / Co-SLAM set, in truncation units): SDF inside the band ``|D - t| <= tr``
against ``(D - t) / tr``; free space (``t < D - tr``) against 1; rendered depth against ``D``
(divided by ``tr``); rendered color against the pixel's color (0..1).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch


def sample_depths(depth: torch.Tensor, *, n_uniform: int, n_surface: int, near_m: float,
                  truncation_m: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Sorted sample depths ``[R, n_uniform + n_surface]`` for rays with measured ``depth`` [R]:
    ``n_uniform`` stratified over ``[near, D + tr]`` and ``n_surface`` stratified over
    ``[D - tr, D + tr]`` (jitter drawn from ``generator`` on the CPU, so runs are seeded)."""
    R = depth.shape[0]
    dev = depth.device

    def jitter(n):
        u = torch.rand((R, n), generator=generator) if generator is not None else torch.rand(R, n)
        return (torch.arange(n).float()[None, :] + u).to(dev) / n

    far = depth + truncation_m
    parts = []
    if n_uniform > 0:
        near = torch.full_like(depth, near_m).minimum(depth - truncation_m).clamp_min(1e-3)
        parts.append(near[:, None] + (far - near)[:, None] * jitter(n_uniform))
    if n_surface > 0:
        parts.append((depth - truncation_m)[:, None] + 2 * truncation_m * jitter(n_surface))
    t = torch.cat(parts, dim=1)
    return torch.sort(t, dim=1).values


def volume_render(sdf: torch.Tensor, t: torch.Tensor, valid: torch.Tensor, sharpness: float,
                  color: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """``depth`` [R] (camera z), ``color`` [R, 3] (when given per sample [R, S, 3]) and the
    raw weight mass ``mass`` [R] (small when no valid sample is near a zero crossing)."""
    ks = sharpness * sdf
    edge = torch.sigmoid(torch.tensor(sharpness)) * torch.sigmoid(torch.tensor(-sharpness))
    raw = (torch.sigmoid(ks) * torch.sigmoid(-ks) - float(edge)).clamp_min(0.0) * valid
    mass = raw.sum(dim=1)
    w = raw / (mass[:, None] + 1e-8)
    out = {"depth": (w * t).sum(dim=1), "mass": mass, "weights": w}
    if color is not None:
        out["color"] = (w[..., None] * color).sum(dim=1)
    return out


def crossing_depth(sdf: torch.Tensor, t: torch.Tensor, valid: torch.Tensor):
    """Depth of the first ``+`` to ``-`` zero crossing along each ray, linearly interpolated
    between the two samples around it (exact for a linear SDF, differentiable in the SDF
    values), and a mask of the rays that have one.  The bell-weighted mean depends on where
    the jittered samples fall (up to ~0.5 cm with 8 samples over the band, measured on a
    plane): as a depth loss that shows up as noise in the map."""
    s0, s1 = sdf[:, :-1], sdf[:, 1:]
    ok = (s0 > 0) & (s1 <= 0) & valid[:, :-1] & valid[:, 1:]
    has = ok.any(dim=1)
    i = torch.argmax(ok.to(torch.int8), dim=1, keepdim=True)  # first crossing
    a, b = s0.gather(1, i).squeeze(1), s1.gather(1, i).squeeze(1)
    ta, tb = t[:, :-1].gather(1, i).squeeze(1), t[:, 1:].gather(1, i).squeeze(1)
    frac = a / (a - b).clamp_min(1e-6)
    return ta + frac * (tb - ta), has


def mapping_losses(sdf: torch.Tensor, t: torch.Tensor, valid: torch.Tensor, depth: torch.Tensor,
                   truncation_m: float, rendered: Dict[str, torch.Tensor],
                   color_obs: Optional[torch.Tensor], weights: Dict[str, float],
                   crossing: bool = False) -> Dict[str, torch.Tensor]:
    """The weighted losses (see the module docstring); ``total`` is their sum."""
    target = (depth[:, None] - t) / truncation_m
    band = valid & (target.abs() <= 1.0)
    free = valid & (target > 1.0)
    vf = valid.float()

    def masked_mean(x, m):
        return (x * m).sum() / m.sum().clamp_min(1)

    out = {
        "sdf": masked_mean((sdf - target) ** 2, band.float()),
        "free": masked_mean((sdf - 1.0) ** 2, free.float()),
    }
    ray_ok = (vf.sum(dim=1) > 0) & (rendered["mass"] > 1e-3)
    if crossing:
        zc, has = crossing_depth(sdf, t, valid)
        out["depth"] = masked_mean(((zc - depth) / truncation_m).abs(), has.float())
    else:
        out["depth"] = masked_mean(((rendered["depth"] - depth) / truncation_m).abs(), ray_ok.float())
    if color_obs is not None and "color" in rendered:
        out["color"] = masked_mean((rendered["color"] - color_obs).abs().mean(dim=1), ray_ok.float())
    total = sum(weights[k] * v for k, v in out.items())
    out["total"] = total
    return out
