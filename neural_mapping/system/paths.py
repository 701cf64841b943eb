"""Files written or read on request (services) stay inside the configured output directory.

:func:`output_path` resolves ``output_dir / name`` and refuses a name that leaves the
directory (``..``, an absolute path) or a path that is a symbolic link, or whose resolved
location is outside the resolved directory (a link in between): a service can never be made
to write or read elsewhere, whatever was put into the output directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def output_path(output_dir, name: str, create_dir: bool = True) -> Path:
    """``output_dir / name`` checked (see the module docstring); ``ValueError`` if it escapes."""
    root = Path(output_dir).expanduser()
    if create_dir:
        root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"{name!r} is not a file name inside the output directory {root}")
    path = root / rel
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link: refused (files are only written or read "
                         f"inside {root})")
    real = Path(os.path.realpath(path))
    if real != path and root not in real.parents:
        raise ValueError(f"{path} resolves to {real}, outside the output directory {root}: refused")
    return path
