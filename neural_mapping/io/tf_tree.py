"""A TF tree without ROS: ``/tf`` and ``/tf_static`` transforms chained to the pose of one
frame in another at a stamp, and the ``camera_mount`` text parameter.

:class:`TfTree` keeps, per child frame, its parent and either one static transform or the
stamped samples of a dynamic one.  :meth:`TfTree.lookup` walks both frames up to their
common ancestor and composes the edges; a dynamic edge is read with
:func:`~neural_mapping.geometry.pose_at_stamp` (the code base's one pose interpolation:
never extrapolated, not across a gap longer than ``max_gap_ns``).  Failures raise
:class:`TfError` naming the missing link, the edge and why (``unconnected``, ``before``,
``after``, ``gap``), so a replay can say which transform the bag lacks.

A frame keeps the first parent it was given; a transform that gives it another parent is
ignored and counted in ``conflicts`` (tf2 warns about the same thing: a frame has one parent).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from neural_mapping.geometry import inv_pose, pose_at_stamp, pose_from_tq


class TfError(LookupError):
    """A lookup that cannot be answered; ``reason`` is ``unconnected``, ``before``, ``after``
    or ``gap``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class _Edge:
    __slots__ = ("parent", "static", "stamps", "poses", "_sorted")

    def __init__(self, parent: str):
        self.parent, self.static = parent, None
        self.stamps: List[int] = []
        self.poses: List[np.ndarray] = []
        self._sorted = True

    def add(self, stamp_ns: int, T: np.ndarray, static: bool) -> None:
        if static:
            self.static = T
            return
        if self.stamps and stamp_ns <= self.stamps[-1]:
            if stamp_ns == self.stamps[-1]:
                self.poses[-1] = T  # a repeated stamp: the newer message wins
                return
            self._sorted = False
        self.stamps.append(int(stamp_ns))
        self.poses.append(T)

    def at(self, stamp_ns: int, max_gap_ns: Optional[float]) -> Tuple[str, Optional[np.ndarray]]:
        if self.static is not None:
            return "ok", self.static
        if not self._sorted:
            order = sorted(range(len(self.stamps)), key=self.stamps.__getitem__)
            self.stamps = [self.stamps[k] for k in order]
            self.poses = [self.poses[k] for k in order]
            self._sorted = True
        return pose_at_stamp(self.stamps, self.poses, stamp_ns, max_gap_ns)


class TfTree:
    def __init__(self):
        self._edges: Dict[str, _Edge] = {}
        self.conflicts = 0

    def add(self, parent: str, child: str, stamp_ns: int, T_parent_child, static: bool = False) -> bool:
        """Add ``T_parent_child`` (4x4) at ``stamp_ns``; False if it would give ``child`` a
        second parent (counted in ``conflicts``) or close a loop."""
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child or parent == child:
            return False
        edge = self._edges.get(child)
        if edge is None:
            if child in self._ancestors(parent):
                self.conflicts += 1
                return False
            edge = self._edges[child] = _Edge(parent)
        elif edge.parent != parent:
            self.conflicts += 1
            return False
        edge.add(int(stamp_ns), np.asarray(T_parent_child, dtype=np.float64), static)
        return True

    def add_msg(self, tf, static: bool = False) -> int:
        """Add the ``TransformStamped`` list of a ``tf2_msgs/TFMessage``; returns how many."""
        n = 0
        for ts in tf.transforms:
            tr, ro = ts.transform.translation, ts.transform.rotation
            q = (ro.x, ro.y, ro.z, ro.w)
            if not (np.all(np.isfinite(q)) and np.any(q)
                    and np.all(np.isfinite((tr.x, tr.y, tr.z)))):
                continue
            stamp = int(ts.header.stamp.sec) * 1_000_000_000 + int(ts.header.stamp.nanosec)
            n += self.add(ts.header.frame_id, ts.child_frame_id, stamp,
                          pose_from_tq((tr.x, tr.y, tr.z), q), static)
        return n

    # ------------------------------------------------------------------ structure
    @property
    def frames(self) -> List[str]:
        out = set(self._edges)
        out.update(e.parent for e in self._edges.values())
        return sorted(out)

    def parent(self, frame: str) -> Optional[str]:
        e = self._edges.get(frame.lstrip("/"))
        return None if e is None else e.parent

    def is_static(self, frame: str) -> bool:
        e = self._edges.get(frame.lstrip("/"))
        return e is not None and e.static is not None

    def _ancestors(self, frame: str) -> List[str]:
        """``frame``, its parent, ... up to its root."""
        chain = [frame]
        while frame in self._edges and len(chain) <= len(self._edges) + 1:
            frame = self._edges[frame].parent
            chain.append(frame)
        return chain

    def root(self, frame: str) -> str:
        return self._ancestors(frame.lstrip("/"))[-1]

    def describe(self) -> str:
        """``parent -> child (static | N samples)`` lines."""
        return "\n".join(f"  {e.parent} -> {c} ({'static' if e.static is not None else f'{len(e.stamps)} samples'})"
                         for c, e in sorted(self._edges.items())) or "  (empty)"

    # ------------------------------------------------------------------ lookup
    def _to_ancestor(self, chain: Sequence[str], stamp_ns: int, max_gap_ns) -> np.ndarray:
        """``T_chain[-1]_chain[0]``: composed down from the ancestor ``chain[-1]``."""
        T = np.eye(4)
        for child in chain[:-1]:
            edge = self._edges[child]
            status, Te = edge.at(stamp_ns, max_gap_ns)
            if Te is None:
                span = (f" (samples {edge.stamps[0] * 1e-9:.3f}..{edge.stamps[-1] * 1e-9:.3f} s)"
                        if edge.stamps else "")
                why = {"before": "is older than the first sample", "after": "is newer than the last "
                       "sample (never extrapolated)", "gap": "falls in a gap longer than "
                       f"{(max_gap_ns or 0) * 1e-9:g} s"}.get(status, status)
                raise TfError(status, f"transform {edge.parent} -> {child}: stamp "
                              f"{stamp_ns * 1e-9:.3f} s {why}{span}")
            T = Te @ T
        return T

    def lookup(self, target: str, source: str, stamp_ns: int,
               max_gap_ns: Optional[float] = None) -> np.ndarray:
        """``T_target_source`` (4x4) at ``stamp_ns``: maps points in ``source`` into ``target``."""
        target, source = target.lstrip("/"), source.lstrip("/")
        up_s, up_t = self._ancestors(source), self._ancestors(target)
        common = next((f for f in up_s if f in set(up_t)), None)
        if common is None:
            known = ", ".join(self.frames) or "none"
            raise TfError("unconnected", f"no transform chain from {source!r} to {target!r}: "
                          f"{source!r} reaches root {up_s[-1]!r} and {target!r} reaches root "
                          f"{up_t[-1]!r}; the missing link is a transform with child {up_s[-1]!r} or "
                          f"{up_t[-1]!r} (frames known: {known})")
        T_c_s = self._to_ancestor(up_s[:up_s.index(common) + 1], stamp_ns, max_gap_ns)
        T_c_t = self._to_ancestor(up_t[:up_t.index(common) + 1], stamp_ns, max_gap_ns)
        return inv_pose(T_c_t) @ T_c_s


def parse_mount(text: str) -> Optional[np.ndarray]:
    """``camera_mount`` text ``"x y z qx qy qz qw"`` (metres, quaternion x y z w: the pose of
    the depth optical frame in the pose input's frame, as ``static_transform_publisher`` takes
    it) -> 4x4; ``""`` -> None.  ValueError on anything else."""
    text = (text or "").replace(",", " ").strip()
    if not text:
        return None
    try:
        v = [float(x) for x in text.split()]
    except ValueError:
        raise ValueError(f"camera mount {text!r}: expected 7 numbers 'x y z qx qy qz qw'") from None
    if len(v) != 7 or not np.all(np.isfinite(v)):
        raise ValueError(f"camera mount {text!r}: expected 7 finite numbers 'x y z qx qy qz qw'")
    n = float(np.linalg.norm(v[3:]))
    if abs(n - 1.0) > 1e-3:
        raise ValueError(f"camera mount {text!r}: quaternion norm {n:.4f} is not 1")
    return pose_from_tq(v[:3], v[3:])


def map_to_odom(T_map_cam: np.ndarray, T_odom_cam: np.ndarray) -> np.ndarray:
    """The ``map -> odom`` transform (REP-105) that puts the camera where the map says it is
    while ``odom -> ... -> camera`` stays as the robot publishes it:
    ``T_map_odom = T_map_cam @ inv(T_odom_cam)``, both at the same stamp."""
    return np.asarray(T_map_cam, np.float64) @ inv_pose(np.asarray(T_odom_cam, np.float64))


def tf_root_below(parents: Dict[str, str], frame: str, map_frame: str) -> str:
    """The frame to hang under ``map_frame`` so that ``frame`` gets no second parent: the top
    of ``frame``'s tree in ``parents`` (child -> parent, e.g. a tf2 buffer's frames), stopping
    below ``map_frame`` (our own earlier broadcast); ``frame`` itself when nothing parents it."""
    frame = frame.lstrip("/")
    seen = {frame}
    while True:
        parent = (parents.get(frame) or "").lstrip("/")
        if not parent or parent == map_frame or parent in seen:
            return frame
        seen.add(parent)
        frame = parent
