"""Which topics of a rosbag2 to map, and the camera poses a bag gives (pose topic + mount, or TF).

:func:`choose_topics` is what ``neural-mapping replay BAG`` does with no topic options: the
bag's only depth, colour and camera_info topics (raw ``sensor_msgs/Image`` or
``CompressedImage``; of several depth topics the one registered to colour, e.g.
``aligned_depth_to_color``), its only pose topic and, when it has none but has ``/tf``, the depth
frame's pose from TF in the root frame of the tree.  Several candidates for a role: the
name ``make-bag`` writes wins if present, else an error lists them with the flag to pick one.

:class:`BagPoses` turns what the index pass read (pose samples, ``/tf`` and ``/tf_static``)
into the pose of the depth optical frame at each depth stamp:

* ``pose_from_tf``: ``T_frame_depth`` from the TF tree (:class:`~neural_mapping.io.tf_tree.TfTree`),
  ``frame`` = ``pose_frame`` or the root of the depth frame's tree;
* a pose topic of another frame (Odometry of ``base_link``, ...): composed with the camera
  mount -- ``camera_mount`` when given (checked against the messages' ``child_frame_id``
  when ``camera_mount_frame`` is set), else the TF chain from ``child_frame_id`` to the depth
  frame in the bag; neither: an error that says which option to pass.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from neural_mapping.datasets.base import DatasetError
from neural_mapping.geometry import pose_at_stamp
from neural_mapping.io.bag_format import (CAMERA_INFO_TYPE, COLOR_TOPIC, COMPRESSED_TYPE, DEPTH_INFO_TOPIC,
                                          DEPTH_TOPIC, IMAGE_TYPE, POSE_MSG_TYPES, POSE_TOPIC,
                                          TF_STATIC_TOPIC, TF_TOPIC)
from neural_mapping.io.tf_tree import TfError, TfTree, parse_mount

IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
TRANSPORT_SUFFIXES = ("/compressedDepth", "/compressed", "/theora", "/zstd")
REGISTERED_DEPTH = ("aligned_depth_to_color", "depth_to_rgb", "depth_registered")


def base_topic(topic: str) -> str:
    """``/a/image_raw/compressedDepth`` -> ``/a/image_raw`` (the image_transport base name)."""
    for s in TRANSPORT_SUFFIXES:
        if topic.endswith(s):
            return topic[: -len(s)]
    return topic


def _namespace(topic: str) -> str:
    return base_topic(topic).rsplit("/", 1)[0]


def _is_depth(topic: str, typ: str) -> bool:
    return "depth" in base_topic(topic).lower() or topic.endswith("/compressedDepth")


@dataclass
class TopicChoice:
    depth: str
    camera_info: str
    color: Optional[str]
    pose: Optional[str]
    pose_from_tf: bool
    notes: List[str] = field(default_factory=list)

    def describe(self) -> str:
        pose = "TF (depth frame in the tree's root frame)" if self.pose_from_tf else (self.pose or "-")
        lines = [f"  depth        {self.depth}", f"  camera_info  {self.camera_info}",
                 f"  colour       {self.color or '-'}", f"  pose         {pose}"]
        return "\n".join(lines + [f"  ({n})" for n in self.notes])


def _pick(role: str, cands: Sequence[str], default: Optional[str], flag: str, listing: str) -> Optional[str]:
    if len(cands) == 1:
        return cands[0]
    if not cands:
        return None
    if default in cands:
        return default
    raise DatasetError(f"the bag has {len(cands)} {role} topics ({', '.join(sorted(cands))}); choose "
                       f"one with {flag}. Topics in the bag:\n{listing}")


def choose_topics(topics: Dict[str, Tuple[str, int]], depth: Optional[str] = None,
                  color: Optional[str] = None, camera_info: Optional[str] = None,
                  pose: Optional[str] = None) -> TopicChoice:
    """Fill the topics left ``None`` from ``topics`` (``{name: (type, count)}``); ``""`` keeps a
    colour / pose topic off.  Raises :class:`DatasetError` listing the topics when a role is
    ambiguous or (depth, camera_info) absent."""
    listing = "\n".join(f"  {n}  [{t}]  {c} messages" for n, (t, c) in sorted(topics.items())) or "  (none)"
    images = [n for n, (t, c) in topics.items() if t in IMAGE_TYPES and c > 0]
    notes = []
    if depth is None:
        cands = [n for n in images if _is_depth(n, topics[n][0])]
        registered = [n for n in cands if any(k in n for k in REGISTERED_DEPTH)]
        if len(cands) > 1 and len(registered) == 1 and DEPTH_TOPIC not in cands:
            cands = registered  # colour needs depth registered to it: the aligned one
        depth = _pick("depth image", cands, DEPTH_TOPIC, "--depth-topic", listing)
        if depth is None:
            raise DatasetError(f"the bag has no depth image topic (a sensor_msgs/Image or CompressedImage "
                               f"with 'depth' in its name); choose one with --depth-topic. Topics in the "
                               f"bag:\n{listing}")
        notes.append(f"depth: the bag's depth image topic; override with --depth-topic")
    if camera_info is None:
        infos = [n for n, (t, c) in topics.items() if t == CAMERA_INFO_TYPE and c > 0]
        same_ns = [n for n in infos if _namespace(n) == _namespace(depth)]
        camera_info = same_ns[0] if len(same_ns) == 1 else _pick("camera_info", infos, DEPTH_INFO_TOPIC,
                                                                 "--camera-info-topic", listing)
        if camera_info is None:
            raise DatasetError(f"the bag has no sensor_msgs/CameraInfo topic; choose one with "
                               f"--camera-info-topic. Topics in the bag:\n{listing}")
        notes.append("camera_info: " + ("the one next to the depth topic" if len(same_ns) == 1 else
                                        "the bag's camera_info topic") + "; override with --camera-info-topic")
    if color is None:
        colors = [n for n in images if not _is_depth(n, topics[n][0])
                  and not any(k in n.lower() for k in ("infra", "/ir/", "confidence"))]
        color = _pick("colour image", colors, COLOR_TOPIC, "--color-topic ('' for none)", listing)
        notes.append("colour: " + (f"the bag's colour image topic" if color else "none in the bag")
                     + "; override with --color-topic ('' for none)")
    pose_from_tf = False
    if pose is None:
        poses = [n for n, (t, c) in topics.items() if t in POSE_MSG_TYPES and c > 0]
        pose = _pick("pose", poses, POSE_TOPIC, "--pose-topic", listing)
        if pose is None and topics.get(TF_TOPIC, ("", 0))[1] > 0:
            pose_from_tf = True
            notes.append("pose: no pose topic, so the depth frame's pose from /tf + /tf_static in the "
                         "root frame of its tree; override with --pose-topic TOPIC or --pose-frame FRAME")
        else:
            notes.append("pose: " + (f"the bag's pose topic" if pose else "none (no pose topic, no /tf)")
                         + "; override with --pose-topic ('' for none)")
    return TopicChoice(depth=depth, camera_info=camera_info, color=color or None, pose=pose or None,
                       pose_from_tf=pose_from_tf, notes=notes)


class BagPoses:
    """Pose samples and TF read by the bag index pass -> poses of the depth frame."""

    def __init__(self, path, max_gap_ns: float):
        self.path = path
        self.max_gap_ns = float(max_gap_ns)
        self.tf = TfTree()
        self.samples: List[Tuple[int, np.ndarray]] = []
        self.child_frames: Counter = Counter()
        self.failures: Counter = Counter()

    def add_sample(self, sample) -> None:
        self.samples.append((sample.stamp_ns, sample.T))
        self.child_frames[sample.child_frame_id] += 1

    def add_tf(self, topic: str, msg) -> None:
        self.tf.add_msg(msg, static=topic == TF_STATIC_TOPIC)

    def _mount(self, child: str, depth_frame: str, mount_text: str, mount_frame: str):
        """``(fixed T or None, child frame to look up in TF or None)``."""
        M = parse_mount(mount_text)
        if M is not None:
            if mount_frame and child and child != mount_frame.lstrip("/"):
                raise DatasetError(f"{self.path}: the pose messages give the pose of {child!r} but "
                                   f"camera_mount is from {mount_frame!r} (camera_mount_frame)")
            return M, None
        if not child or child == depth_frame:
            return np.eye(4), None
        return None, child

    def from_topic(self, stamps_ns: Sequence[int], depth_frame: str, mount_text: str = "",
                   mount_frame: str = "") -> List[Optional[np.ndarray]]:
        self.samples.sort(key=lambda e: e[0])
        ns = np.array([s[0] for s in self.samples], dtype=np.int64)
        Ts = [s[1] for s in self.samples]
        if len(self.child_frames) > 1:
            raise DatasetError(f"{self.path}: the pose messages name several child frames "
                               f"{sorted(self.child_frames)}")
        child = next(iter(self.child_frames), "")
        M, lookup_child = self._mount(child.lstrip("/"), depth_frame, mount_text, mount_frame)
        out = []
        for t in stamps_ns:
            T = pose_at_stamp(ns, Ts, int(t), self.max_gap_ns)[1]
            if T is not None and lookup_child is not None:
                try:
                    M_t = self.tf.lookup(lookup_child, depth_frame, int(t), self.max_gap_ns)
                except TfError as exc:
                    raise DatasetError(
                        f"{self.path}: the pose topic gives the pose of {child!r}, the depth images are in "
                        f"{depth_frame!r}, and the bag's TF does not connect them ({exc}); pass the mount "
                        f"with --camera-mount 'x y z qx qy qz qw' (pose of {depth_frame!r} in {child!r})"
                    ) from None
                T = T @ M_t
            elif T is not None:
                T = T @ M
            out.append(T)
        return out

    def from_tf(self, stamps_ns: Sequence[int], depth_frame: str, frame: str = "") -> List[Optional[np.ndarray]]:
        frame = (frame or self.tf.root(depth_frame)).lstrip("/")
        self.frame = frame
        out, first = [], None
        for t in stamps_ns:
            try:
                out.append(self.tf.lookup(frame, depth_frame, int(t), self.max_gap_ns))
            except TfError as exc:
                self.failures[exc.reason] += 1
                first = first or exc
                out.append(None)
        if first is not None and all(T is None for T in out):
            raise DatasetError(f"{self.path}: no depth frame has a pose from TF ({first}). TF tree in "
                               f"the bag:\n{self.tf.describe()}")
        return out
