"""Serving benchmark: this service over gRPC vs in-process onnxruntime `session.run`, one run.

    python bench/serve_bench.py                                  # the bundled default model
    python bench/serve_bench.py --model models/mnist-dcgan.onnx --seconds 3 --rounds 3 \
        --out docs/benchmarks/serve-cpu.md

For every (batch size, concurrency) cell it measures, in interleaved rounds so that machine
noise hits both alike:
  * in-process: C threads calling `session.run` on ready-made latents (the ceiling);
  * service: `dcgan-serve` started as its own process on 127.0.0.1, driven by a separate client
    process with C closed-loop threads calling `Generate` (RAW), seeds -> images end to end.
It reports images/s, p50 and p99 latency, and the service's throughput as a share of the
ceiling, and writes a Markdown table (and JSON beside it) with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def closed_loop(call, concurrency: int, seconds: float, keep_latencies: bool = False) -> dict:
    """Run `call()` in `concurrency` threads for `seconds`; returns latencies and count."""
    stop = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(concurrency)]

    def worker(i):
        mine = latencies[i]
        while time.perf_counter() < stop:
            t = time.perf_counter()
            call()
            mine.append(time.perf_counter() - t)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    flat = np.array([x for lat in latencies for x in lat])
    result = {"calls": len(flat), "seconds": elapsed,
              "p50_ms": float(np.percentile(flat, 50)) * 1e3,
              "p99_ms": float(np.percentile(flat, 99)) * 1e3}
    if keep_latencies:
        result["latencies"] = flat
    return result


def in_process(model: str, batch: int, concurrency: int, seconds: float, threads: int) -> dict:
    from service.contract import seeds_to_latents
    from service.runtime import OnnxGenerator, RuntimeOptions
    runner = OnnxGenerator(model, RuntimeOptions(device="cpu", intra_op_threads=threads))
    latents = seeds_to_latents(range(batch), runner.metadata.latent_dim)
    labels = np.zeros(batch, np.int64) if runner.metadata.conditional else None
    closed_loop(lambda: runner.run(latents, labels), concurrency, 0.3)  # warm
    return closed_loop(lambda: runner.run(latents, labels), concurrency, seconds)


def _client_process(port: int, batch: int, concurrency: int, seconds: float, queue) -> None:
    import grpc
    from service.api.dcgan.v1 import generator_pb2 as pb
    from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.GeneratorServiceStub(channel)
    request = pb.GenerateRequest(seeds=list(range(batch)))
    closed_loop(lambda: stub.Generate(request), concurrency, 0.3)  # warm
    queue.put(closed_loop(lambda: stub.Generate(request), concurrency, seconds))


def over_grpc(port: int, batch: int, concurrency: int, seconds: float) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_client_process, args=(port, batch, concurrency, seconds, queue))
    proc.start()
    result = queue.get(timeout=seconds + 120)
    proc.join()
    return result


def start_server(model: str, server_args: list[str]) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1",
                             "--port", "0", "--metrics-port", "-1", "--http-port", "-1",
                             "--device", "cpu",
                             "--model", f"bench={model}", *server_args],
                            env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if m := re.search(r"listening grpc=[\d.]+:(\d+)", line):
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining
            return proc, int(m[1])
    raise RuntimeError("the server did not start")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, onnxruntime "
            f"{onnxruntime.__version__}")


def command_line() -> str:
    """This benchmark's command as it was started, every flag included, for its report's
    "Command:" line: a report must say exactly how it was made, not how it usually is."""
    script = Path(sys.argv[0]).resolve()
    if script.is_relative_to(ROOT):
        script = script.relative_to(ROOT)
    return shlex.join(["python", str(script), *sys.argv[1:]])


def publish(text: str, out: Path | None) -> None:
    """Print a Markdown report, and write it to `out` (--out) when one is given."""
    print(text)
    if out:
        out.write_text(text)


def main() -> int:
    from service.process.config import bundled_models
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = bundled_models()[0][1] if bundled_models() else None
    parser.add_argument("--model", default=str(default) if default else None)
    parser.add_argument("--batches", default="1,16,64,256")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell")
    parser.add_argument("--threads", type=int, default=0,
                        help="onnxruntime intra-op threads in-process (0 = one per core)")
    parser.add_argument("--server-args", default="",
                        help="extra dcgan-serve flags, e.g. '--processes 2' (default: none, "
                             "the server's defaults)")
    parser.add_argument("--out", help="write a Markdown table here (and .json beside it)")
    args = parser.parse_args()
    if not args.model:
        parser.error("no --model and no bundled model found")

    server, port = start_server(args.model, args.server_args.split())
    rows = []
    try:
        for batch in map(int, args.batches.split(",")):
            for conc in map(int, args.concurrency.split(",")):
                local, remote = [], []
                for r in range(args.rounds):  # alternate which goes first
                    order = [("local", local), ("remote", remote)]
                    for name, bucket in (order if r % 2 == 0 else order[::-1]):
                        bucket.append(in_process(args.model, batch, conc, args.seconds,
                                                 args.threads) if name == "local"
                                      else over_grpc(port, batch, conc, args.seconds))
                row = {"batch": batch, "concurrency": conc}
                for name, runs in (("inproc", local), ("service", remote)):
                    row[f"{name}_img_s"] = float(np.median(
                        [x["calls"] * batch / x["seconds"] for x in runs]))
                    row[f"{name}_p50_ms"] = float(np.median([x["p50_ms"] for x in runs]))
                    row[f"{name}_p99_ms"] = float(np.median([x["p99_ms"] for x in runs]))
                row["ratio"] = row["service_img_s"] / row["inproc_img_s"]
                rows.append(row)
                print(f"batch {batch:4d} conc {conc:2d}: in-process {row['inproc_img_s']:9.0f} "
                      f"img/s p50 {row['inproc_p50_ms']:7.3f} ms | service "
                      f"{row['service_img_s']:9.0f} img/s p50 {row['service_p50_ms']:7.3f} ms "
                      f"p99 {row['service_p99_ms']:7.3f} ms | ratio {row['ratio']:.2f}",
                      flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)

    if args.out:
        write_report(Path(args.out), rows, args)
    return 0


def write_report(out: Path, rows: list[dict], args) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "| batch | clients | in-process img/s | in-process p50 ms | service img/s | "
        "service p50 ms | service p99 ms | service / in-process | p50 added ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['concurrency']} | {r['inproc_img_s']:.0f} | "
            f"{r['inproc_p50_ms']:.3f} | {r['service_img_s']:.0f} | {r['service_p50_ms']:.3f} | "
            f"{r['service_p99_ms']:.3f} | {r['ratio']:.2f} | "
            f"{r['service_p50_ms'] - r['inproc_p50_ms']:.3f} |")
    header = (f"Measured {time.strftime('%Y-%m-%d')} on {machine()}.\n"
              f"Model `{Path(args.model).name}`; {args.rounds} interleaved rounds of "
              f"{args.seconds:g} s per cell (medians); in-process onnxruntime intra-op threads "
              f"{args.threads or 'one per core'}; server flags: "
              f"`{args.server_args or '(defaults)'}`.\nCommand: `{command_line()}`\n")
    out.write_text(header + "\n" + "\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"machine": machine(), "rows": rows},
                                                   indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
