"""Seeded synthetic sequences that are hard for depth-only tracking.

Each is a :class:`~neural_mapping.datasets.synthetic.SyntheticRoom` (same renderer, textured
surfaces, exact depth unless ``depth_noise_m``) with its own scene and trajectory:

================  ==========================================================================
``wall_floor``    an empty wide room (8 x 3.5 m, walls and floor only); the camera looks at one
                  wall and the floor and moves hand-held along the wall (up to ~2 cm and a few
                  tenths of a degree per frame): depth geometry leaves the translation along
                  the wall-floor line unconstrained; the wall's texture constrains it.
``corridor``      a corridor (10 x 1.6 m, walls and floor), the camera walks along it and back
                  looking down its length (beyond ``depth_max_m`` the end walls are not seen):
                  the translation along the corridor is unconstrained by geometry.
``fast_rotation`` the furnished room, the camera pans around from near the centre, up to ~4
                  degrees per frame.
``jump``          the furnished room, the camera swings back and forth on an arc of the orbit
                  (+-50 degrees, ~1.6 cm per frame) with ``jump_s`` seconds cut out in the
                  middle (timestamps keep the gap): it lands ~15 degrees back along the arc,
                  in a part of the room already mapped; a tracker must relocalise.
================  ==========================================================================

Motion is smooth (sums of sines, phases from ``seed``), so a constant-velocity prediction is
good but not exact.  ``ds.max_step()`` gives the largest per-frame translation and rotation.
"""

from __future__ import annotations

import math
from typing import List, Optional

import numpy as np

from neural_mapping.datasets.synthetic import SyntheticRoom, look_at

KINDS = ("wall_floor", "corridor", "fast_rotation", "jump")
_ROOMS = {"wall_floor": (8.0, 3.5, 2.5), "corridor": (10.0, 1.6, 2.5),
          "fast_rotation": (4.0, 3.5, 2.5), "jump": (4.0, 3.5, 2.5)}
_DEFAULT_FRAMES = {"wall_floor": 240, "corridor": 240, "fast_rotation": 180, "jump": 300}


class DegenerateSequence(SyntheticRoom):
    """One of :data:`KINDS` (see the module docstring).  ``num_frames``: frames kept (for
    ``jump``: after the cut); ``jump_s``: seconds cut out (``jump``, default 1.5)."""

    def __init__(self, kind: str, num_frames: Optional[int] = None, width: int = 640,
                 height: int = 480, seed: int = 0, max_frames: Optional[int] = None,
                 stride: int = 1, depth_noise_m: float = 0.0, fps: float = 30.0,
                 jump_s: float = 1.5):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.jump_s = float(jump_s)
        n = int(num_frames or _DEFAULT_FRAMES[kind])
        self._cut = int(round(self.jump_s * fps)) if kind == "jump" else 0
        self._phase = np.random.default_rng([seed, 7]).uniform(0, 2 * math.pi, 8)
        super().__init__(num_frames=n + self._cut, width=width, height=height, seed=seed,
                         max_frames=None, stride=1, depth_noise_m=depth_noise_m, ceiling=False,
                         room_size_m=_ROOMS[kind], orbit_deg=360.0, fps=fps)
        self.name = f"synthetic-{kind}:seed{self.seed}"
        keep = np.arange(self.num_recorded)
        if self._cut:  # cut [start, start + cut) out of the middle
            start = n // 2
            keep = np.concatenate([keep[:start], keep[start + self._cut:]])
            self.jump_index = start  # first frame after the jump (index in the sequence)
        step = int(stride) if stride else 1
        keep = keep[::step]
        if max_frames:
            keep = keep[: int(max_frames)]
        self.frame_numbers = keep
        self.timestamps = keep.astype(np.float64) / self.fps
        self._poses = self._all_poses[keep]

    # ---------------------------------------------------------------- scene
    def _build_objects(self) -> List:
        objs = super()._build_objects()
        if self.kind in ("wall_floor", "corridor"):  # walls and floor only
            objs = [o for o in objs if o.name == "floor" or o.name.startswith("wall_")]
        return objs

    # ----------------------------------------------------------- trajectory
    def _trajectory(self, n: int) -> np.ndarray:
        ph = self._phase
        if self.kind == "jump":
            out = np.empty((n, 4, 4))
            for k in range(n):
                th = 0.25 * math.pi + math.radians(50.0) * math.sin(0.6 * k / self.fps - math.pi / 2)
                u = np.array([math.cos(th), math.sin(th)])
                eye = np.array([*(0.9 * u), 1.45 + 0.05 * math.sin(1.1 * k / self.fps + ph[1])])
                target = np.array([*(-0.6 * u), 0.55 + 0.08 * math.sin(0.9 * k / self.fps + ph[2])])
                out[k] = look_at(eye, target, roll_rad=math.radians(3.0) * math.sin(th))
            return out
        t = np.arange(n) / self.fps
        poses = np.empty((n, 4, 4))
        for k, s in enumerate(t):
            if self.kind == "wall_floor":
                # 0.6 m amplitude at 1 rad/s along x: peak 0.6 m/s = 2 cm/frame
                x = 0.6 * math.sin(1.0 * s + ph[0])
                eye = np.array([x, 0.25 + 0.08 * math.sin(0.7 * s + ph[1]),
                                1.25 + 0.06 * math.sin(0.9 * s + ph[2])])
                yaw = math.radians(8.0) * math.sin(1.3 * s + ph[3])
                pitch = math.radians(32.0 + 5.0 * math.sin(1.1 * s + ph[4]))
                d = np.array([math.sin(yaw) * math.cos(pitch), -math.cos(yaw) * math.cos(pitch),
                              -math.sin(pitch)])
                roll = math.radians(3.0) * math.sin(1.7 * s + ph[5])
            elif self.kind == "corridor":
                x = -0.2 + 1.3 * math.sin(0.45 * s + ph[0])  # peak 0.6 m/s
                eye = np.array([x, 0.12 * math.sin(0.8 * s + ph[1]),
                                1.30 + 0.05 * math.sin(2.0 * s + ph[2])])
                yaw = math.radians(10.0) * math.sin(0.9 * s + ph[3])
                pitch = math.radians(18.0 + 5.0 * math.sin(1.2 * s + ph[4]))
                d = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch),
                              -math.sin(pitch)])
                roll = math.radians(3.0) * math.sin(1.5 * s + ph[5])
            else:  # fast_rotation: pan +-80 deg at 1.5 rad/s (peak 120 deg/s = 4 deg/frame)
                yaw = math.radians(80.0) * math.sin(1.5 * s + ph[0]) + ph[6]
                eye = np.array([0.35 * math.cos(ph[6]) + 0.05 * math.sin(0.9 * s + ph[1]),
                                0.35 * math.sin(ph[6]) + 0.05 * math.sin(1.1 * s + ph[2]),
                                1.45 + 0.04 * math.sin(1.3 * s + ph[3])])
                pitch = math.radians(28.0 + 6.0 * math.sin(1.0 * s + ph[4]))
                d = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch),
                              -math.sin(pitch)])
                roll = math.radians(3.0) * math.sin(1.4 * s + ph[5])
            poses[k] = look_at(eye, eye + d, roll_rad=roll)
        return poses

    def max_step(self):
        """Largest per-frame ``(translation m, rotation deg)`` of the selected frames (the jump
        itself excluded)."""
        from neural_mapping.geometry import pose_distance
        steps = [pose_distance(a, b) for a, b in zip(self._poses[:-1], self._poses[1:])]
        if self._cut:
            steps.pop(self.jump_index - 1)
        return max(s[0] for s in steps), math.degrees(max(s[1] for s in steps))
