"""Stop a run cleanly on Ctrl-C (SIGINT) or SIGTERM.

Inside ``with StopRequest() as stop:`` the first signal only sets ``stop.requested``; the
training loop looks at it after every step, saves its state and raises
:class:`RunInterrupted`. A second Ctrl-C raises :class:`KeyboardInterrupt` at once, for a run
that must die now (its last saved state is still there to resume from). ``torchrun`` forwards
SIGTERM to its workers when it is stopped, hence the same treatment.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable


class RunInterrupted(KeyboardInterrupt):
    """The run stopped on Ctrl-C / SIGTERM after saving its state; ``--resume`` continues."""


class StopRequest:
    """Context manager turning SIGINT / SIGTERM into a flag (see the module docstring)."""

    def __init__(self, on_first: Callable[[], None] | None = None) -> None:
        self.requested = False
        self._on_first = on_first
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self._on_first is not None:
            self._on_first()

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be installed from the main thread; elsewhere (a notebook
        # worker thread, say) Ctrl-C keeps its default behaviour.
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
