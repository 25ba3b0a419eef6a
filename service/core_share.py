"""`CoreShare`: the `--processes` workers take turns on the machine's cores, oldest work first.

Each worker process queues its own requests (SO_REUSEPORT gives each connection to one
process), and a big request runs on threads over all the machine's cores, so one process can
use the cores the others leave idle. Left alone, two busy processes split the CPU evenly
whatever their share of the callers: SO_REUSEPORT placed 8 clients 5/3 or 6/2, and at 64
images a call the five waited ~5/3 as long as the three (p99 227 ms against 108 for one
process on 2 cores, docs/benchmarks/compare-h2load-cpu.md). Through one small table in shared
memory the workers instead run the oldest waiting work first, whichever process queued it,
and no more runs at once than there are cores.

The table is a file (in /dev/shm) that the supervisor creates and every worker maps, with a
row per (process, model): the time its oldest waiting piece was queued (0: none waits), how
many of its runs are on worker threads now, and whether one is on the event loop. Each row is
written by its own process only; readers add up the others' without locks: an aligned 8-byte
store is atomic, and a stale read is corrected at the next ring. Times are
`time.perf_counter()`, which on Linux is CLOCK_MONOTONIC, the same clock in every process.

A worker whose turn has not come sleeps on its process's doorbell, a Unix datagram socket
beside the table; whoever ends a run rings the bells of the processes with work waiting.
(Polling the table instead cost more than it saved: every 0.5 ms, 8% fewer images per second
than no turns at all at batch 64 x 8; every 0.1 ms, 22% fewer.)
"""

from __future__ import annotations

import mmap
import os
import socket
import tempfile
from pathlib import Path

from service.errors import ServiceError

#: The longest a worker sleeps on its bell before it looks at the table again anyway: how a
#: worker whose batch another worker of its process took goes back to waiting for work, and
#: a safety net for a missed ring (a full socket buffer, or a wait published just as a run
#: elsewhere ended and read the table: the two processes' stores and loads are not ordered);
#: never the normal way a turn comes.
BELL_TIMEOUT_S = 0.01

_COLUMNS = 3  # oldest waiting (ns), runs on threads, runs on the event loop
_HEAD, _THREADS, _LOOP = range(_COLUMNS)
_CELL = 8  # bytes: signed 64-bit


#: Where the table goes: memory (/dev/shm) when it can, else the temporary folder.
TABLE_FOLDERS: tuple[str | None, ...] = ("/dev/shm", None)


def create_table(processes: int, models: int) -> Path:
    """The supervisor's part: a zeroed table for `processes` workers serving `models` each.
    `remove_table` deletes it and the workers' bells."""
    problems = []
    for folder in TABLE_FOLDERS:
        try:
            fd, path = tempfile.mkstemp(prefix="dcgan-cores-", dir=folder)
        except OSError as exc:  # e.g. a read-only /dev/shm: try the next
            problems.append(f"{folder or tempfile.gettempdir()}: {exc.strerror}")
            continue
        try:
            os.ftruncate(fd, processes * models * _COLUMNS * _CELL)  # reads as zeros
        finally:
            os.close(fd)
        return Path(path)
    raise ServiceError("cannot create the --processes workers' shared core table ("
                       + "; ".join(problems) + "): make /dev/shm or TMPDIR writable")


def remove_table(table: Path) -> None:
    for path in (table, *table.parent.glob(f"{table.name}.*.bell")):
        path.unlink(missing_ok=True)


def _stamp(queued_at: float) -> int:
    """A `perf_counter()` time as the table holds it: nanoseconds, never 0 (0 means none)."""
    return max(1, int(queued_at * 1e9))


def _bell_path(table: str, process: int) -> str:
    return f"{table}.{process}.bell"


class CoreShare:
    """One worker process's view of the table, and its doorbell; hands out a `CoreTurns` per
    model it serves."""

    def __init__(self, spec: str, cores: int, models: int):
        """`spec` is "PATH:INDEX", as the supervisor passes it (`--core-share`)."""
        path, _, index = spec.rpartition(":")
        try:
            self.index = int(index)
            with open(path, "r+b") as f:
                self._map = mmap.mmap(f.fileno(), 0)
        except (OSError, ValueError) as exc:
            raise ServiceError(f"--core-share expects PATH:INDEX of a table made by the "
                               f"supervisor, got {spec!r}: {exc}") from None
        self.table = memoryview(self._map).cast("q")
        self.cores, self.models = cores, models
        self.processes = len(self.table) // (_COLUMNS * models)
        if not 0 <= self.index < self.processes:
            raise ServiceError(f"the shared core table {path} has no rows for process "
                               f"{self.index} ({self.processes} processes of {models} models)")
        self._bells = [_bell_path(path, i) for i in range(self.processes)]
        self._bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._bell.bind(self._bells[self.index])
        except OSError as exc:
            raise ServiceError(f"cannot make this worker's doorbell {self._bells[self.index]}: "
                               f"{exc}") from None
        self._bell.settimeout(BELL_TIMEOUT_S)
        # Rung from the loop and the worker threads alike: a datagram is sent whole, so they
        # need no lock between them.
        self._ringer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._ringer.setblocking(False)

    def turns(self, model: int) -> CoreTurns:
        return CoreTurns(self, self.index * self.models + model)

    def wait(self) -> None:
        """Sleep until a bell rings here (or BELL_TIMEOUT_S passes)."""
        try:
            self._bell.recv(16)
        except (TimeoutError, BlockingIOError):
            pass

    def ring_here(self) -> None:
        """Wake a worker of this process asleep on its bell."""
        self._ring(self._bells[self.index])

    def _ring(self, bell: str) -> None:
        try:
            self._ringer.sendto(b"!", bell)
        except OSError:  # buffer full (they are awake anyway) or the bell not yet bound
            pass         # (a worker still starting waits for nothing)

    def ring(self) -> None:
        """A run ended: wake the processes with work waiting, this one included."""
        table, per_process = self.table, _COLUMNS * self.models
        for process, bell in enumerate(self._bells):
            first = process * per_process
            if any(table[first + _HEAD:first + per_process:_COLUMNS]):
                self._ring(bell)


class CoreTurns:
    """One model's row: what its `Batcher` and `LoopBatcher` publish, ask and wait for."""

    def __init__(self, share: CoreShare, row: int):
        self.share = share
        self._table = share.table
        self._at = row * _COLUMNS

    def may_run(self, oldest_queued: float) -> bool:
        """Whether this model's oldest waiting piece (queued at `oldest_queued`) may run now:
        a core is free for it once the work queued before it elsewhere has one."""
        table, head = self._table, _stamp(oldest_queued)
        table[self._at + _HEAD] = head
        free = (self.share.cores - sum(table[_THREADS::_COLUMNS])
                - sum(table[_LOOP::_COLUMNS]))
        if free <= 0:
            return False
        ahead = sum(1 for at in range(0, len(table), _COLUMNS)
                    if at != self._at and 0 < table[at + _HEAD] < head)
        return ahead < free

    def wait(self) -> None:
        """Sleep until a run ends somewhere (the caller then asks `may_run` again)."""
        self.share.wait()

    def publish(self, oldest_queued: float | None, running: int) -> None:
        """This model's oldest waiting piece (None: none) and its runs on threads now."""
        table = self._table
        table[self._at + _HEAD] = 0 if oldest_queued is None else _stamp(oldest_queued)
        table[self._at + _THREADS] = running

    def loop_running(self, running: bool) -> None:
        self._table[self._at + _LOOP] = int(running)

    def wake_here(self) -> None:
        """New work arrived for a worker that may be asleep on its bell."""
        self.share.ring_here()

    def ended(self) -> None:
        """A run of this model ended: the core it held is free for whoever waits."""
        self.share.ring()
