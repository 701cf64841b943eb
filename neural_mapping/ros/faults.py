"""A worker (tracking or mapping thread) that dies is never a silent hang.

:class:`WorkerWatch` checks ``system.error`` on a timer (5 Hz).  On a failure it logs the
exception with its traceback, publishes ``/diagnostics`` at once with level ERROR
(``worker_failures``, the message names the exception), then, by ``worker_failure``:

* ``exit`` (default): the node's context is shut down, the executor returns, and the
  shutdown re-raises the worker's exception: the process exits 1;
* ``restart``: a new :class:`~neural_mapping.system.mapping_system.MappingSystem` (fresh
  threads and queues, the counters carried over) takes over the *same* map (the
  :class:`~neural_mapping.system.step.Mapper`: a step that failed half-way may have left its
  frame partly fused), the outputs are re-sent; counted as ``worker_restarts`` (diagnostics
  WARN from then on, naming the last failure).
"""

from __future__ import annotations

import time
import traceback
from typing import Optional

from neural_mapping.system.mapping_system import MappingSystem

CHECK_PERIOD_S = 0.2


class WorkerWatch:
    def __init__(self, node):
        self.node = node
        self.failures = 0
        self.restarts = 0
        self.last_error: Optional[str] = None
        self.failed_now = False  # an exit is under way
        self._exit_at: Optional[float] = None
        node.create_timer(CHECK_PERIOD_S, self.check)

    def status(self):
        """``(level, message)`` for diagnostics: 2 ERROR while failed, 1 WARN after a restart,
        None when nothing failed."""
        if self.failed_now:
            return 2, f"worker failed: {self.last_error}"
        if self.restarts:
            return 1, f"worker restarted {self.restarts}x, last failure: {self.last_error}"
        return None

    def check(self) -> None:
        node = self.node
        err = node.system.error
        if self.failed_now and self._exit_at is not None and time.monotonic() >= self._exit_at:
            node._publish_diagnostics()  # once more, then stop
            node.context.try_shutdown()  # spin returns; the shutdown re-raises: exit code 1
            return
        if err is None or self.failed_now:
            return
        self.failures += 1
        self.failed_now = True
        self.last_error = f"{type(err).__name__}: {err}"
        policy = node.ncfg.worker_failure
        node.get_logger().error(
            f"a mapping worker failed ({self.last_error}); worker_failure={policy}\n"
            + "".join(traceback.format_exception(type(err), err, err.__traceback__)))
        node._publish_diagnostics()  # ERROR now, before anything else happens
        if policy == "restart":
            self._restart()
        else:  # give the ERROR status time to go out, then stop (next checks)
            self._exit_at = time.monotonic() + 2 * CHECK_PERIOD_S

    def _restart(self) -> None:
        node = self.node
        old = node.system
        try:
            old.close(timeout=2.0)
        except Exception:  # noqa: BLE001 - the failure is what close re-raises; it is reported
            pass
        new = MappingSystem(node.cfg, on_pose=node._on_pose, on_integrated=node._on_integrated)
        new.mapper = old.mapper  # the map survives; the workers only read it via system.mapper
        new.counters.update(old.counters)
        node.system = node.inputs.system = node.outputs.system = new
        node.outputs.reset()
        self.restarts += 1
        self.failed_now = False
        node.get_logger().warning(f"mapping workers restarted ({self.restarts}), map kept")
