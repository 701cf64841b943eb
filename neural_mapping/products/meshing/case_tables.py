"""Marching-cubes case tables, generated at import (no copied 256-entry table).

Standard corner/edge numbering of Lorensen & Cline / Bourke.  Instead of copying the
classic 256-entry triangle table (which resolves ambiguous faces differently in a case
and its complement, so neighbouring cubes can disagree and leave holes (Duerst 1988)),
each case's surface is built face by face: on every cube face the sign-change points are
joined by segments; on an ambiguous face (negative corners on a diagonal) the negative
corners are always separated, the choice the classic table makes for its low cases.  The
rule depends on the face's four signs only, so the two cubes sharing a face agree, and the
segments chain into closed loops.  Segments are oriented so that every triangle's
counter-clockwise normal points towards +sdf (free space), consistently across cubes.
Each loop is triangulated without diagonals lying in a cube face (which the neighbouring
cube could repeat), by minimum diagonal length.  Result: a closed, consistently oriented,
edge-manifold surface wherever all cubes around it are observed.  On real data the mesh
has the same vertices and the same number of triangles as Open3D's VoxelBlockGrid mesh
of the same voxels (``bench/bench_meshing.py``).
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

__all__ = ["CORNER_OFFSETS", "EDGE_CORNERS", "build_case_tables", "TRI_TABLE", "TRI_COUNT"]

# Corner i of a cube at offset CORNER_OFFSETS[i] from its min corner (Bourke's numbering).
CORNER_OFFSETS: Tuple[Tuple[int, int, int], ...] = (
    (0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1))
# Edge j joins corners EDGE_CORNERS[j].
EDGE_CORNERS: Tuple[Tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))
# Faces as (outward normal, corners in cyclic order).
_FACES: Tuple[Tuple[Tuple[int, int, int], Tuple[int, int, int, int]], ...] = (
    ((0, 0, -1), (0, 1, 2, 3)), ((0, 0, 1), (4, 5, 6, 7)),
    ((0, -1, 0), (0, 1, 5, 4)), ((0, 1, 0), (3, 2, 6, 7)),
    ((-1, 0, 0), (0, 3, 7, 4)), ((1, 0, 0), (1, 2, 6, 5)))


def _edge_of(a: int, b: int) -> int:
    for j, (p, q) in enumerate(EDGE_CORNERS):
        if (p, q) == (a, b) or (p, q) == (b, a):
            return j
    raise KeyError((a, b))


def _case_loops(case: int) -> List[List[int]]:
    """Closed, oriented loops of edge ids for one case (bit i set = corner i negative)."""
    neg = [(case >> i) & 1 == 1 for i in range(8)]
    corner = np.asarray(CORNER_OFFSETS, dtype=np.float64)
    mid = np.asarray([(corner[a] + corner[b]) / 2 for a, b in EDGE_CORNERS])
    nxt: Dict[int, int] = {}

    def add_segment(ea: int, eb: int, normal, neg_corner: int) -> None:
        # Orient a -> b so that (b - a) x n_out points to the negative side.
        d = np.cross(mid[eb] - mid[ea], np.asarray(normal, dtype=np.float64))
        side = corner[neg_corner] - (mid[ea] + mid[eb]) / 2
        if float(d @ side) < 0:
            ea, eb = eb, ea
        assert ea not in nxt, (case, ea)
        nxt[ea] = eb

    for normal, cyc in _FACES:
        edges = [_edge_of(cyc[k], cyc[(k + 1) % 4]) for k in range(4)]  # edge k: cyc[k]-cyc[k+1]
        crossing = [k for k in range(4) if neg[cyc[k]] != neg[cyc[(k + 1) % 4]]]
        if len(crossing) == 2:
            k0, k1 = crossing
            negc = next(c for c in cyc if neg[c])
            add_segment(edges[k0], edges[k1], normal, negc)
        elif len(crossing) == 4:
            # Ambiguous face: separate the two (diagonal) negative corners.
            for k in range(4):
                if neg[cyc[k]]:
                    add_segment(edges[(k - 1) % 4], edges[k], normal, cyc[k])
    loops: List[List[int]] = []
    seen = set()
    for start in sorted(nxt):
        if start in seen:
            continue
        loop = [start]
        seen.add(start)
        e = nxt[start]
        while e != start:
            loop.append(e)
            seen.add(e)
            e = nxt[e]
        loops.append(loop)
    return loops


def _edge_faces() -> List[set]:
    faces = [set(cyc) for _, cyc in _FACES]
    return [{f for f, fc in enumerate(faces) if a in fc and b in fc} for a, b in EDGE_CORNERS]


_EDGE_FACES = _edge_faces()


def _triangulate(loop: List[int]) -> List[Tuple[int, int, int]]:
    """Minimum-length triangulation of a loop without diagonals along a cube face.

    A diagonal joining two vertices of one face would lie in that face, where the
    neighbouring cube may draw the same diagonal: the edge would then carry four
    triangles.  Diagonals between vertices on no common face run through the
    cube's interior, so the mesh stays edge-manifold.
    """
    n = len(loop)
    corner = np.asarray(CORNER_OFFSETS, dtype=np.float64)
    mid = [(corner[a] + corner[b]) / 2 for a, b in (EDGE_CORNERS[e] for e in loop)]

    def cost(i: int, j: int) -> float:
        if (j - i) % n in (1, n - 1):
            return 0.0  # a side of the loop
        if _EDGE_FACES[loop[i]] & _EDGE_FACES[loop[j]]:
            return float("inf")
        return float(np.linalg.norm(mid[i] - mid[j]))

    best: Dict[Tuple[int, int], Tuple[float, int]] = {}
    for span in range(2, n):
        for i in range(0, n - span):
            j = i + span
            best[i, j] = min((best.get((i, k), (0.0, -1))[0] + best.get((k, j), (0.0, -1))[0]
                              + cost(i, k) + cost(k, j), k) for k in range(i + 1, j))
    tris: List[Tuple[int, int, int]] = []

    def emit(i: int, j: int) -> None:
        if j - i < 2:
            return
        k = best[i, j][1]
        tris.append((loop[i], loop[k], loop[j]))
        emit(i, k)
        emit(k, j)

    if not np.isfinite(best[0, n - 1][0]):
        raise AssertionError(f"no face-free triangulation of loop {loop}")
    emit(0, n - 1)
    return tris


def build_case_tables() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(edge_mask [256] int32, tri_table [256, max_tri, 3] int64 (-1 pad), tri_count [256])``.

    ``edge_mask[c]`` has bit ``j`` set when edge ``j`` carries a vertex in case ``c``;
    ``tri_table[c, k]`` are the 3 edge ids of triangle ``k`` (counter-clockwise seen
    from the +sdf side).
    """
    tris: List[List[Tuple[int, int, int]]] = []
    masks = np.zeros(256, dtype=np.int32)
    for case in range(256):
        ct: List[Tuple[int, int, int]] = []
        for loop in _case_loops(case):
            for e in loop:
                masks[case] |= 1 << e
            ct.extend(_triangulate(loop))
        tris.append(ct)
    max_tri = max(len(t) for t in tris)
    table = np.full((256, max_tri, 3), -1, dtype=np.int64)
    count = np.zeros(256, dtype=np.int64)
    for case, ct in enumerate(tris):
        count[case] = len(ct)
        if ct:
            table[case, :len(ct)] = ct
    return masks, table, count


# Indexed by case (bit i set = corner CORNER_OFFSETS[i] negative).
_, TRI_TABLE, TRI_COUNT = build_case_tables()
