"""Procedural RGB-D sequence of a furnished room, rendered with Open3D ray casting.

The scene (deterministic from ``seed``): floor, four walls, optional ceiling
(open by default, so views from above see in), a table with four legs, a sphere
on the table, a shelf against a wall, a cylinder (bin), a cone and a few boxes,
with jittered sizes, positions and colours.  Every object is an Open3D
``TriangleMesh`` primitive; walls and floor are slabs whose inner faces are the
room's boundary.  World frame: z up, floor at z = 0, room centred on the origin.

Colour: each object's albedo (looked up from the hit's geometry id) times a
procedural pattern evaluated at the hit point (checker, stripes, wood grain,
blotches), so images have texture for photometric tracking.  There is no
lighting: a surface point has the same colour from every view.

Depth: rays are built for pixel centres at integer pixel coordinates (the
convention of :class:`~neural_mapping.types.CameraIntrinsics`).  Open3D's
``create_rays_pinhole`` puts pixel ``u``'s centre at ``u + 0.5``, so the
principal point handed to it is shifted by +0.5 px.  Its ray directions are *not*
normalised: in the camera frame they are ``((u - cx) / fx, (v - cy) / fy, 1)``,
so the hit distance ``t_hit`` along such a ray is exactly the z-depth.  Misses are
depth 0.  Optional noise: Gaussian with standard deviation
``depth_noise_m * z^2`` (Kinect-like growth with range), seeded per frame.

Trajectory: an orbit (``orbit_deg``, default a full turn) of radius ~0.9 m
around the room centre at 1.35-1.55 m height, looking across the table at the
opposite walls, with a slow wobble of radius, height, target and roll.  Frame
``k`` has timestamp ``k / fps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from neural_mapping.types import CameraIntrinsics, RGBDFrame
from neural_mapping.datasets.base import Dataset, select_indices


@dataclass
class _Object:
    name: str
    mesh: "object"  # open3d.geometry.TriangleMesh (legacy)
    color: np.ndarray  # albedo RGB in [0, 1]
    pattern: str
    scale: float


def _look_at(eye: np.ndarray, target: np.ndarray, roll_rad: float = 0.0,
             up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """``T_world_cam`` of an optical-convention camera (x right, y down, z forward)."""
    fwd = target - eye
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, np.asarray(up, dtype=np.float64))
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    c, s = math.cos(roll_rad), math.sin(roll_rad)
    right, down = c * right + s * down, -s * right + c * down
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = right, down, fwd, eye
    return T


look_at = _look_at  # public: other generators (datasets/synthetic_tracking.py) use it


class SyntheticRoom(Dataset):
    """Synthetic furnished room with ground-truth poses and mesh (see the module docstring).

    Parameters: ``num_frames`` in the recording (``max_frames``/``stride`` select from
    them), image ``width``/``height`` (focal length scales with width: 525 px at 640),
    ``seed``, ``depth_noise_m`` (0 = exact depth), ``ceiling``, ``room_size_m``
    (x, y, z), ``orbit_deg``, ``fps``.
    """

    def __init__(self, num_frames: int = 120, width: int = 640, height: int = 480, seed: int = 0,
                 max_frames: Optional[int] = None, stride: int = 1, depth_noise_m: float = 0.0,
                 ceiling: bool = False, room_size_m: Tuple[float, float, float] = (4.0, 3.5, 2.5),
                 orbit_deg: float = 360.0, fps: float = 30.0):
        import open3d as o3d  # imported lazily: the loaders for real data do not need it

        self._o3d = o3d
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if not depth_noise_m >= 0:
            raise ValueError(f"depth_noise_m must be >= 0, got {depth_noise_m}")
        self.seed = int(seed)
        self.num_recorded = int(num_frames)
        self.depth_noise_m = float(depth_noise_m)
        self.ceiling = bool(ceiling)
        self.room_size_m = tuple(float(v) for v in room_size_m)
        self.orbit_deg = float(orbit_deg)
        self.fps = float(fps)
        f = 525.0 * width / 640.0
        self.intrinsics = CameraIntrinsics(width, height, f, f, (width - 1) / 2.0, (height - 1) / 2.0)
        self.name = f"synthetic:seed{self.seed}"
        self.has_ground_truth = True

        sel = select_indices(self.num_recorded, max_frames, stride)
        if len(sel) == 0:
            raise ValueError(f"no frames selected (max_frames={max_frames}, stride={stride})")
        self.frame_numbers = sel
        self.timestamps = sel.astype(np.float64) / self.fps
        self._all_poses = self._trajectory(self.num_recorded)
        self._poses = self._all_poses[sel]

        self.objects = self._build_objects()
        self._scene = o3d.t.geometry.RaycastingScene()
        gids = []
        for ob in self.objects:
            gids.append(self._scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(ob.mesh)))
        self._gid_to_obj = {int(g): k for k, g in enumerate(gids)}
        n = max(gids) + 1
        self._albedo = np.zeros((n + 1, 3), dtype=np.float32)
        self._pattern = np.zeros(n + 1, dtype=np.int64)
        self._scale = np.ones(n + 1, dtype=np.float32)
        kinds = {"plain": 0, "checker": 1, "stripes": 2, "grain": 3, "blotch": 4}
        for g, k in self._gid_to_obj.items():
            ob = self.objects[k]
            self._albedo[g] = ob.color
            self._pattern[g] = kinds[ob.pattern]
            self._scale[g] = ob.scale

    # ------------------------------------------------------------------ scene
    def _build_objects(self) -> List[_Object]:
        o3d = self._o3d
        rng = np.random.default_rng(self.seed)
        X, Y, Z = self.room_size_m
        th = 0.05  # slab thickness
        objs: List[_Object] = []

        def box(name, size, center, color, pattern="plain", scale=0.25, yaw=0.0):
            m = o3d.geometry.TriangleMesh.create_box(*size)
            m.translate(-np.asarray(size) / 2.0)
            if yaw:
                m.rotate(m.get_rotation_matrix_from_xyz((0.0, 0.0, yaw)), center=(0, 0, 0))
            m.translate(center)
            objs.append(_Object(name, m, np.clip(np.asarray(color, float), 0, 1), pattern, scale))

        def jitter_color(c, amount=0.08):
            return np.clip(np.asarray(c, float) + rng.uniform(-amount, amount, 3), 0.05, 0.95)

        # shell: inner faces at x = +-X/2, y = +-Y/2, z = 0 (floor), z = Z (ceiling)
        box("floor", (X + 2 * th, Y + 2 * th, th), (0, 0, -th / 2), jitter_color([0.55, 0.45, 0.35]),
            "checker", 0.5)
        wall_colors = [[0.80, 0.78, 0.70], [0.65, 0.75, 0.80], [0.80, 0.70, 0.65], [0.70, 0.80, 0.68]]
        box("wall_+x", (th, Y + 2 * th, Z), (X / 2 + th / 2, 0, Z / 2), jitter_color(wall_colors[0]), "stripes", 0.30)
        box("wall_-x", (th, Y + 2 * th, Z), (-X / 2 - th / 2, 0, Z / 2), jitter_color(wall_colors[1]), "blotch", 0.40)
        box("wall_+y", (X, th, Z), (0, Y / 2 + th / 2, Z / 2), jitter_color(wall_colors[2]), "checker", 0.35)
        box("wall_-y", (X, th, Z), (0, -Y / 2 - th / 2, Z / 2), jitter_color(wall_colors[3]), "stripes", 0.22)
        if self.ceiling:
            box("ceiling", (X + 2 * th, Y + 2 * th, th), (0, 0, Z + th / 2), [0.9, 0.9, 0.9], "plain")

        # table in the middle
        tw, td, tz = rng.uniform(0.9, 1.1), rng.uniform(0.55, 0.7), rng.uniform(0.70, 0.76)
        tx, ty = rng.uniform(-0.1, 0.1, 2)
        wood = jitter_color([0.60, 0.40, 0.22])
        box("table_top", (tw, td, 0.04), (tx, ty, tz - 0.02), wood, "grain", 0.08)
        for sx in (-1, 1):
            for sy in (-1, 1):
                box("table_leg", (0.05, 0.05, tz - 0.04),
                    (tx + sx * (tw / 2 - 0.05), ty + sy * (td / 2 - 0.05), (tz - 0.04) / 2), wood * 0.7)
        # sphere on the table
        r = rng.uniform(0.10, 0.14)
        sph = o3d.geometry.TriangleMesh.create_sphere(r, resolution=24)
        sph.translate((tx + rng.uniform(-0.2, 0.2), ty + rng.uniform(-0.1, 0.1), tz + r))
        objs.append(_Object("sphere", sph, jitter_color([0.85, 0.25, 0.20]), "stripes", 0.05))
        # a small box on the table
        box("table_box", (0.18, 0.12, 0.10), (tx - tw / 4, ty + 0.05, tz + 0.05),
            jitter_color([0.2, 0.3, 0.8]), "checker", 0.05, yaw=rng.uniform(-0.6, 0.6))
        # shelf against the +y wall
        sw, sh = rng.uniform(0.9, 1.3), rng.uniform(1.4, 1.7)
        box("shelf", (sw, 0.35, sh), (rng.uniform(-1.0, 0.2), Y / 2 - 0.175, sh / 2),
            jitter_color([0.35, 0.25, 0.18]), "grain", 0.12)
        # cylinder (bin) near the -x wall
        cr, ch = rng.uniform(0.15, 0.22), rng.uniform(0.5, 0.8)
        cyl = o3d.geometry.TriangleMesh.create_cylinder(cr, ch, resolution=32, split=4)
        cyl.translate((-X / 2 + cr + 0.1, rng.uniform(-0.9, 0.3), ch / 2))
        objs.append(_Object("cylinder", cyl, jitter_color([0.25, 0.65, 0.30]), "stripes", 0.08))
        # cone near the +x wall
        kr, kh = rng.uniform(0.15, 0.2), rng.uniform(0.4, 0.6)
        cone = o3d.geometry.TriangleMesh.create_cone(kr, kh, resolution=32, split=2)
        cone.translate((X / 2 - kr - 0.15, rng.uniform(0.2, 0.9), 0.0))
        objs.append(_Object("cone", cone, jitter_color([0.9, 0.7, 0.15]), "checker", 0.07))
        # boxes in the corners / along the walls
        spots = [(X / 2 - 0.35, -Y / 2 + 0.35), (-X / 2 + 0.4, Y / 2 - 0.9), (0.6, -Y / 2 + 0.3),
                 (X / 2 - 0.3, Y / 2 - 0.3)]
        palette = [[0.3, 0.5, 0.9], [0.8, 0.3, 0.6], [0.5, 0.5, 0.5], [0.9, 0.5, 0.2]]
        for k, (bx, by) in enumerate(spots):
            s = rng.uniform(0.25, 0.45, 3)
            s[2] = rng.uniform(0.25, 0.6)
            box(f"box{k}", tuple(s), (bx + rng.uniform(-0.05, 0.05), by + rng.uniform(-0.05, 0.05), s[2] / 2),
                jitter_color(palette[k]), ("checker", "blotch", "stripes", "grain")[k], 0.1,
                yaw=rng.uniform(-0.4, 0.4))
        for ob in objs:
            ob.mesh.compute_vertex_normals()
        return objs

    def gt_mesh(self):
        """All objects as one Open3D ``TriangleMesh`` (vertex colours = albedo), world frame."""
        o3d = self._o3d
        out = o3d.geometry.TriangleMesh()
        for ob in self.objects:
            m = o3d.geometry.TriangleMesh(ob.mesh)
            m.paint_uniform_color(ob.color)
            out += m
        out.compute_vertex_normals()
        return out

    @property
    def bounds_m(self) -> Tuple[np.ndarray, np.ndarray]:
        """Axis-aligned interior of the room ``(min_xyz, max_xyz)``."""
        X, Y, Z = self.room_size_m
        return np.array([-X / 2, -Y / 2, 0.0]), np.array([X / 2, Y / 2, Z])

    # -------------------------------------------------------------- trajectory
    def _trajectory(self, n: int) -> np.ndarray:
        poses = np.empty((n, 4, 4))
        span = math.radians(self.orbit_deg)
        denom = n if abs(self.orbit_deg) >= 360.0 else max(n - 1, 1)
        th0 = 0.25 * math.pi
        for k in range(n):
            th = th0 + span * k / denom
            u = np.array([math.cos(th), math.sin(th)])
            radius = 0.9 + 0.08 * math.sin(2 * th)
            eye = np.array([*(radius * u), 1.45 + 0.10 * math.sin(2 * th)])
            tgt_xy = -0.6 * u + 0.08 * np.array([math.cos(2 * th + 1.0), math.sin(2 * th)])
            target = np.array([*tgt_xy, 0.55 + 0.10 * math.sin(2 * th + 0.5)])
            poses[k] = _look_at(eye, target, roll_rad=math.radians(3.0) * math.sin(th))
        return poses

    # ----------------------------------------------------------------- render
    def render(self, T_world_cam: np.ndarray, intrinsics: Optional[CameraIntrinsics] = None,
               rng: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, np.ndarray]:
        """``(depth float32 metres, color uint8 RGB)`` of the scene seen from ``T_world_cam``."""
        o3d = self._o3d
        K = intrinsics or self.intrinsics
        Km = np.array([[K.fx, 0, K.cx + 0.5], [0, K.fy, K.cy + 0.5], [0, 0, 1]])
        T_cam_world = np.linalg.inv(np.asarray(T_world_cam, dtype=np.float64))
        rays = o3d.t.geometry.RaycastingScene.create_rays_pinhole(
            o3d.core.Tensor(Km), o3d.core.Tensor(T_cam_world), K.width, K.height)
        ans = self._scene.cast_rays(rays)
        t = ans["t_hit"].numpy()
        gid = ans["geometry_ids"].numpy().astype(np.int64)
        hit = np.isfinite(t)
        depth = np.where(hit, t, 0.0).astype(np.float32)
        r = rays.numpy()
        pts = r[..., :3] + r[..., 3:] * np.where(hit, t, 0.0)[..., None]
        gid = np.where(hit, gid, len(self._albedo) - 1)  # last row: black background
        albedo = self._albedo[gid]
        factor = self._pattern_factor(pts, self._pattern[gid], self._scale[gid])
        color = np.clip(albedo * factor[..., None] * 255.0, 0, 255)
        color = np.where(hit[..., None], color, 0).astype(np.uint8)
        if self.depth_noise_m > 0 and rng is not None:
            noise = rng.normal(0.0, 1.0, depth.shape).astype(np.float32)
            depth = np.where(hit, depth + noise * np.float32(self.depth_noise_m) * depth * depth, 0)
            depth = np.maximum(depth, 0).astype(np.float32)
        return depth, color

    @staticmethod
    def _pattern_factor(p: np.ndarray, kind: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Brightness factor of the procedural pattern ``kind`` at points ``p`` (evaluated per
        kind on its pixels only)."""
        out = np.ones(p.shape[:-1], dtype=np.float32)
        for k in np.unique(kind):
            if k == 0:
                continue
            m = kind == k
            q = p[m] / scale[m][:, None]
            x, y, z = q[:, 0], q[:, 1], q[:, 2]
            if k == 1:  # checker
                f = np.where((np.floor(x + 1e-4) + np.floor(y + 1e-4) + np.floor(z + 1e-4)) % 2 == 0, 1.0, 0.62)
            elif k == 2:  # stripes
                f = 0.75 + 0.25 * np.sign(np.sin(2 * np.pi * (z + 0.3 * x + 0.3 * y)))
            elif k == 3:  # wood grain
                f = 0.8 + 0.12 * np.sin(2 * np.pi * (x + 0.35 * np.sin(3.1 * y) + 0.2 * np.sin(1.7 * z))) \
                    + 0.08 * np.sin(11.0 * (y + z))
            else:  # blotches
                f = 0.78 + 0.12 * np.sin(2.3 * x + 1.1 * np.sin(1.9 * z)) * np.sin(2.9 * y + 1.7 * z) \
                    + 0.1 * np.sign(np.sin(2 * np.pi * x) * np.sin(2 * np.pi * z))
            out[m] = f
        return out

    def _load(self, i: int) -> RGBDFrame:
        n = int(self.frame_numbers[i])
        rng = np.random.default_rng([self.seed, n]) if self.depth_noise_m > 0 else None
        depth, color = self.render(self._poses[i], rng=rng)
        return RGBDFrame(depth=depth, intrinsics=self.intrinsics, color=color,
                         timestamp=float(self.timestamps[i]), pose=self._poses[i].copy(), index=i,
                         meta={"source_index": n, "dataset": self.name})

    def gt_poses(self) -> np.ndarray:
        return self._poses.copy()


# public names for the other synthetic generators (datasets/synthetic_rooms.py, synthetic_objects.py)
look_at = _look_at
SceneObject = _Object
