"""Which async HTTP server for the front door: aiohttp against Starlette on uvicorn, A/B.

Both serve the same route the way `service/doors/http.py` would on the gRPC server's event loop:
POST a small JSON body (an infer request for one seed), parse it, answer one 28x28 image's
worth of bytes (784 B binary plus its JSON header). No model runs: this is the HTTP layer's
own cost, which is what differs between the libraries. The load is h2load --h1 (C, its own
process), rounds interleaved, with the server's CPU time per request read from /proc.

    python bench/http_library.py --seconds 4 --rounds 3 --out docs/benchmarks/http-library-cpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BODY = json.dumps({"inputs": [{"name": "seeds", "datatype": "UINT64", "shape": [1],
                               "data": [7]}]}).encode()
IMAGE = bytes(784)
HEADER = json.dumps({"model_name": "m", "outputs": [{"name": "images", "datatype": "UINT8",
                                                     "shape": [1, 1, 28, 28], "parameters":
                                                     {"binary_data_size": 784}}]}).encode()
LIBRARIES = ("aiohttp", "starlette")


def serve_aiohttp(port: int) -> None:
    import asyncio

    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        json.loads(await request.read())
        return web.Response(body=HEADER + IMAGE, content_type="application/octet-stream",
                            headers={"Inference-Header-Content-Length": str(len(HEADER))})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v2/models/{name}/infer", infer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_starlette(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def infer(request) -> Response:
        json.loads(await request.body())
        return Response(HEADER + IMAGE, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(HEADER))})

    app = Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"])])
    print("ready", flush=True)
    # loop="asyncio": in the service it would share grpc.aio's standard asyncio loop, not uvloop.
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                loop="asyncio")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start(library: str) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "serve", library, str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _h2load(port: int, clients: int, seconds: float, body: Path) -> float:
    out = subprocess.run(["h2load", "--h1", "-D", f"{int(seconds * 1000)}ms", "-c",
                          str(clients), "-t", "1", "-d", str(body),
                          "-H", "Content-Type: application/json", f"http://127.0.0.1:{port}/v2/models/m/infer"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    assert done and int(done[2]) > 0 and rps, out
    return float(rps[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not shutil.which("h2load"):
        parser.error("needs nghttp2's h2load (apt-get install nghttp2-client)")
    body = Path(tempfile.mkdtemp()) / "body.json"
    body.write_bytes(BODY)
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    servers = {lib: _start(lib) for lib in LIBRARIES}
    try:
        for _ in range(args.rounds):
            for clients in args.clients:
                for lib, (proc, port) in servers.items():
                    cpu = _cpu_seconds(proc.pid)
                    rps = _h2load(port, clients, args.seconds, body)
                    used = _cpu_seconds(proc.pid) - cpu
                    results.setdefault((lib, clients), []).append(
                        (rps, used / (rps * args.seconds) * 1e6))
    finally:
        for proc, _ in servers.values():
            proc.kill()
    lines = [f"# HTTP library A/B: aiohttp vs Starlette on uvicorn ({platform.node()})", "",
             f"`python bench/http_library.py --seconds {args.seconds:g} --rounds "
             f"{args.rounds}`: h2load --h1, {args.rounds} interleaved rounds, median of each; "
             f"server CPU per request from /proc. {os.cpu_count()} cores, "
             f"{platform.processor() or platform.machine()}.", "",
             "| clients | library | req/s | server CPU µs/request | req/s vs aiohttp |",
             "|---|---|---|---|---|"]
    for clients in args.clients:
        base = sorted(r for r, _ in results[("aiohttp", clients)])[args.rounds // 2]
        for lib in LIBRARIES:
            rps = sorted(r for r, _ in results[(lib, clients)])[args.rounds // 2]
            cpu = sorted(c for _, c in results[(lib, clients)])[args.rounds // 2]
            lines.append(f"| {clients} | {lib} | {rps:,.0f} | {cpu:,.0f} | {rps / base:.2f} |")
    versions = []
    for lib in ("aiohttp", "starlette", "uvicorn"):
        try:
            from importlib.metadata import version
            versions.append(f"{lib} {version(lib)}")
        except Exception:  # noqa: BLE001 - a missing library is reported, not fatal
            versions.append(f"{lib} (not installed)")
    lines += ["", "Versions: " + ", ".join(versions) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        {"aiohttp": serve_aiohttp, "starlette": serve_starlette}[sys.argv[2]](int(sys.argv[3]))
    else:
        sys.exit(main())
