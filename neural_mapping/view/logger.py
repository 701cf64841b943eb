"""What the live view logs to Rerun, from outputs we already have (no threads here).

Entities (``/`` is Rerun's root)::

    world/map/mesh/b<key>   Mesh3D, static: one per mesh block (key: packed block coordinate,
                            ``products.meshing.cache``), re-logged only when the block changed,
                            Clear when it emptied or was evicted
    world/trajectory        LineStrips3D, static: the camera path so far (cleared, with the
                            occupancy image, when the map is reset or loaded)
    world/camera            Transform3D (frame timeline) + Pinhole of the logged images
    world/camera/color      Image (downsampled), frame timeline
    world/camera/depth      DepthImage (metres), frame timeline
    occupancy               Image, static: the 2D occupancy grid (free white, occupied black,
                            unknown grey; row 0 = largest y, so north is up)
    stats/<counter>         Scalars, frame timeline: tracking status and drop counters

The map is static, so a browser that joins late gets all of it at once however much per-frame
data the server had to drop (the server keeps static data outside its memory limit).
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Optional

import numpy as np

from neural_mapping.view import require_rerun

MESH_ROOT = "world/map/mesh"
CAMERA = "world/camera"
TRAJECTORY = "world/trajectory"
OCCUPANCY = "occupancy"
STATS = "stats"
FRAME_TIMELINE = "frame"
# counters of MappingSystem.stats() shown as scalars (plus every "dropped", "failures" and
# "skipped" key)
STAT_KEYS = ("frames_integrated", "tracking_lost", "queue_frames", "queue_map")
# counters the system reports only once they are non-zero: shown from 0
STAT_ZEROS = {"dropped_tracking_behind": 0, "dropped_mapping_behind": 0, "track_failures": 0}


def block_path(key: int) -> str:
    return f"{MESH_ROOT}/b{int(key)}"


def default_blueprint():
    """3D map large on the left; color, depth, occupancy and counters beside it."""
    rr = require_rerun()
    import rerun.blueprint as rrb
    side = rrb.Vertical(
        rrb.Spatial2DView(origin=CAMERA, contents="$origin/color", name="color"),
        rrb.Spatial2DView(origin=CAMERA, contents="$origin/depth", name="depth"),
        rrb.Spatial2DView(origin=OCCUPANCY, name="occupancy"),
        rrb.TimeSeriesView(origin=STATS, name="tracking and drops"))
    del rr
    return rrb.Blueprint(
        rrb.Horizontal(rrb.Spatial3DView(
            origin="world", name="map", contents=["+ $origin/**", f"- {CAMERA}/depth"]), side, column_shares=[3, 1]),
        rrb.BlueprintPanel(state="hidden"), rrb.SelectionPanel(state="hidden"),
        # follow the newest frame on the frame timeline (not log_time)
        rrb.TimePanel(state="collapsed", timeline=FRAME_TIMELINE, play_state="following"))


class MapViewLogger:
    """Turns mesh updates, frames, poses, occupancy grids and counters into Rerun logs on ``rec``
    (a ``rerun.RecordingStream``).  Not thread-safe: one caller (the view's logging thread)."""

    def __init__(self, rec, image_width_px: int):
        self.rr = require_rerun()
        self.rec = rec
        self.image_width_px = int(image_width_px)
        self.blocks: Dict[int, None] = {}   # block keys currently logged with triangles
        self.counts = {"blocks_logged": 0, "blocks_cleared": 0, "frames_logged": 0}
        self._pinhole = None

    # ------------------------------------------------------------------ map
    def log_world_z_up(self) -> None:
        """The world frame's z axis is up (``map_up_source: world_z``): the 3D view's orbit
        follows it."""
        self.rec.log("world", self.rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)

    def log_mesh_update(self, update) -> int:
        """Log the changed blocks of a ``MeshUpdate`` and clear its emptied ones; returns how
        many entities were written."""
        rr = self.rr
        n = 0
        for key in update.emptied:
            if key in self.blocks:
                self.rec.log(block_path(key), rr.Clear(recursive=False), static=True)
                del self.blocks[key]
                self.counts["blocks_cleared"] += 1
                n += 1
        for key, piece in update.changed.items():
            if piece.num_triangles == 0:
                continue
            self.rec.log(block_path(key), rr.Mesh3D(vertex_positions=piece.vertices,
                                                    vertex_colors=piece.colors), static=True)
            self.blocks[key] = None
            self.counts["blocks_logged"] += 1
            n += 1
        return n

    def log_trajectory(self, positions: np.ndarray) -> None:
        """The camera path (``[N, 3]`` world positions), replacing the previous one."""
        if len(positions) >= 2:
            self.rec.log(TRAJECTORY, self.rr.LineStrips3D([np.asarray(positions, np.float32)],
                                                          colors=[[255, 140, 0]]), static=True)

    def clear_trajectory_and_occupancy(self) -> None:
        """After a reset / load: the old path and occupancy image no longer apply."""
        for path in (TRAJECTORY, OCCUPANCY):
            self.rec.log(path, self.rr.Clear(recursive=False), static=True)

    def log_occupancy(self, grid) -> None:
        """A 2D occupancy grid (``products.occupancy.OccupancyGrid2D``) as a grey image."""
        if grid is None:
            return
        data = grid.data
        known_r, known_c = np.nonzero(data != -1)
        if len(known_r):  # crop to the observed cells (the grid grows in large steps), 2-cell margin
            r0, r1 = max(0, known_r.min() - 2), known_r.max() + 3
            c0, c1 = max(0, known_c.min() - 2), known_c.max() + 3
            data = data[r0:r1, c0:c1]
        img = np.full(data.shape, 128, np.uint8)
        img[data == 0] = 255
        img[data == 100] = 0
        self.rec.log(OCCUPANCY, self.rr.Image(img[::-1].copy()), static=True)

    # ------------------------------------------------------------------ frames
    def log_frame(self, frame, T_world_cam: np.ndarray) -> None:
        """Pose, pinhole and downsampled color/depth of ``frame`` at its index on the frame
        timeline."""
        rr = self.rr
        self.rec.set_time(FRAME_TIMELINE, sequence=int(frame.index))
        T = np.asarray(T_world_cam, np.float64)
        self.rec.log(CAMERA, rr.Transform3D(translation=T[:3, 3], mat3x3=T[:3, :3]))
        K = frame.intrinsics
        s = max(1, math.ceil(K.width / self.image_width_px))
        depth = np.ascontiguousarray(frame.depth[::s, ::s])
        h, w = depth.shape
        pin = (w, h, K.fx / s, K.fy / s, (K.cx + 0.5) / s - 0.5, (K.cy + 0.5) / s - 0.5)
        if pin != self._pinhole:  # the intrinsics rarely change: static, once
            self._pinhole = pin
            self.rec.log(CAMERA, rr.Pinhole(resolution=[w, h], focal_length=[pin[2], pin[3]],
                                            principal_point=[pin[4], pin[5]],
                                            camera_xyz=rr.ViewCoordinates.RDF,
                                            image_plane_distance=0.3), static=True)
        if frame.color is not None:
            self.rec.log(f"{CAMERA}/color", rr.Image(np.ascontiguousarray(frame.color[::s, ::s])))
        self.rec.log(f"{CAMERA}/depth", rr.DepthImage(depth.astype(np.float32, copy=False), meter=1.0))
        self.counts["frames_logged"] += 1

    def log_stats(self, stats: Dict[str, object], index: Optional[int] = None) -> None:
        """Tracking status and drop counters of ``MappingSystem.stats()`` as scalars."""
        if index is not None:
            self.rec.set_time(FRAME_TIMELINE, sequence=int(index))
        stats = {**STAT_ZEROS, **stats}
        for k in stat_names(stats):
            self.rec.log(f"{STATS}/{k}", self.rr.Scalars(float(stats[k])))


def stat_names(stats: Dict[str, object]) -> Iterable[str]:
    return sorted(k for k, v in stats.items() if isinstance(v, (int, float, bool))
                  and (k in STAT_KEYS or any(w in k for w in ("dropped", "failures", "skipped"))))
