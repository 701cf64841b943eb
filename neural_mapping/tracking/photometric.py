"""Photometric term of the tracker: the joint cost's intensity system
(:func:`photometric_normal_equations`, added to the point-to-plane system by the tracker) and
the older intensity-only alignment of the weak directions (:func:`align_weak_directions`,
used with ``tracking_photometric_weight: 0``).

When the point-to-plane system has weak directions (a wall and the floor leave the
translation along their common line free; :func:`~neural_mapping.tracking.tracker.weak_directions`),
the tracker solves for the motion in those directions only, from an intensity residual
against the color the map renders for the model view (DVO / ElasticFusion style):

    r_i = I_model(pi(T p_i)) - (a * I_frame(p_i) + b)

``I_model`` is the model view's gray image (bilinear, with central-difference gradients),
``I_frame`` the frame's gray value at its point ``p_i``, ``a, b`` a per-frame affine brightness
fit (least squares over the pairs each iteration: exposure changes do not bias the motion).
Pairs are kept where all four bilinear taps are valid model pixels, the model depth there
agrees with the point's (occlusion), and the gradient is not flat.  Residuals get Huber
weights.  Frames without color, and views rendered without color, fall back to geometry (the
weak directions then keep the motion prior).  The kernels are TorchScript (no GIL).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from torch import Tensor

from neural_mapping import kernels


def gray(color) -> Tensor:
    """``(H, W)`` float32 gray in [0, 1] of an ``(H, W, 3)`` color image (uint8 0..255 or float
    0..255)."""
    c = torch.as_tensor(np.asarray(color)) if not isinstance(color, Tensor) else color
    return c.to(torch.float32).mean(-1) / 255.0


def _sample_gray(color: Tensor, P: Tensor, fx: float, fy: float, cx: float, cy: float,
                 step: int) -> Tensor:
    """Gray (0..1) of the ``(H, W, 3)`` color image at the projections of the points ``P``
    ``(3, n)``: the mean of 3x3 taps ``step`` pixels apart (clamped at the border)."""
    H, W = color.shape[0], color.shape[1]
    flat = color.reshape(H * W, color.shape[2])
    z = P[2].clamp(min=1e-3)
    u = torch.round(P[0] / z * fx + cx).long()
    v = torch.round(P[1] / z * fy + cy).long()
    acc = torch.zeros(P.shape[1], dtype=torch.float32, device=P.device)
    for dv in (-step, 0, step):
        vv = (v + dv).clamp(0, H - 1) * W
        for du in (-step, 0, step):
            acc += flat[vv + (u + du).clamp(0, W - 1)].to(torch.float32).sum(1)
    return acc / (9.0 * color.shape[2] * 255.0)


sample_gray = kernels.script(_sample_gray)


def model_gradients(I: Tensor, valid: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``(I, gx, gy, ok)`` of a model gray image: central differences in pixels; ``ok`` where
    the pixel and its four neighbours are valid."""
    gx = torch.zeros_like(I)
    gy = torch.zeros_like(I)
    ok = torch.zeros_like(valid)
    gx[:, 1:-1] = 0.5 * (I[:, 2:] - I[:, :-2])
    gy[1:-1, :] = 0.5 * (I[2:, :] - I[:-2, :])
    ok[1:-1, 1:-1] = (valid[1:-1, 1:-1] & valid[1:-1, 2:] & valid[1:-1, :-2]
                      & valid[2:, 1:-1] & valid[:-2, 1:-1])
    return gx, gy, ok


def _bilinear(img: Tensor, i00: Tensor, i01: Tensor, i10: Tensor, i11: Tensor, du: Tensor,
              dv: Tensor) -> Tensor:
    f = img.reshape(-1)
    return ((1 - du) * (1 - dv) * f[i00] + du * (1 - dv) * f[i01]
            + (1 - du) * dv * f[i10] + du * dv * f[i11])


def _photometric_system(q: Tensor, If: Tensor, Im: Tensor, gx: Tensor, gy: Tensor, ok: Tensor,
                        zm: Tensor, fx: float, fy: float, cx: float, cy: float,
                        max_dz: float, huber: float, min_grad: float
                        ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Residuals ``r (n)``, Jacobians ``J (6, n)`` w.r.t. a left update ``xi = [t, w]`` of the
    points ``q (3, n)`` (already in the model camera), robust weights ``w (n)`` (0 = not used)
    and the frame intensities after the affine brightness fit.  Model images ``(h, w)``."""
    h, w = Im.shape[0], Im.shape[1]
    z = q[2].clamp(min=1e-3)
    u = q[0] / z * fx + cx
    v = q[1] / z * fy + cy
    inb = (q[2] > 1e-3) & (u >= 0) & (v >= 0) & (u < w - 1) & (v < h - 1)
    u = torch.where(inb, u, torch.zeros_like(u))
    v = torch.where(inb, v, torch.zeros_like(v))
    u0 = u.floor()
    v0 = v.floor()
    du = u - u0
    dv = v - v0
    i00 = (v0 * w + u0).long()
    i01 = i00 + 1
    i10 = i00 + w
    i11 = i10 + 1
    okf = ok.reshape(-1)
    good = inb & okf[i00] & okf[i01] & okf[i10] & okf[i11]
    im = _bilinear(Im, i00, i01, i10, i11, du, dv)
    Gx = _bilinear(gx, i00, i01, i10, i11, du, dv)
    Gy = _bilinear(gy, i00, i01, i10, i11, du, dv)
    zmod = _bilinear(zm, i00, i01, i10, i11, du, dv)
    good = good & ((zmod - q[2]).abs() < max_dz) & ((Gx * Gx + Gy * Gy) > min_grad * min_grad)
    gf = good.to(q.dtype)
    # affine brightness: im ~ a * If + b over the good pairs
    n = gf.sum().clamp(min=1.0)
    mf = (If * gf).sum() / n
    mm = (im * gf).sum() / n
    var = (((If - mf) ** 2) * gf).sum()
    cov = ((If - mf) * (im - mm) * gf).sum()
    a = torch.where(var > 1e-9, cov / var.clamp(min=1e-9), torch.ones_like(var)).clamp(0.5, 2.0)
    b = mm - a * mf
    If2 = a * If + b
    r = (im - If2) * gf
    # d pi / d q, chained with the image gradient
    iz = 1.0 / z
    jx = Gx * fx * iz
    jy = Gy * fy * iz
    jz = -(jx * q[0] + jy * q[1]) * iz
    J = torch.stack([jx, jy, jz, q[1] * jz - q[2] * jy, q[2] * jx - q[0] * jz,
                     q[0] * jy - q[1] * jx]) * gf
    wgt = (huber / r.abs().clamp(min=1e-9)).clamp(max=1.0) * gf
    return r, J, wgt, If2


photometric_system = kernels.script(_photometric_system)


def align_weak_directions(P: Tensor, If: Tensor, T: np.ndarray, view, basis: np.ndarray,
                          iterations: int, max_dz: float, huber: float, min_grad: float,
                          min_pairs: int):
    """Gauss-Newton on the photometric residual over ``xi = basis @ alpha`` only (``basis``:
    ``(6, k)`` weak directions in metres / radians).  ``P (3, n)`` frame points in the frame's
    camera, ``If (n)`` their intensities, ``T`` the current ``T_ref_cam``.  Returns
    ``(T, pairs used)``; ``T`` unchanged when too few pairs."""
    from neural_mapping.geometry import se3_exp
    K = view.intrinsics
    B = torch.as_tensor(basis, dtype=torch.float64)
    pairs = 0
    for _ in range(iterations):
        R = torch.as_tensor(T[:3, :3], dtype=torch.float32)
        t = torch.as_tensor(T[:3, 3:4], dtype=torch.float32)
        q = R @ P + t
        r, J, w, _ = photometric_system(q, If, view.intensity, view.grad_x, view.grad_y,
                                        view.intensity_ok, view.depth_map, float(K.fx),
                                        float(K.fy), float(K.cx), float(K.cy), float(max_dz),
                                        float(huber), float(min_grad))
        pairs = int((w > 0).sum())
        if pairs < min_pairs:
            return T, pairs
        Ja = B.T @ J.double()  # (k, n)
        Jw = Ja * w.double()
        H = Jw @ Ja.T
        g = Jw @ r.double()
        try:
            alpha = -torch.linalg.solve(H + torch.eye(H.shape[0], dtype=H.dtype) * 1e-9 *
                                        (H.trace() + 1e-12), g)
        except RuntimeError:
            return T, pairs
        xi = (B @ alpha).numpy()
        step = float(np.linalg.norm(xi[:3]))
        if step > 0.05:  # at most 5 cm per iteration
            xi = xi * (0.05 / step)
        T = se3_exp(xi) @ T
        if np.linalg.norm(xi[:3]) < 1e-5 and np.linalg.norm(xi[3:]) < 1e-5:
            break
    return T, pairs


def photometric_normal_equations(P: Tensor, If: Tensor, T: np.ndarray, view, max_dz: float,
                                 huber: float, min_grad: float):
    """The photometric term's Gauss-Newton system at ``T`` (``T_ref_cam``) over all 6
    directions ``xi = [t, w]`` (left update, as the ICP's): ``(H 6x6, b 6)`` float64 with
    ``H = J W J^T``, ``b = J W r``, and the number of pairs used.  The tracker adds it, weighted,
    to the point-to-plane system (joint cost)."""
    K = view.intrinsics
    R = torch.as_tensor(T[:3, :3], dtype=torch.float32, device=P.device)
    t = torch.as_tensor(T[:3, 3:4], dtype=torch.float32, device=P.device)
    r, J, w, _ = photometric_system(R @ P + t, If, view.intensity, view.grad_x, view.grad_y,
                                    view.intensity_ok, view.depth_map, float(K.fx), float(K.fy),
                                    float(K.cx), float(K.cy), float(max_dz), float(huber),
                                    float(min_grad))
    Jw = J * w
    return (Jw @ J.T).double(), (Jw @ r).double(), int((w > 0).sum())
