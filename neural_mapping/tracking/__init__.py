"""Frame-to-model tracking (stateless; the pose policy in ``system/pose_policy.py`` owns the
motion model and the failure count).

* ``tracker.py``     -- :class:`Tracker`: ``predict`` (the model view, a render of the map
  backend) and ``track`` (point-to-plane ICP from ``T_init``), :class:`TrackResult`;
* ``model_view.py``  -- :class:`ModelView`: what a frame is aligned to;
* ``pyramid.py``     -- depth downsampling, vertex/normal maps, the frame's point pyramid.
"""
