"""Map backends behind one protocol (:class:`~neural_mapping.backends.base.MapBackend`).

``get_backend(config)`` builds the one named by ``config.run.backend``:

* ``tsdf``   -- projective TSDF fusion (:mod:`neural_mapping.backends.tsdf`);
* ``neural`` -- NICE-SLAM-style feature grids with MLP decoders (:mod:`neural_mapping.backends.neural`).
"""

from __future__ import annotations

import importlib

from neural_mapping.backends.base import MapBackend

# name -> module holding ``Backend`` (imported on first use: a backend's dependencies load
# only when it is chosen)
REGISTRY = {
    "tsdf": "neural_mapping.backends.tsdf",
    "neural": "neural_mapping.backends.neural",
}


def backend_class(name: str):
    try:
        module = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown map backend {name!r}; available: {sorted(REGISTRY)}") from None
    return importlib.import_module(module).Backend


def get_backend(config) -> MapBackend:
    """The backend named by ``config.run.backend``, built from ``config`` (a MappingConfig)."""
    return backend_class(config.run.backend).from_config(config)


__all__ = ["MapBackend", "REGISTRY", "backend_class", "get_backend"]
