"""What a bare `grpc.aio` call costs under each grpcio release: the check behind grpcio's pin.

    python bench/grpcio_versions.py --out docs/benchmarks/grpcio-versions-cpu.md

Each version gets its own virtual environment (made on first use under --venvs, from the
package registry) and serves bench/peers/fixed_reply_server.py aio: no model and no protobuf,
so only gRPC differs between the rows. "V+no-ee" runs version V with its EventEngine
experiments switched off (`GRPC_EXPERIMENTS`), which grpcio 1.80 turned on for Python.

For each, at 1 and 8 clients (h2load, one call in flight per connection): calls/s and the
server's CPU µs per call, as in bench/call_cost.py; rounds are interleaved and each figure is
the median, with its ratio to the version pyproject.toml pins. Re-run it before moving the pin.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.call_cost import measure, start, stop  # noqa: E402
from bench.serve_bench import command_line, machine, publish  # noqa: E402

#: grpcio 1.80 made these the default for Python; before it they were off.
EVENT_ENGINE_OFF = ("-event_engine_client,-event_engine_listener,"
                    "-event_engine_for_all_other_endpoints,-event_engine_fork,"
                    "-event_engine_callback_cq")

DEFAULT_VERSIONS = "1.75.0,1.78.2,1.80.1,1.82.3,1.84.2,1.85.1,1.85.1+no-ee"


def pinned_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'"grpcio==([\d.]+)"', text).group(1)


def interpreter(venvs: Path, version: str) -> Path:
    """A Python with exactly grpcio==`version`, made on first use."""
    python = venvs / version / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venvs / version)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"grpcio=={version}"],
                       check=True)
    return python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", default=DEFAULT_VERSIONS,
                        help="comma-separated; V+no-ee: V with its EventEngine experiments off")
    parser.add_argument("--venvs", type=Path, default=ROOT / ".bench-venvs" / "grpcio")
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not shutil.which("h2load"):
        parser.error("h2load is not installed (Debian: apt-get install nghttp2-client)")
    clients = [int(c) for c in args.clients.split(",")]
    pinned = pinned_version()
    names = args.versions.split(",")
    if pinned not in names:
        names.insert(0, pinned)

    work = Path(tempfile.mkdtemp())
    frame = work / "request"  # GenerateRequest(seeds=[0]); the server ignores it
    frame.write_bytes(b"\x00\x00\x00\x00\x02\x08\x00")
    running = {}
    try:
        for i, name in enumerate(names):
            version, _, flag = name.partition("+")
            command = [str(interpreter(args.venvs, version)),
                       str(ROOT / "bench" / "peers" / "fixed_reply_server.py"), "aio", "{port}"]
            env = {"GRPC_EXPERIMENTS": EVENT_ENGINE_OFF} if flag == "no-ee" else {}
            running[name] = start(command, work / f"{i}.log", env)
        figures: dict[tuple[str, int], list[dict]] = {}
        for r in range(args.rounds):  # interleaved, alternating order: noise hits all alike
            order = names if r % 2 == 0 else names[::-1]
            for n in clients:
                for name in order:
                    proc, port = running[name]
                    figures.setdefault((name, n), []).append(
                        measure(proc, port, n, args.seconds, frame))
                    print(name, n, round(figures[(name, n)][-1]["calls/s"]), flush=True)
    finally:
        for proc, _ in running.values():
            stop(proc)

    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; a bare `grpc.aio` handler "
             f"returning 800 fixed bytes (bench/peers/fixed_reply_server.py); h2load, one call "
             f"in flight per client; {args.rounds} interleaved rounds of {args.seconds:g} s "
             f"(medians). Pinned: grpcio {pinned}.",
             f"Command: `{command_line()}`", "",
             "| grpcio | clients | calls/s | server µs/call | calls/s vs pinned |",
             "|---|---:|---:|---:|---:|"]
    for n in clients:
        base = np.median([f["calls/s"] for f in figures[(pinned, n)]])
        for name in names:
            rate = np.median([f["calls/s"] for f in figures[(name, n)]])
            cpu = np.median([f["server µs/call"] for f in figures[(name, n)]])
            label = f"**{name}** (pinned)" if name == pinned else name
            lines.append(f"| {label} | {n} | {rate:,.0f} | {cpu:.0f} | {rate / base:.2f} |")
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
