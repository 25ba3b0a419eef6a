"""Where a server's CPU goes per call, under h2load: py-spy samples of the whole process,
summed by what the code is (ours, grpcio, asyncio, onnxruntime, protobuf, numpy, ...).

    python bench/profile_call.py --batch 1 --clients 1 --out docs/benchmarks/profile-call-cpu.md

Targets (as in bench/compare_servers.py): `dcgan-serve` (defaults, `Generate` with seeds),
`handwritten` (grpcio's thread-pool server, V2 ModelInfer with latents: the naive server of
40 lines) and, with `--baseline NAME=DIR`, the service from another checkout. Each runs alone
under h2load for `--seconds` while `py-spy record --nonblocking` samples its Python threads
(idle ones excluded; time in C, onnxruntime's run or grpcio's core, counts to the Python frame
that called it); samples are counted per bucket, both as self time and as the share of
samples whose stack passes through a frame of the bucket. The calls/s beside each profile
are h2load's while sampled.
Needs py-spy (`pip install py-spy`) and h2load (Debian `nghttp2-client`).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import compare_servers as cs  # noqa: E402
from bench.serve_bench import command_line, machine, publish  # noqa: E402

#: What a frame is, by the first pattern its text matches (file paths and native libraries).
BUCKETS = [
    # A leaf here is onnxruntime at work in C: py-spy shows the Python frame that called it.
    ("onnxruntime run (C)", r"^Session\.run \(onnxruntime/"),
    ("service: edge", r"service/edge/"),
    ("service: doors", r"service/doors/"),
    ("service: plane (batcher, queue)", r"service/plane/"),
    ("service: runtime", r"service/runtime\.py"),
    ("service: contract", r"service/contract\.py"),
    ("service: other", r"service/"),
    ("bench peer", r"bench/peers/"),
    ("onnxruntime (Python)", r"onnxruntime/"),
    ("protobuf", r"google/protobuf|_message|upb|protobuf"),
    ("numpy", r"numpy|_multiarray"),
    ("prometheus_client", r"prometheus_client"),
    ("grpc (python)", r"grpc/_cython|grpc/aio|grpc/_server|grpc/__init__|cygrpc"),
    ("asyncio", r"asyncio/"),
    ("threading, queues", r"threading\.py|queue\.py|concurrent/futures"),
]


def bucket(frame: str) -> str:
    for name, pattern in BUCKETS:
        if re.search(pattern, frame):
            return name
    return "other Python"


def profile(target: cs.Target, batch: int, clients: int, seconds: float, latent_dim: int,
            conditional: bool, rate: int, out: Path) -> dict:
    """h2load on `target` for `seconds` while py-spy samples it; its collapsed stacks in `out`."""
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(target.proc.pid), "--nonblocking",
                            "--subprocesses", "--rate", str(rate), "--format", "raw",
                            "--duration", str(int(seconds) + 2), "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # py-spy attached before the load starts
    figures = cs.drive_h2load(target, batch, clients, seconds, latent_dim, conditional)
    _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode or not out.exists():
        raise SystemExit(f"py-spy failed on {target.name}: {err.strip()}")
    return figures


def summarise(collapsed: Path) -> tuple[int, dict[str, int], dict[str, int], list]:
    """Samples in all; per bucket, self samples and samples whose stack passes through it;
    the leaf functions with most self samples."""
    total, own, through = 0, collections.Counter(), collections.Counter()
    leaves = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        total += n
        own[bucket(frames[-1])] += n
        leaves[frames[-1]] += n
        for name in {bucket(f) for f in frames}:
            through[name] += n
    return total, own, through, leaves.most_common(15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "mnist-dcgan.onnx"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--only", default="dcgan-serve,handwritten",
                        help="comma-separated target names (see bench/compare_servers.py)")
    parser.add_argument("--baseline", action="append", default=[], type=cs.baseline_spec)
    parser.add_argument("--keep", type=Path, help="keep the collapsed stacks in this folder")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    for tool in ("py-spy", "h2load"):
        if not shutil.which(tool):
            parser.error(f"{tool} is not installed")
    from service.runtime import OnnxGenerator
    runner = OnnxGenerator(args.model)
    cs._RUNNER["runner"] = runner
    latent_dim, conditional = runner.metadata.latent_dim, bool(runner.metadata.num_classes)
    work = Path(tempfile.mkdtemp(prefix="profile-call-"))
    keep = args.keep or work
    keep.mkdir(parents=True, exist_ok=True)
    wanted = args.only.split(",")
    chosen = [t for t in cs.targets(args.model, None, work, args.baseline) if t.name in wanted]
    sections = []
    for target in chosen:
        cs.start(target, latent_dim, conditional, work)
        try:
            cs.drive_h2load(target, args.batch, args.clients, 2.0, latent_dim, conditional)
            stacks = keep / f"{target.name.replace(' ', '_')}.txt"
            figures = profile(target, args.batch, args.clients, args.seconds, latent_dim,
                              conditional, args.rate, stacks)
        finally:
            cs.stop(target)
        total, own, through, leaves = summarise(stacks)
        calls = figures["calls"]
        per_call = lambda n: n / args.rate / calls * 1e6  # noqa: E731  (µs of samples)
        lines = [f"### {target.name}: {calls / figures['seconds']:,.0f} calls/s under "
                 f"sampling, {total:,} samples ({per_call(total):.0f} µs sampled per call)", "",
                 "| bucket | self µs/call | self share | in stack |", "|---|---:|---:|---:|"]
        for name, n in own.most_common():
            lines.append(f"| {name} | {per_call(n):.0f} | {n / total:.1%} | "
                         f"{through[name] / total:.1%} |")
        lines += ["", "Hottest leaf frames (self samples):", ""]
        lines += [f"- {n / total:.1%} `{frame[:140]}`" for frame, n in leaves]
        sections.append("\n".join(lines))
        print(sections[-1], flush=True)
    header = (f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; batch {args.batch} x "
              f"{args.clients} client(s), h2load, {args.seconds:g} s per target, py-spy "
              f"--nonblocking at {args.rate} Hz (Python threads, idle ones excluded).\n"
              f"Command: `{command_line()}`\n")
    publish(header + "\n" + "\n\n".join(sections) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
