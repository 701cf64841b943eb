"""The ``tsdf`` backend: projective TSDF fusion (kernel in ``integrate.py``, backend and facade
:class:`~neural_mapping.backends.tsdf.volume.TSDFVolume` in ``volume.py``)."""

from neural_mapping.backends.tsdf.volume import TSDFVolume

Backend = TSDFVolume

__all__ = ["Backend", "TSDFVolume"]
