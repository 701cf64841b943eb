"""A live view for one process (``neural-mapping run --view``, the node's ``web_view_port``):
the servers (:mod:`.server`) and the logging thread (:mod:`.live`) together."""

from __future__ import annotations

import time
from typing import Callable, Optional

from neural_mapping.config import MappingConfig
from neural_mapping.config.view import ViewConfig


class ViewSession:
    """``attach(system)`` / ``detach()`` the logging thread; ``hold()`` keeps serving after a
    run; ``close()`` stops the servers."""

    def __init__(self, cfg: ViewConfig, map_cfg: MappingConfig):
        from neural_mapping.view.live import LiveView
        from neural_mapping.view.server import ViewServer
        self.cfg = cfg
        self.server = ViewServer(cfg)
        self.live = LiveView(self.server.rec, cfg, map_cfg)

    @property
    def url(self) -> str:
        return self.server.url

    def attach(self, system) -> None:
        self.live.attach(system)

    def detach(self) -> None:
        self.live.detach(final=True)

    def hold(self, hold_s: Optional[float] = None, say: Callable[[str], None] = print) -> None:
        """Keep serving ``hold_s`` seconds (default ``view_hold_s``; 0: until Ctrl-C)."""
        hold_s = self.cfg.view_hold_s if hold_s is None else hold_s
        if hold_s > 0:
            say(f"live view     still serving {self.url} for {hold_s:g} s (Ctrl-C to stop)")
        else:
            say(f"live view     still serving {self.url} (Ctrl-C to stop)")
        deadline = time.monotonic() + hold_s if hold_s > 0 else None
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic())))
        except KeyboardInterrupt:
            pass

    def hold_and_close(self) -> None:
        """After the run (its summary printed first): serve ``view_hold_s``, then stop."""
        try:
            self.hold()
        finally:
            self.close()

    def close(self) -> None:
        if self.live.system is not None:
            self.live.detach(final=False)
        self.server.close()


def open_view(cfg: ViewConfig, map_cfg: MappingConfig) -> ViewSession:
    """Start the servers (``ImportError`` with the install hint without rerun-sdk, ``OSError``
    if a port is taken)."""
    return ViewSession(cfg, map_cfg)


def open_cli_view(args, map_cfg: MappingConfig):
    """``neural-mapping run --view``: the session (URL printed), None without ``--view``, False
    (message printed) if it cannot start."""
    import sys

    from neural_mapping.config.view import view_config_from_args
    if not getattr(args, "view", False):
        return None
    try:
        session = open_view(view_config_from_args(args), map_cfg)
    except (ImportError, OSError, ValueError) as e:
        print(f"neural-mapping run: --view: {e}", file=sys.stderr)
        return False
    print(f"live view     open {session.url} in a browser (map data over gRPC on port "
          f"{session.server.ports['grpc']})", flush=True)
    return session


def open_node_view(port: int, map_cfg: MappingConfig, system, info: Callable[[str], None],
                   warn: Callable[[str], None]) -> Optional[ViewSession]:
    """The node's view (``web_view_port``; 0: none): served from the node process, logging on
    its own thread.  A view that cannot start (no rerun-sdk, port taken) is a warning, never a
    node failure."""
    if port <= 0:
        return None
    try:
        session = open_view(ViewConfig(view_port=port), map_cfg)
    except (ImportError, OSError, ValueError) as e:
        warn(f"web_view_port={port}: no live view: {e}")
        return None
    session.attach(system)
    info(f"live view: open {session.url} in a browser")
    return session
