"""Soak / load test: saturate a dcgan-serve process on 127.0.0.1 and watch its memory.

    python bench/soak.py --seconds 600 --clients 16 --out docs/benchmarks/soak-cpu.json \
        --plot docs/benchmarks/soak-cpu.png

Starts the server as its own process, drives it with closed-loop client threads sending a mix
of requests (batch 1, 16 and 64, PNG and RAW, 5% invalid), samples the server's RSS from
/proc every second, and reports requests served, errors by status, p50/p99 latency and RSS
growth from the end of warm-up (the first 20% of the run) to the end, and the same over time
(RSS, p99 and statuses per 10-second window: `timeline` in the JSON, and `--plot`). It passes
when nothing
but the expected INVALID_ARGUMENT answers came back and RSS grew by less than 5% after warm-up.
Bounded in time and count; talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PASS_RSS_GROWTH = 0.05
WINDOW_S = 10


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def start_server(model: str | None, extra: list[str]) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", "0",
           "--metrics-port", "-1", "--http-port", "-1", *extra]
    if model:
        cmd += ["--model", f"soak={model}"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if m := re.search(r"listening grpc=[\d.]+:(\d+)", line):
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, int(m[1])
    raise RuntimeError("the server did not start")


def run(seconds: float, clients: int, model: str | None = None, extra: list[str] = ()) -> dict:
    import grpc
    from service.api.dcgan.v1 import generator_pb2 as pb
    from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc

    server, port = start_server(model, list(extra))
    samples: list[tuple[float, int]] = []
    codes: dict[str, int] = {}
    latencies: list[float] = []
    events: list[tuple[float, float, str]] = []  # (seconds since start, latency, status)
    begun = time.monotonic()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    mix = [pb.GenerateRequest(seeds=[3]), pb.GenerateRequest(seeds=list(range(16))),
           pb.GenerateRequest(seeds=list(range(64))),
           pb.GenerateRequest(seeds=list(range(16)), format=pb.IMAGE_FORMAT_PNG),
           pb.GenerateRequest(seeds=[])]  # invalid on purpose
    weights = np.array([0.45, 0.25, 0.1, 0.15, 0.05])

    def client(i):
        rng = np.random.default_rng(i)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.GeneratorServiceStub(ch)
            while time.monotonic() < stop_at:
                request = mix[rng.choice(len(mix), p=weights)]
                started = time.perf_counter()
                try:
                    stub.Generate(request, timeout=10)
                    code = "OK"
                except grpc.RpcError as err:
                    code = err.code().name
                took = time.perf_counter() - started
                with lock:
                    latencies.append(took)
                    codes[code] = codes.get(code, 0) + 1
                    events.append((time.monotonic() - begun, took, code))

    def sampler():
        start = time.monotonic()
        while time.monotonic() < stop_at:
            samples.append((time.monotonic() - start, rss_bytes(server.pid)))
            time.sleep(min(1.0, seconds / 20))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    threads.append(threading.Thread(target=sampler))
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    server.terminate()
    exit_code = server.wait(timeout=60)

    warm = [r for t, r in samples if t >= 0.2 * seconds] or [samples[-1][1]]
    growth = (warm[-1] - warm[0]) / warm[0]
    unexpected = {k: v for k, v in codes.items() if k not in ("OK", "INVALID_ARGUMENT")}
    lat = np.array(latencies)
    timeline = []
    for start in np.arange(0, seconds, WINDOW_S):
        window = [(took, code) for t, took, code in events if start <= t < start + WINDOW_S]
        rss = [r for t, r in samples if start <= t < start + WINDOW_S]
        if not window:
            continue
        counts: dict[str, int] = {}
        for _, code in window:
            counts[code] = counts.get(code, 0) + 1
        timeline.append({"t": float(start + WINDOW_S), "requests": len(window),
                         "p99_ms": round(float(np.percentile([w for w, _ in window], 99)) * 1e3,
                                         2),
                         "rss_mb": round(max(rss) / 2**20, 1) if rss else None,
                         "codes": counts})
    return {
        "seconds": round(elapsed, 1), "clients": clients, "requests": int(sum(codes.values())),
        "requests_per_s": round(sum(codes.values()) / elapsed, 1), "codes": codes,
        "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3),
        "rss_after_warmup_mb": round(warm[0] / 2**20, 1), "rss_end_mb": round(warm[-1] / 2**20, 1),
        "rss_growth": round(growth, 4), "server_exit_code": exit_code,
        "passed": bool(not unexpected and growth < PASS_RSS_GROWTH and exit_code == 0),
        "timeline": timeline,
    }


def plot(result: dict, path: str) -> None:
    """RSS, p99 and statuses per window, one panel each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [w["t"] / 60 for w in result["timeline"]]
    fig, (rss, p99, codes) = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    rss.plot(t, [w["rss_mb"] for w in result["timeline"]])
    rss.set_ylabel("server RSS, MB")
    rss.set_ylim(bottom=0)
    p99.plot(t, [w["p99_ms"] for w in result["timeline"]], color="tab:orange")
    p99.set_ylabel("p99 latency, ms")
    p99.set_ylim(bottom=0)
    for code in sorted({c for w in result["timeline"] for c in w["codes"]}):
        codes.plot(t, [w["codes"].get(code, 0) / WINDOW_S for w in result["timeline"]],
                   label=code)
    codes.set_ylabel("answers/s by status")
    codes.set_xlabel("minutes")
    codes.legend()
    fig.suptitle(f"soak: {result['clients']} clients, {result['seconds'] / 60:.0f} min, "
                 f"RSS growth after warm-up {result['rss_growth']:+.1%}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--model", help="an ONNX file (default: the bundled models)")
    parser.add_argument("--out", help="write the JSON result here too")
    parser.add_argument("--plot", help="write RSS, p99 and statuses over time as a PNG")
    args = parser.parse_args()
    result = run(args.seconds, args.clients, args.model)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if args.plot:
        plot(result, args.plot)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
