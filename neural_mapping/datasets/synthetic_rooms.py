"""Procedural rooms for the ground-truth map-quality benchmark (``bench/bench_quality.py``).

:class:`ProceduralRoom` is a :class:`~neural_mapping.datasets.synthetic.SyntheticRoom` (same
renderer, colours, pose and frame conventions) whose layout is drawn from ``seed``:

* shell: floor and four walls (slabs, inner faces bound the room), room size drawn from
  4.0-5.0 x 3.4-4.4 x 2.5 m;
* furniture from primitives, with thin structures: a table (4 cm legs), two chairs (3 cm legs,
  2 cm back boards), a shelf (2 cm side panels and boards), 2-4 boxes, 1-2 cylinders and
  1-2 spheres, placed without overlap on a coarse grid of floor cells.

Trajectories (``trajectory``):

* ``"handheld"``: a closed orbit at 1.3-1.6 m around the room centre looking across it at the
  opposite walls, with wobble of radius, height, target and roll (as SyntheticRoom);
* ``"robot"``: a closed orbit at a fixed 0.6 m height, camera level (no roll, no pitch wobble)
  looking outwards-across, as a ground robot's camera.

Few- and many-view variants are the same trajectory sampled with fewer frames:
:data:`FEW_VIEWS` (40) and :data:`MANY_VIEWS` (120) frames per full turn.

Sensor (``sensor``): ``"clean"`` (exact z-depth), ``"realistic"``
(:func:`~neural_mapping.datasets.sensor_models.realistic`: axial Kinect noise, quantisation,
flying pixels, missing returns) or ``"gaussian"`` (RoutedFusion's ``d + N sigma d`` with
``sigma``); then optional ``blob_fraction`` / ``pixel_fraction`` outliers
(:mod:`~neural_mapping.datasets.sensor_models`).  Noise is seeded per frame from
``(seed, frame number)``: the same frame is the same image every time.
:meth:`clean_depth` renders a frame without any sensor model; :meth:`heldout_poses` gives views
between the frames (not fused) for the held-out rendered-depth metric.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np

from neural_mapping.datasets import sensor_models as sm
from neural_mapping.datasets.synthetic import SceneObject as _Object, SyntheticRoom, look_at as _look_at
from neural_mapping.types import RGBDFrame

__all__ = ["ProceduralRoom", "FEW_VIEWS", "MANY_VIEWS"]

FEW_VIEWS = 40
MANY_VIEWS = 120
_PATTERNS = ("checker", "stripes", "grain", "blotch", "plain")


class ProceduralRoom(SyntheticRoom):
    """Seeded procedural room (see the module docstring).  ``num_frames`` per full turn."""

    def __init__(self, seed: int = 0, num_frames: int = FEW_VIEWS, width: int = 320, height: int = 240,
                 trajectory: str = "handheld", sensor: str = "clean", sigma: float = 0.01,
                 blob_fraction: float = 0.0, pixel_fraction: float = 0.0, blob_radius_px: int = 3,
                 max_frames: Optional[int] = None, stride: int = 1, fps: float = 30.0):
        if trajectory not in ("handheld", "robot"):
            raise ValueError(f"trajectory must be handheld or robot, got {trajectory!r}")
        if sensor not in ("clean", "realistic", "gaussian"):
            raise ValueError(f"sensor must be clean, realistic or gaussian, got {sensor!r}")
        rng = np.random.default_rng([int(seed), 7])
        size = (float(rng.uniform(4.0, 5.0)), float(rng.uniform(3.4, 4.4)), 2.5)
        self.trajectory_kind = trajectory
        self.sensor = sensor
        self.sigma = float(sigma)
        self.blob_fraction = float(blob_fraction)
        self.pixel_fraction = float(pixel_fraction)
        self.blob_radius_px = int(blob_radius_px)
        super().__init__(num_frames=num_frames, width=width, height=height, seed=seed,
                         max_frames=max_frames, stride=stride, room_size_m=size, fps=fps)
        if trajectory == "robot":  # keep the robot's camera clear of the furniture
            self._all_poses = self._trajectory(self.num_recorded, clearance_m=0.4)
            self._poses = self._all_poses[self.frame_numbers]
        self.name = f"procedural:seed{self.seed}:{trajectory}:{num_frames}v:{sensor}" \
                    f":blob{self.blob_fraction:g}:pix{self.pixel_fraction:g}"

    # ------------------------------------------------------------------ scene
    def _build_objects(self) -> List[_Object]:
        o3d = self._o3d
        rng = np.random.default_rng(self.seed)
        X, Y, Z = self.room_size_m
        th = 0.05
        objs: List[_Object] = []

        def color():
            return np.clip(rng.uniform(0.15, 0.9, 3), 0, 1)

        def add(name, mesh, col=None, pattern=None, scale=None):
            mesh.compute_vertex_normals()
            objs.append(_Object(name, mesh, color() if col is None else col,
                                pattern or str(rng.choice(_PATTERNS)),
                                float(rng.uniform(0.05, 0.4)) if scale is None else scale))

        def box(name, size, center, yaw=0.0, col=None, pattern=None):
            m = o3d.geometry.TriangleMesh.create_box(*size)
            m.translate(-np.asarray(size, dtype=float) / 2.0)
            if yaw:
                m.rotate(m.get_rotation_matrix_from_xyz((0.0, 0.0, yaw)), center=(0, 0, 0))
            m.translate(center)
            add(name, m, col, pattern)

        def local(c, yaw, dx, dy):  # point (dx, dy) in a frame at c rotated by yaw
            cy, sy = math.cos(yaw), math.sin(yaw)
            return np.array([c[0] + cy * dx - sy * dy, c[1] + sy * dx + cy * dy])

        box("floor", (X + 2 * th, Y + 2 * th, th), (0, 0, -th / 2), pattern="checker")
        box("wall_+x", (th, Y + 2 * th, Z), (X / 2 + th / 2, 0, Z / 2))
        box("wall_-x", (th, Y + 2 * th, Z), (-X / 2 - th / 2, 0, Z / 2))
        box("wall_+y", (X, th, Z), (0, Y / 2 + th / 2, Z / 2))
        box("wall_-y", (X, th, Z), (0, -Y / 2 - th / 2, Z / 2))

        # shelf against the +y wall: 2 cm side panels and boards
        sw, sh, sd = rng.uniform(0.8, 1.2), rng.uniform(1.3, 1.8), 0.32
        sx = rng.uniform(-X / 2 + sw / 2 + 0.2, X / 2 - sw / 2 - 0.2)
        sy = Y / 2 - sd / 2 - 0.01
        wood = color()
        for s in (-1, 1):
            box("shelf_side", (0.02, sd, sh), (sx + s * (sw / 2 - 0.01), sy, sh / 2), col=wood, pattern="grain")
        nb = int(rng.integers(3, 6))
        for k in range(nb):
            z = 0.05 + k * (sh - 0.06) / (nb - 1)
            box("shelf_board", (sw - 0.04, sd, 0.02), (sx, sy, z), col=wood, pattern="grain")

        # table near the centre, 4 cm legs
        tw, td, tz = rng.uniform(0.9, 1.3), rng.uniform(0.6, 0.8), rng.uniform(0.70, 0.76)
        tc = rng.uniform(-0.3, 0.3, 2)
        tyaw = rng.uniform(-0.5, 0.5)
        wood = color()
        box("table_top", (tw, td, 0.03), (*tc, tz - 0.015), tyaw, wood, "grain")
        for ax in (-1, 1):
            for ay in (-1, 1):
                p = local(tc, tyaw, ax * (tw / 2 - 0.05), ay * (td / 2 - 0.05))
                box("table_leg", (0.04, 0.04, tz - 0.03), (*p, (tz - 0.03) / 2), tyaw, wood * 0.7, "plain")
        # two chairs at the table's long sides: 3 cm legs, 2 cm back board
        for s in (-1, 1):
            cyaw = tyaw + (0 if s > 0 else math.pi) + rng.uniform(-0.3, 0.3)
            cc = local(tc, tyaw, rng.uniform(-0.25, 0.25), s * (td / 2 + 0.3))
            seat, cz = 0.42, rng.uniform(0.42, 0.48)
            col = color()
            box("chair_seat", (seat, seat, 0.03), (*cc, cz), cyaw, col)
            for ax in (-1, 1):
                for ay in (-1, 1):
                    p = local(cc, cyaw, ax * (seat / 2 - 0.03), ay * (seat / 2 - 0.03))
                    box("chair_leg", (0.03, 0.03, cz - 0.015), (*p, (cz - 0.015) / 2), cyaw, col * 0.8, "plain")
            p = local(cc, cyaw, 0.0, s * 0 + (seat / 2 - 0.01))
            box("chair_back", (seat, 0.02, 0.45), (*p, cz + 0.24), cyaw, col)

        # boxes, cylinders, spheres on free floor cells along the walls
        cells = [(x, y) for x in np.linspace(-X / 2 + 0.45, X / 2 - 0.45, 5)
                 for y in np.linspace(-Y / 2 + 0.45, Y / 2 - 0.45, 4)
                 if abs(x) > 0.25 * X or abs(y) > 0.25 * Y]
        cells = [c for c in cells if not (abs(c[0] - sx) < sw / 2 + 0.3 and c[1] > Y / 2 - 0.8)]
        order = rng.permutation(len(cells))
        k = 0
        for kind, n in (("box", int(rng.integers(2, 5))), ("cylinder", int(rng.integers(1, 3))),
                        ("sphere", int(rng.integers(1, 3)))):
            for _ in range(n):
                if k >= len(order):
                    break
                cx, cy = cells[order[k]]
                k += 1
                if kind == "box":
                    s = rng.uniform(0.2, 0.45, 3)
                    box("box", tuple(s), (cx, cy, s[2] / 2), rng.uniform(-0.6, 0.6))
                elif kind == "cylinder":
                    r, h = rng.uniform(0.08, 0.2), rng.uniform(0.3, 0.9)
                    m = o3d.geometry.TriangleMesh.create_cylinder(r, h, resolution=32, split=4)
                    m.translate((cx, cy, h / 2))
                    add("cylinder", m)
                else:
                    r = rng.uniform(0.1, 0.2)
                    m = o3d.geometry.TriangleMesh.create_sphere(r, resolution=24)
                    m.translate((cx, cy, r))
                    add("sphere", m)
        return objs

    # -------------------------------------------------------------- trajectory
    def _trajectory(self, n: int, clearance_m: float = 0.0) -> np.ndarray:
        X, Y, _ = self.room_size_m
        poses = np.empty((n, 4, 4))
        r0 = 0.25 * min(X, Y)
        for k in range(n):
            th = 0.25 * math.pi + 2 * math.pi * k / n
            u = np.array([math.cos(th), math.sin(th)])
            if self.trajectory_kind == "robot":
                eye = np.array([*(r0 * u), 0.6])
                if clearance_m > 0:  # shrink the radius (then grow it) until the eye is clear
                    for r in np.concatenate([np.linspace(r0, 0.2 * r0, 9), np.linspace(1.1, 1.6, 6) * r0]):
                        eye = np.array([*(r * u), 0.6])
                        if self._clearance(eye) >= clearance_m:
                            break
                target = np.array([*(-1.0 * r0 * u + 0.5 * r0 * np.array([-u[1], u[0]])), 0.6])
                poses[k] = _look_at(eye, target)
            else:
                radius = r0 + 0.08 * math.sin(2 * th)
                eye = np.array([*(radius * u), 1.45 + 0.12 * math.sin(2 * th)])
                tgt = -0.7 * r0 * u + 0.1 * np.array([math.cos(2 * th + 1.0), math.sin(2 * th)])
                target = np.array([*tgt, 0.55 + 0.12 * math.sin(2 * th + 0.5)])
                poses[k] = _look_at(eye, target, roll_rad=math.radians(3.0) * math.sin(th))
        return poses

    def heldout_poses(self, every: int = 4) -> np.ndarray:
        """Camera-to-world poses ``[K, 4, 4]`` on the same trajectory but not among its frames:
        halfway between consecutive frames, every ``every``-th of them (held-out views for the
        rendered-depth metric; render their exact depth with :meth:`render`)."""
        n = self.num_recorded
        mid = self._trajectory(2 * n, clearance_m=0.4 if self.trajectory_kind == "robot" else 0.0)[1::2]
        return mid[::max(int(every), 1)].copy()

    def _clearance(self, p: np.ndarray) -> float:
        o3d = self._o3d
        q = o3d.core.Tensor(np.asarray(p, dtype=np.float32)[None])
        return float(self._scene.compute_distance(q).numpy()[0])

    # ----------------------------------------------------------------- frames
    def clean_depth(self, i: int) -> np.ndarray:
        """Exact z-depth of frame ``i`` (no sensor model)."""
        return self.render(self._poses[i])[0]

    def apply_sensor(self, depth: np.ndarray, frame_number: int) -> Tuple[np.ndarray, float]:
        """The configured sensor model on a clean depth image; ``(depth, blob coverage)``."""
        rng = np.random.default_rng([self.seed, int(frame_number), 13])
        d = depth
        if self.sensor == "realistic":
            d = sm.realistic(d, rng, focal_px=525.0)
        elif self.sensor == "gaussian":
            d = sm.proportional_gaussian(d, rng, self.sigma)
        cover = 0.0
        if self.blob_fraction > 0:
            d, cover = sm.blob_outliers(d, rng, self.blob_fraction, self.blob_radius_px)
        if self.pixel_fraction > 0:
            d = sm.pixel_outliers(d, rng, self.pixel_fraction)
        return d, cover

    def _load(self, i: int) -> RGBDFrame:
        n = int(self.frame_numbers[i])
        depth, color = self.render(self._poses[i])
        depth, cover = self.apply_sensor(depth, n)
        return RGBDFrame(depth=depth, intrinsics=self.intrinsics, color=color,
                         timestamp=float(self.timestamps[i]), pose=self._poses[i].copy(), index=i,
                         meta={"source_index": n, "dataset": self.name, "blob_coverage": cover})
