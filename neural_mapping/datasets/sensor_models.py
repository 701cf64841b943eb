"""Depth sensor models for the ground-truth benchmark: noise, quantisation, flying pixels,
missing returns and gross outliers.  Every function takes a clean z-depth image (float32
metres, 0 = no return) and a ``numpy.random.Generator`` and returns a new image; pixels
without a return stay 0.  Each model states its source.

* :func:`proportional_gaussian` -- ``d' = d + N(0, 1) * sigma * d`` (RoutedFusion, Weder
  et al. CVPR 2020, Sec. 5: "depth-dependent Gaussian noise"; the object protocol's sigma = 0.01).
* :func:`axial_kinect` -- ``sigma(z) = a + b (z - z0)^2`` metres, the axial noise of the
  Kinect measured by Nguyen, Izadi, Lovell (3DIMPVT 2012): a = 0.0012, b = 0.0019, z0 = 0.4.
* :func:`quantise_disparity` -- structured-light disparity is measured in 1/8 pixel steps
  (Khoshelham & Elberink, Sensors 2012): ``z = f b / disp`` with ``disp`` rounded to
  ``step_px``; the depth step grows as ``z^2 step / (f b)``.
* :func:`flying_pixels` -- mixed pixels at depth edges (a pixel straddling a foreground and a
  background surface returns a depth in between; Reynolds et al., CVPR 2011, "Capturing
  time-of-flight data with confidence"): with probability ``p`` an edge pixel (depth jump
  larger than ``jump_m`` to a 4-neighbour) gets ``d_near + u (d_far - d_near)``, ``u ~ U(0, 1)``.
* :func:`missing_returns` -- dropout: each pixel is lost with probability ``p``; grazing
  surfaces and edges lose more (``p_edge`` at depth edges).
* :func:`blob_outliers` -- gross outliers as in NeuralFusion (Weder et al., CVPR 2021,
  Sec. 5.1: outliers are pixels, dilated into blobs, moved by large random offsets).  Our
  parameters: blob seeds are drawn per pixel with probability ``fraction / disk_area`` and
  dilated with a disk of ``radius_px`` (so about ``fraction`` of the pixels are covered, the
  measured coverage is returned); every blob gets one offset ``U(-max_offset, max_offset)``
  metres (never smaller than ``min_offset`` in magnitude) added to all its pixels.
* :func:`pixel_outliers` -- the per-pixel variant (no dilation, one offset per pixel).

:func:`realistic` chains the axial noise, quantisation, flying pixels and missing returns
(the room protocol's sensor).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy import ndimage

__all__ = ["proportional_gaussian", "axial_kinect", "axial_sigma", "quantise_disparity",
           "flying_pixels", "missing_returns", "blob_outliers", "pixel_outliers", "realistic",
           "depth_edges"]


def _f32(d: np.ndarray) -> np.ndarray:
    return np.asarray(d, dtype=np.float32)


def proportional_gaussian(depth: np.ndarray, rng: np.random.Generator, sigma: float = 0.01) -> np.ndarray:
    """``d + N(0,1) sigma d`` on valid pixels (RoutedFusion)."""
    d = _f32(depth)
    n = rng.standard_normal(d.shape).astype(np.float32)
    return np.where(d > 0, np.maximum(d + n * np.float32(sigma) * d, 0), 0).astype(np.float32)


def axial_sigma(z: np.ndarray, a: float = 0.0012, b: float = 0.0019, z0: float = 0.4) -> np.ndarray:
    """Kinect axial standard deviation (m) at depth ``z`` (Nguyen et al. 2012)."""
    return a + b * (np.asarray(z, dtype=np.float64) - z0) ** 2


def axial_kinect(depth: np.ndarray, rng: np.random.Generator, a: float = 0.0012, b: float = 0.0019,
                 z0: float = 0.4) -> np.ndarray:
    """``d + N(0,1) sigma(d)`` with ``sigma(z) = a + b (z - z0)^2`` (Nguyen et al. 2012)."""
    d = _f32(depth)
    n = rng.standard_normal(d.shape)
    out = d + n * axial_sigma(d, a, b, z0)
    return np.where(d > 0, np.maximum(out, 0), 0).astype(np.float32)


def quantise_disparity(depth: np.ndarray, focal_px: float = 525.0, baseline_m: float = 0.075,
                       step_px: float = 0.125) -> np.ndarray:
    """Round the disparity ``f b / z`` to ``step_px`` (Khoshelham & Elberink 2012)."""
    d = _f32(depth).astype(np.float64)
    fb = focal_px * baseline_m
    with np.errstate(divide="ignore", invalid="ignore"):
        disp = np.round(fb / d / step_px) * step_px
        z = np.where((d > 0) & (disp > 0), fb / disp, 0.0)
    return z.astype(np.float32)


def depth_edges(depth: np.ndarray, jump_m: float) -> Tuple[np.ndarray, np.ndarray]:
    """``(edge mask, far depth)``: pixels with a 4-neighbour more than ``jump_m`` farther away
    (or without a return), and that neighbour's largest depth."""
    d = _f32(depth)
    far = np.zeros_like(d)
    pad = np.pad(d, 1, mode="edge")
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        nb = pad[dy:dy + d.shape[0], dx:dx + d.shape[1]]
        far = np.maximum(far, np.where(nb - d > jump_m, nb, 0))
    return (far > 0) & (d > 0), far


def flying_pixels(depth: np.ndarray, rng: np.random.Generator, p: float = 0.5,
                  jump_m: float = 0.1) -> np.ndarray:
    """Edge pixels (see :func:`depth_edges`) get a depth between near and far with probability ``p``."""
    d = _f32(depth).copy()
    edge, far = depth_edges(d, jump_m)
    hit = edge & (rng.random(d.shape) < p)
    u = rng.random(d.shape).astype(np.float32)
    d[hit] = d[hit] + u[hit] * (far[hit] - d[hit])
    return d


def missing_returns(depth: np.ndarray, rng: np.random.Generator, p: float = 0.01,
                    p_edge: float = 0.3, jump_m: float = 0.1) -> np.ndarray:
    """Each pixel loses its return with probability ``p`` (``p_edge`` at depth edges)."""
    d = _f32(depth).copy()
    edge, _ = depth_edges(d, jump_m)
    prob = np.where(edge, p_edge, p)
    d[rng.random(d.shape) < prob] = 0
    return d


def _offsets(rng: np.random.Generator, n: int, max_offset: float, min_offset: float) -> np.ndarray:
    mag = rng.uniform(min_offset, max_offset, n)
    return (mag * rng.choice([-1.0, 1.0], n)).astype(np.float32)


def blob_outliers(depth: np.ndarray, rng: np.random.Generator, fraction: float, radius_px: int = 3,
                  max_offset: float = 1.0, min_offset: float = 0.1) -> Tuple[np.ndarray, float]:
    """NeuralFusion-style blob outliers; returns ``(depth, covered fraction of valid pixels)``."""
    d = _f32(depth).copy()
    if fraction <= 0:
        return d, 0.0
    yy, xx = np.mgrid[-radius_px:radius_px + 1, -radius_px:radius_px + 1]
    disk = (xx * xx + yy * yy) <= radius_px * radius_px
    # seeds with probability q such that 1 - (1 - q)^area = fraction (overlaps accounted)
    q = 1.0 - (1.0 - fraction) ** (1.0 / disk.sum())
    seeds = rng.random(d.shape) < q
    labels = np.zeros(d.shape, dtype=np.int32)
    ys, xs = np.nonzero(seeds)
    labels[ys, xs] = np.arange(1, len(ys) + 1)
    # each covered pixel takes the label of one seed whose disk covers it (max filter)
    labels = ndimage.grey_dilation(labels, footprint=disk)
    off = np.concatenate([[0.0], _offsets(rng, len(ys), max_offset, min_offset)]).astype(np.float32)
    hit = (labels > 0) & (d > 0)
    d[hit] = np.maximum(d[hit] + off[labels[hit]], 0.05)
    nvalid = max(int((depth > 0).sum()), 1)
    return d, float(hit.sum()) / nvalid


def pixel_outliers(depth: np.ndarray, rng: np.random.Generator, fraction: float,
                   max_offset: float = 1.0, min_offset: float = 0.1) -> np.ndarray:
    """Per-pixel outliers: each valid pixel, with probability ``fraction``, moves by its own offset."""
    d = _f32(depth).copy()
    hit = (rng.random(d.shape) < fraction) & (d > 0)
    d[hit] = np.maximum(d[hit] + _offsets(rng, int(hit.sum()), max_offset, min_offset), 0.05)
    return d


def realistic(depth: np.ndarray, rng: np.random.Generator, focal_px: float = 525.0) -> np.ndarray:
    """Room protocol sensor: axial Kinect noise, disparity quantisation, flying pixels (p 0.3),
    missing returns (1 %, 30 % at edges)."""
    d = axial_kinect(depth, rng)
    d = quantise_disparity(d, focal_px=focal_px)
    d = flying_pixels(d, rng, p=0.3)
    return missing_returns(d, rng, p=0.01, p_edge=0.3)
