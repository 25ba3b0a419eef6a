"""What one batch-1 gRPC call costs on this machine, piece by piece, under h2load.

    python bench/call_cost.py --out docs/benchmarks/call-cost-cpu.md

Targets, all answering /dcgan.v1.GeneratorService/Generate with one seed per call:
  grpc.aio, fixed reply         bench/peers/fixed_reply_server.py aio: grpc.aio's own floor
  grpc sync, fixed reply        the same on grpc.server with 8 threads
  dcgan-serve, zero-cost model  the service on one event loop (--inference-workers 1, what each
                                --processes worker runs) with a model of the real one's
                                signature that computes nothing: gRPC plus the service's own code
  dcgan-serve                   defaults, the bundled model
  dcgan-serve -p2               --processes 2

For each, at 1 and 8 clients (h2load, one call in flight per connection): calls/s (h2load's
own rate), CPU µs per call of the server's process tree (user + system from /proc), of the
whole machine (/proc/stat, h2load included), and context switches per call of the server's
threads. Rounds are interleaved and each figure is the median. Needs h2load (Debian
`nghttp2-client`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.image import free_port  # noqa: E402
from bench.serve_bench import command_line, machine, publish  # noqa: E402
from service.api.dcgan.v1 import generator_pb2 as pb  # noqa: E402
from service.process.config import bundled_models  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def zero_cost_model(source: Path, target: Path) -> None:
    """`source`'s inputs, output and metadata around a graph that computes nothing useful (a
    MatMul by zeros, reshaped and cast): it loads and answers like the real model."""
    model = onnx.load(str(source))
    graph = model.graph
    latent = graph.input[0]
    latent_dim = latent.type.tensor_type.shape.dim[1].dim_value
    out = graph.output[0]
    c, h, w = (d.dim_value for d in out.type.tensor_type.shape.dim[1:])
    del graph.node[:]
    del graph.initializer[:]
    graph.initializer.extend([
        numpy_helper.from_array(np.zeros((latent_dim, c * h * w), np.float32), "zeros"),
        numpy_helper.from_array(np.array([-1, c, h, w], np.int64), "shape")])
    graph.node.extend([
        helper.make_node("MatMul", [latent.name, "zeros"], ["flat"]),
        helper.make_node("Reshape", ["flat", "shape"], ["image"]),
        helper.make_node("Cast", ["image"], [out.name], to=onnx.TensorProto.UINT8)])
    onnx.save(model, str(target))


def targets(model: Path, zero: Path) -> dict[str, list[str]]:
    serve = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", "{port}",
             "--metrics-port", "-1", "--http-port", "-1", "--device", "cpu"]
    peer = [sys.executable, str(ROOT / "bench" / "peers" / "fixed_reply_server.py")]
    return {
        "grpc.aio, fixed reply": peer + ["aio", "{port}"],
        "grpc sync, fixed reply": peer + ["sync", "{port}"],
        "dcgan-serve, zero-cost model": serve + ["--model", f"mnist={zero}",
                                                 "--inference-workers", "1"],
        "dcgan-serve": serve + ["--model", f"mnist={model}"],
        "dcgan-serve -p2": serve + ["--model", f"mnist={model}", "--processes", "2"],
    }


# --- /proc: the server's process tree, its CPU time and context switches -----------------------

def _tree(root: int) -> list[int]:
    pids, parents = [root], {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1]
                                               .split()[1])
            except (OSError, IndexError, ValueError):
                continue
    for pid in pids:  # grows while it is walked: children, then theirs
        pids.extend(child for child, parent in parents.items() if parent == pid)
    return pids


def _tree_counters(root: int) -> tuple[float, int]:
    """(CPU seconds, context switches) of every thread of `root`'s process tree."""
    cpu, switches = 0.0, 0
    for pid in _tree(root):
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                cpu += (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
                status = (task / "status").read_text()
            except (OSError, IndexError, ValueError):
                continue
            switches += sum(int(n) for n in re.findall(r"ctxt_switches:\s+(\d+)", status))
    return cpu, switches


def _machine_cpu() -> float:
    """Busy CPU seconds of the whole machine so far (all but idle and iowait)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = \
        (int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICK


# --- driving one target -------------------------------------------------------------------------

def start(command: list[str], log: Path, env: dict[str, str] | None = None
          ) -> tuple[subprocess.Popen, int]:
    """`command` ({port} filled in) started in its own session, once it listens; `env` is
    added to this process's environment."""
    port = free_port()
    proc = subprocess.Popen([part.replace("{port}", str(port)) for part in command],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{command} exited at start; its log: {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            time.sleep(0.5)  # the workers of --processes bind one after the other
            return proc, port
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{command} did not listen within 60 s; its log: {log}")


def h2load(port: int, clients: int, seconds: float, frame: Path) -> float:
    """calls/s over `seconds`, as h2load counts them (its own rate)."""
    out = subprocess.run(
        ["h2load", "--clients", str(clients), "--max-concurrent-streams", "1", "--threads", "1",
         "--duration", f"{int(seconds * 1000)}ms", "--header", "content-type: application/grpc",
         "--header", "te: trailers", "--data", str(frame),
         f"http://127.0.0.1:{port}/dcgan.v1.GeneratorService/Generate"],
        capture_output=True, text=True, timeout=seconds + 60).stdout
    return float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))


def measure(proc: subprocess.Popen, port: int, clients: int, seconds: float,
            frame: Path) -> dict:
    h2load(port, clients, 1.0, frame)  # warm up: connections, caches, batch sizes
    cpu0, switches0 = _tree_counters(proc.pid)
    machine0 = _machine_cpu()
    rate = h2load(port, clients, seconds, frame)
    cpu1, switches1 = _tree_counters(proc.pid)
    calls = rate * seconds
    return {"calls/s": rate,
            "server µs/call": (cpu1 - cpu0) / calls * 1e6,
            "machine µs/call": (_machine_cpu() - machine0) / calls * 1e6,
            "switches/call": (switches1 - switches0) / calls}


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=bundled_models()[0][1])
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not shutil.which("h2load"):
        parser.error("h2load is not installed (Debian: apt-get install nghttp2-client)")
    clients = [int(c) for c in args.clients.split(",")]

    work = Path(tempfile.mkdtemp())
    zero_cost_model(args.model, work / "zero.onnx")
    message = pb.GenerateRequest(seeds=[0]).SerializeToString()
    frame = work / "request"
    frame.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)

    chosen = targets(args.model, work / "zero.onnx")
    running = {name: start(command, work / f"{i}.log")
               for i, (name, command) in enumerate(chosen.items())}
    figures: dict[tuple[str, int], list[dict]] = {}
    try:
        for r in range(args.rounds):  # interleaved, alternating order: noise hits all alike
            names = list(running) if r % 2 == 0 else list(running)[::-1]
            for n in clients:
                for name in names:
                    proc, port = running[name]
                    figures.setdefault((name, n), []).append(
                        measure(proc, port, n, args.seconds, frame))
                    print(name, n, {k: round(v, 1) for k, v in figures[(name, n)][-1].items()},
                          flush=True)
    finally:
        for proc, _ in running.values():
            stop(proc)

    keys = ["calls/s", "server µs/call", "machine µs/call", "switches/call"]
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; model "
             f"`{args.model.name}`; h2load, batch 1; {args.rounds} interleaved rounds of "
             f"{args.seconds:g} s (medians).",
             f"Command: `{command_line()}`", "",
             "| target | clients | " + " | ".join(keys) + " |",
             "|---|---:|" + "---:|" * len(keys)]
    for n in clients:
        for name in chosen:
            cells = [np.median([f[k] for f in figures[(name, n)]]) for k in keys]
            lines.append(f"| {name} | {n} | {cells[0]:,.0f} | {cells[1]:.0f} | {cells[2]:.0f} | "
                         f"{cells[3]:.1f} |")
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
