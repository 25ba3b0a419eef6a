"""A guard against a slow drift: this checkout against a fixed anchor commit, in the cells a
lone caller and a crowd of batch-1 callers meet, side by side in interleaved rounds.

    python bench/anchor_ab.py --out docs/benchmarks/anchor-ab-cpu.md

Comparing each change with the commit before it lets 2 % a change slip by unseen, change after
change; comparing with one fixed commit (ANCHOR, 0f8887a: before the edge, the data plane and
the repository were built) adds them up. The anchor is checked out once into a git worktree
(`--worktree`, default .bench-venvs/anchor-<commit>) and runs on this checkout's Python
environment, so only the code differs.

Cells: gRPC `Generate`, batch 1, with 1 and 8 clients (h2load, one call in flight per
connection), for the default server and `--processes 2` (the README's choice for many batch-1
callers), each beside the anchor's same mode; the naive server (bench/peers/
handwritten_server.py) and in-process onnxruntime at batch 8 (the limit the 1 x 8 cell works
toward) run in the same rounds. Each round's ratio to the anchor is printed, not only the
median: a reviewer reads whether every round agrees. Not a timed test: run it on demand, on a
quiet machine, and record the figures in docs/benchmarks/.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import compare_servers as cs  # noqa: E402
from bench.serve_bench import command_line, machine, publish  # noqa: E402

ANCHOR = "0f8887a"
CELLS = ((1, 1), (1, 8))
#: Each of ours beside the anchor's same mode (compare_servers' target names).
PAIRS = (("dcgan-serve", "baseline anchor"), ("dcgan-serve -p2", "baseline anchor -p2"))


def worktree(commit: str, where: Path | None) -> Path:
    """A checkout of `commit`, made with `git worktree add` on first use."""
    where = where or ROOT / ".bench-venvs" / f"anchor-{commit}"
    if not (where / "service").is_dir():
        where.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force",
                        str(where), commit], check=True, capture_output=True)
    return where


def images_per_s(run: dict, batch: int) -> float:
    return run["calls"] * batch / run["seconds"]


def main() -> int:
    from service.process.config import bundled_models
    from service.runtime import OnnxGenerator, RuntimeOptions
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anchor", default=ANCHOR, help="the commit to compare against")
    parser.add_argument("--worktree", type=Path, help="where the anchor is checked out")
    parser.add_argument("--model", default=str(bundled_models()[0][1]))
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell")
    parser.add_argument("--out", type=Path, help="Markdown report")
    args = parser.parse_args()
    if not shutil.which("h2load"):
        parser.error("needs nghttp2's h2load (apt-get install nghttp2-client)")
    anchor = worktree(args.anchor, args.worktree)
    runner = OnnxGenerator(args.model, RuntimeOptions(device="cpu", intra_op_threads=0))
    cs._RUNNER["runner"] = runner
    latent_dim, conditional = runner.metadata.latent_dim, runner.metadata.conditional
    workdir = Path(tempfile.mkdtemp(prefix="anchor-ab-"))
    wanted = [name for pair in PAIRS for name in pair] + ["handwritten", "in-process"]
    live = [t for t in cs.targets(args.model, None, workdir, [("baseline anchor", anchor)])
            if t.name in wanted]
    # [(batch, clients)][target] -> images/s and p99 of each round
    rates: dict = {cell: {t.name: [] for t in live} for cell in CELLS}
    p99s: dict = {cell: {t.name: [] for t in live} for cell in CELLS}
    ceiling: list[float] = []  # in-process onnxruntime, batch 8, one caller
    try:
        for target in live:
            if target.kind != "inproc":
                cs.start(target, latent_dim, conditional, workdir)
        for r in range(args.rounds):
            for cell in CELLS:
                for target in (live if r % 2 == 0 else live[::-1]):
                    run = cs.drive(target, *cell, args.seconds, latent_dim, conditional,
                                   "h2load")
                    rates[cell][target.name].append(images_per_s(run, cell[0]))
                    p99s[cell][target.name].append(run["p99_ms"])
            inproc = next(t for t in live if t.kind == "inproc")
            ceiling.append(images_per_s(cs.drive(inproc, 8, 1, args.seconds, latent_dim,
                                                 conditional, "h2load"), 8))
            print(f"round {r + 1} done", flush=True)
    finally:
        for target in live:
            cs.stop(target)

    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; model "
             f"`{Path(args.model).name}`; anchor {args.anchor}; gRPC Generate under h2load, "
             f"{args.rounds} interleaved rounds of {args.seconds:g} s.",
             f"Command: `{command_line()}`", "",
             "| batch x clients | ours | anchor | ours img/s (median) | vs anchor, each round "
             "| vs anchor (median) | p99 ms ours / anchor |", "|---|---|---|---:|---|---:|---:|"]
    for cell in CELLS:
        for ours, theirs in PAIRS:
            ratios = [a / b for a, b in zip(rates[cell][ours], rates[cell][theirs])]
            lines.append(
                f"| {cell[0]} x {cell[1]} | {ours} | {theirs} | "
                f"{np.median(rates[cell][ours]):,.0f} | "
                f"{', '.join(f'{x:.2f}' for x in ratios)} | {np.median(ratios):.2f} | "
                f"{np.median(p99s[cell][ours]):.2f} / {np.median(p99s[cell][theirs]):.2f} |")
    lines += ["", "Beside them, in the same rounds:", "",
              "| batch x clients | ours | against | each round | median | p99 ms ours / "
              "theirs |", "|---|---|---|---|---:|---:|"]
    naive = rates[1, 1]["handwritten"]
    for ours in ("dcgan-serve", "dcgan-serve -p2"):
        ratios = [a / b for a, b in zip(rates[1, 1][ours], naive)]
        lines.append(f"| 1 x 1 | {ours} | handwritten (naive sync server) | "
                     f"{', '.join(f'{x:.2f}' for x in ratios)} | {np.median(ratios):.2f} | "
                     f"{np.median(p99s[1, 1][ours]):.2f} / "
                     f"{np.median(p99s[1, 1]['handwritten']):.2f} |")
    for ours in ("dcgan-serve", "dcgan-serve -p2"):
        ratios = [a / b for a, b in zip(rates[1, 8][ours], ceiling)]
        lines.append(f"| 1 x 8 | {ours} | in-process onnxruntime, batch 8 | "
                     f"{', '.join(f'{x:.2f}' for x in ratios)} | {np.median(ratios):.2f} | |")
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
