"""Stopping a run cleanly: SIGINT and SIGTERM ask the update loop to stop at its next consistent point."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from dsaml_utils.meta import distributed as meta_dist


class StopRequest:
    """Whether SIGINT or SIGTERM arrived while `catching()` was active (a second one raises KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @contextmanager
    def catching(self) -> Iterator[None]:
        """While active, the signals set `signum`; the previous handlers come back afterwards (main thread only)."""
        self.signum = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def ask(signum, frame):
            if self.signum is not None:
                raise KeyboardInterrupt
            self.signum = signum

        old = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)

    def asked(self) -> bool:
        """Whether a stop was asked (torchrun: on rank 0, so that every rank stops after the same step)."""
        return bool(meta_dist.broadcast_object(self.signum is not None))
