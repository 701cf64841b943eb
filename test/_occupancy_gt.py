"""Ground truth for the occupancy tests: footprints of the synthetic room's convex objects in a
height slab, and which cells of a 2D grid they overlap (separating axis test)."""

import numpy as np
from scipy.spatial import ConvexHull


def slab_footprint(V, F, zmin, zmax):
    """CCW 2D convex hull of a convex mesh clipped to ``zmin <= z <= zmax`` (None if empty)."""
    V = np.asarray(V, float)
    F = np.asarray(F)
    pts = [V[(V[:, 2] >= zmin) & (V[:, 2] <= zmax), :2]]
    E = np.concatenate([F[:, [0, 1]], F[:, [1, 2]], F[:, [2, 0]]])
    a, b = V[E[:, 0]], V[E[:, 1]]
    for z in (zmin, zmax):
        dz = b[:, 2] - a[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            s = (z - a[:, 2]) / dz
        ok = (dz != 0) & (s >= 0) & (s <= 1)
        pts.append((a[ok] + s[ok, None] * (b[ok] - a[ok]))[:, :2])
    P = np.concatenate(pts)
    if len(P) < 3:
        return None
    return P[ConvexHull(P).vertices]


def cells_vs_polygon(poly, origin, res, H, W, eps=1e-6):
    """``(intersects, inside)`` [H, W] of the grid's cells against a CCW convex polygon."""
    X0, Y0 = np.meshgrid(origin[0] + np.arange(W) * res, origin[1] + np.arange(H) * res)
    X1, Y1 = X0 + res, Y0 + res
    inter = ((X0 < poly[:, 0].max() - eps) & (X1 > poly[:, 0].min() + eps)
             & (Y0 < poly[:, 1].max() - eps) & (Y1 > poly[:, 1].min() + eps))
    inside = np.ones_like(inter)
    for i in range(len(poly)):
        e = poly[(i + 1) % len(poly)] - poly[i]
        n = np.array([e[1], -e[0]]) / np.linalg.norm(e)  # outward normal (CCW)
        c = poly @ n
        cmin = np.minimum(n[0] * X0, n[0] * X1) + np.minimum(n[1] * Y0, n[1] * Y1)
        cmax = np.maximum(n[0] * X0, n[0] * X1) + np.maximum(n[1] * Y0, n[1] * Y1)
        inter &= (cmin < c.max() - eps) & (cmax > c.min() + eps)
        inside &= cmax <= c.max() + eps
    return inter, inside


def gt_cells(ds, g, zmin, zmax, T_world_gt=None):
    """GT ``(intersects, inside)`` masks for grid ``g``; ``T_world_gt`` maps the meshes'
    frame into g's map frame (default identity)."""
    inter = np.zeros(g.data.shape, bool)
    inside = np.zeros(g.data.shape, bool)
    for ob in ds.objects:
        V = np.asarray(ob.mesh.vertices)
        if T_world_gt is not None:
            V = V @ T_world_gt[:3, :3].T + T_world_gt[:3, 3]
        poly = slab_footprint(V, np.asarray(ob.mesh.triangles), zmin, zmax)
        if poly is None:
            continue
        a, b = cells_vs_polygon(poly, g.origin_xy, g.resolution_m, *g.data.shape)
        inter |= a
        inside |= b
    return inter, inside


def brute_distance(query_xy, obstacle_xy, chunk=2048):
    out = np.empty(len(query_xy))
    for s in range(0, len(query_xy), chunk):
        q = query_xy[s:s + chunk]
        d2 = ((q[:, None, :] - obstacle_xy[None, :, :]) ** 2).sum(-1)
        out[s:s + chunk] = np.sqrt(d2.min(1))
    return out
