"""Which generation calls get in: all of them while serving, none once draining has begun.

Shared by every gRPC edge (the project's own API and the Open Inference Protocol), so that
SIGTERM's drain waits for the calls of both.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from service.errors import ShuttingDown


class CallGate:
    def __init__(self) -> None:
        self._active = 0
        self._changed = threading.Condition()
        self._draining = False
        self._last_call = time.monotonic()

    @property
    def draining(self) -> bool:
        return self._draining

    @contextmanager
    def admitted(self):
        """Count a generation call in; refuse it (ShuttingDown) once draining has begun."""
        with self._changed:
            self._last_call = time.monotonic()
            if self._draining:
                raise ShuttingDown("the server is shutting down: retry on another replica")
            self._active += 1
        try:
            yield
        finally:
            with self._changed:
                self._active -= 1
                # Its caller may send the next call at once: the quiet period counts from here.
                self._last_call = time.monotonic()
                self._changed.notify_all()

    def drain(self, timeout: float, quiet: float = 0.1, max_quiet_wait: float = 2.0) -> bool:
        """Refuse new generation calls and wait for the admitted ones; True if all finished.

        Then keep refusing until no call has arrived or finished for `quiet` seconds (at most
        `max_quiet_wait`): a caller whose call just finished may already have sent the next
        one, and grpc cancels, rather than answers, calls it holds when the server stops.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            self._draining = True
            while self._active and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            drained = self._active == 0
        quiet_until = min(deadline, time.monotonic() + max_quiet_wait)
        while (time.monotonic() - self._last_call < quiet
               and time.monotonic() < quiet_until):
            time.sleep(quiet / 4)
        return drained
