"""Interpolation (and explicit latents) against plain Generate of the same number of images.

    python bench/latent_walk.py --out docs/benchmarks/latent-walk-cpu.md

One dcgan-serve process (the bundled default model, on 127.0.0.1), gRPC clients in threads
of this process, closed loop: per cell, `Generate` of 16 seeds, `Interpolate` of 16 frames,
and `Generate` of 16 explicit latents, in interleaved rounds (medians).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve_bench import closed_loop, command_line, machine, publish  # noqa: E402


def main() -> int:
    import grpc

    from service.api.dcgan.v1 import generator_pb2 as pb
    from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
    from service.process.config import ServeConfig
    from service.contract import interpolate, seed_to_latent
    from service.process.server import create_server
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="images per request")
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    n = args.images
    running = create_server(ServeConfig(host="127.0.0.1", port=0, http_port=-1,
                                        metrics_port=-1, device="cpu"))
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        stub = pb_grpc.GeneratorServiceStub(channel)
        path = interpolate(seed_to_latent(3, 100), seed_to_latent(13, 100), n)
        kinds = {
            "Generate, seeds": lambda: stub.Generate(pb.GenerateRequest(
                seeds=list(range(n))), timeout=30),
            "Interpolate, frames": lambda: stub.Interpolate(pb.InterpolateRequest(
                seed_a=3, seed_b=13, frames=n), timeout=30),
            "Generate, latents": lambda: stub.Generate(pb.GenerateRequest(
                latents=path.tobytes(), labels=[3]), timeout=30),
        }
        for call in kinds.values():
            call()
        results = {}
        for _ in range(args.rounds):
            for clients in map(int, args.clients.split(",")):
                for name, call in kinds.items():
                    r = closed_loop(call, clients, args.seconds)
                    results.setdefault((clients, name), []).append(r["calls"] * n / r["seconds"])
    finally:
        running.stop(grace=1)
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; the bundled default model; "
             f"{args.rounds} interleaved rounds of {args.seconds:g} s (medians); {n} images per "
             "request; clients are threads of the benchmark process.",
             f"Command: `{command_line()}`", "",
             "| clients | request | img/s | vs Generate, seeds |", "|---:|---|---:|---:|"]
    for clients in map(int, args.clients.split(",")):
        base = float(np.median(results[(clients, "Generate, seeds")]))
        for name in kinds:
            value = float(np.median(results[(clients, name)]))
            lines.append(f"| {clients} | {name} | {value:,.0f} | {value / base:.2f} |")
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
