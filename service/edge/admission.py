"""Who gets in: every call has a category, and each category its own access and capacity.

The categories are Triton's (its `--grpc-restricted-protocol` / `--http-restricted-api`
groups), so that operations traffic never competes with inference, and what a caller without
the token may reach is decided before anything is spent on it:

    health        grpc.health Check, V2 ServerLive/ServerReady, GET /v2/health/*: open, never
                  limited (a probe always gets through)
    page          the playground and /openapi.json: open, never limited
    health-watch  grpc.health Watch streams: at most MAX_WATCHES at once
    metadata, statistics, model-repository, inference
                  the token; --max-in-flight calls each at once, beyond it refused at once

Inference calls are also refused once draining has begun, and the drain waits for them.
Every call is admitted on the server's event loop; the drain waits from another thread.
"""

from __future__ import annotations

import enum
import threading
import time
from contextlib import contextmanager

from service.errors import Overloaded, ShuttingDown

#: health Watch streams served at once, per port: each holds a task, so they are bounded.
MAX_WATCHES = 16


class Category(enum.Enum):
    HEALTH = "health"
    PAGE = "page"
    WATCH = "health-watch"
    METADATA = "metadata"
    STATISTICS = "statistics"
    REPOSITORY = "model-repository"
    INFERENCE = "inference"

    @property
    def open(self) -> bool:
        """Needs no bearer token."""
        return self in (Category.HEALTH, Category.PAGE)


def limits(max_in_flight: int) -> dict[Category, tuple[int, str]]:
    """Each limited category's (limit, the setting that sets it)."""
    shared = {c: (max_in_flight, "--max-in-flight") for c in Category
              if c not in (Category.HEALTH, Category.PAGE, Category.WATCH)}
    return {**shared, Category.WATCH: (MAX_WATCHES, "MAX_WATCHES")}


class Admission:
    def __init__(self, limits: dict[Category, tuple[int, str]]):
        self._limits = limits
        self._counts = dict.fromkeys(Category, 0)
        self._changed = threading.Condition()
        self.draining = False
        self._last_call = time.monotonic()

    def in_flight(self, category: Category) -> int:
        return self._counts[category]

    @contextmanager
    def admitted(self, category: Category):
        """Count a call in, or refuse it (Overloaded past its category's limit; ShuttingDown
        for inference once draining)."""
        if category not in self._limits:
            yield
            return
        limit, setting = self._limits[category]
        inference = category is Category.INFERENCE
        with self._changed:
            if inference:
                self._last_call = time.monotonic()
                if self.draining:
                    raise ShuttingDown("the server is shutting down: retry on another replica")
            if self._counts[category] >= limit:
                raise Overloaded(f"{self._counts[category]} {category.value} calls are in "
                                 f"progress, the most this server takes ({setting}): retry "
                                 "shortly")
            self._counts[category] += 1
        try:
            yield
        finally:
            with self._changed:
                self._counts[category] -= 1
                if inference:  # its caller may send the next call at once: quiet from here
                    self._last_call = time.monotonic()
                    self._changed.notify_all()

    def drain(self, timeout: float, quiet: float = 0.1, max_quiet_wait: float = 2.0) -> bool:
        """Refuse new inference calls and wait for the admitted ones; True if all finished.

        Then keep refusing until no call has arrived or finished for `quiet` seconds (at most
        `max_quiet_wait`): a caller whose call just finished may already have sent the next
        one, and grpc cancels, rather than answers, calls it holds when the server stops.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            self.draining = True
            while self._counts[Category.INFERENCE] and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            drained = self._counts[Category.INFERENCE] == 0
        quiet_until = min(deadline, time.monotonic() + max_quiet_wait)
        while (time.monotonic() - self._last_call < quiet
               and time.monotonic() < quiet_until):
            time.sleep(quiet / 4)
        return drained
