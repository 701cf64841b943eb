"""The live 3D view in the browser: Rerun's web viewer, served from this machine, fed from the
outputs the mapping system already has (an optional extra: ``pip install neural_mapping[view]``).

::

    Mapper.integrate ─► mesh dirty marks (own MeshCache) + newest frame slot   (mapping thread)
    LiveView thread  ─► MeshCache.update (budgeted, map lock) ─► MapViewLogger ─► rerun stream
                     ─► newest frame, pose, trajectory, occupancy snapshot, counters
    ViewServer       ─► gRPC (view_port + 1, memory limit, newest first) + page (view_port)

* :mod:`.logger`: :class:`~neural_mapping.view.logger.MapViewLogger`, what goes to Rerun (entity
  paths, static map, frame timeline) and the default layout; no threads.
* :mod:`.live`: :class:`~neural_mapping.view.live.LiveView`, the logging thread attached to a
  :class:`~neural_mapping.system.mapping_system.MappingSystem`.
* :mod:`.server`: :class:`~neural_mapping.view.server.ViewServer`, the servers and the page.

Nothing here imports rerun at import time; :func:`require_rerun` says how to install it.
"""

from __future__ import annotations

INSTALL_HINT = "pip install neural_mapping[view]  (or: pip install rerun-sdk==0.41.0)"


def require_rerun():
    """The ``rerun`` module, or ``ImportError`` telling the user how to install the view extra."""
    try:
        import rerun
    except ImportError as e:  # the view is optional: the core never needs it
        raise ImportError(f"the live view needs rerun-sdk: {INSTALL_HINT}") from e
    return rerun
