"""Recipe ablation: which change makes the conditional `dcgan` preset learn faster per unit of
CPU time. Two measurements, kept apart because they need different machines to be cheap:

  quality  each variant trains --epochs epochs through `dcgan-train train` (same seed, so the
           same data order and noise) and is scored at every epoch's end on --eval-samples
           images (FD, KID, precision, recall, label accuracy, smallest class share);
           variants run side by side, --jobs at a time, one thread each:

    python bench/recipe_ablation.py quality --data-dir ../shared/data --device cuda --jobs 16 \
        --out runs/ablation

  speed    each variant's median step time on this CPU, 1 and 2 threads, through the same loop,
           interleaved over --rounds so load on the shared machine hits all of them alike:

    python bench/recipe_ablation.py speed --data-dir ../shared/data --out runs/ablation

  throughput  today's shipped recipe from a checkout of the commit before (--baseline) against
           the preset of this checkout, side by side in rounds, 1 and 2 threads:

    git worktree add /tmp/old <commit>
    python bench/recipe_ablation.py throughput --baseline /tmp/old --data-dir ../shared/data

  report   the table of quality and speed (docs/benchmarks/recipe-ablation.md):

    python bench/recipe_ablation.py report --out runs/ablation --md docs/benchmarks/recipe-ablation.md

Quality on a GPU in fp32 (--no-amp) gives the same learning curve per epoch as a CPU would, up
to float rounding; the wall time a CPU user pays is epochs x images / (img/s from `speed`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.train_bench import step_seconds  # noqa: E402

BASE = ["--dataset", "mnist", "--arch", "dcgan", "--conditional"]
#: The dcgan preset before the ablation, spelled out: every variant changes it.
BEFORE = ["--lr-g", "2e-4", "--lr-d", "2e-4", "--beta1", "0.5", "--beta2", "0.999",
          "--ema-decay", "0.999", "--lr-schedule", "constant"]

#: Round 1's winner, the base of round 2.
R = ["--lr-g", "4e-4", "--lr-d", "4e-4", "--beta1", "0", "--beta2", "0.99"]

#: name -> the flags it adds to the preset (the first is the preset itself).
VARIANTS: dict[str, list[str]] = {
    "preset": [],  # as it was: Adam 2e-4, betas 0.5 / 0.999, EMA 0.999, constant lr
    "batch 32": ["--batch-size", "32"],
    "batch 128, lr 4e-4": ["--batch-size", "128", "--lr-g", "4e-4", "--lr-d", "4e-4"],
    "lr 4e-4": ["--lr-g", "4e-4", "--lr-d", "4e-4"],
    "lr D 4e-4 (TTUR)": ["--lr-d", "4e-4"],
    "betas 0, 0.99": ["--beta1", "0", "--beta2", "0.99"],
    "hinge loss": ["--loss", "hinge"],
    "spectral norm D": ["--spectral-norm"],
    "spectral norm D, hinge": ["--spectral-norm", "--loss", "hinge"],
    "R1 0.01": ["--r1-gamma", "0.01"],
    "R1 0.1": ["--r1-gamma", "0.1"],
    "DiffAugment translation": ["--augment"],
    "EMA 0.9995": ["--ema-decay", "0.9995"],
    "EMA 0.998": ["--ema-decay", "0.998"],
    "G width 48": ["--g-width", "48"],
    "D width 64": ["--d-width", "64"],
    # pairs of the likeliest winners
    "batch 32, EMA 0.9995": ["--batch-size", "32", "--ema-decay", "0.9995"],
    "batch 32, betas 0, 0.99": ["--batch-size", "32", "--beta1", "0", "--beta2", "0.99"],
    "batch 32, lr 1e-4": ["--batch-size", "32", "--lr-g", "1e-4", "--lr-d", "1e-4"],
    "lr 4e-4, betas 0, 0.99": R,
    # round 2: on top of round 1's winner, R = lr 4e-4, betas 0, 0.99
    "preset, seed 1": ["--seed", "1"],
    "R, seed 1": [*R, "--seed", "1"],
    "R, EMA 0.998": [*R, "--ema-decay", "0.998"],
    "R, EMA 0.995": [*R, "--ema-decay", "0.995"],
    "R, batch 128": [*R, "--batch-size", "128"],
    "R, batch 128, lr 8e-4": [*R, "--batch-size", "128", "--lr-g", "8e-4", "--lr-d", "8e-4"],
    "R, batch 128, lr 8e-4, EMA 0.998": [*R, "--batch-size", "128", "--lr-g", "8e-4",
                                         "--lr-d", "8e-4", "--ema-decay", "0.998"],
    "R, batch 128, EMA 0.998": [*R, "--batch-size", "128", "--ema-decay", "0.998"],
    "R, lr 6e-4": [*R, "--lr-g", "6e-4", "--lr-d", "6e-4"],
    "R, lr 6e-4, EMA 0.998": [*R, "--lr-g", "6e-4", "--lr-d", "6e-4", "--ema-decay", "0.998"],
    "R, lr 1e-3": [*R, "--lr-g", "1e-3", "--lr-d", "1e-3"],
    "R, lr D 8e-4": [*R, "--lr-d", "8e-4"],
    "R, beta2 0.9": [*R, "--beta2", "0.9"],
    "R, G width 48": [*R, "--g-width", "48"],
    "R, D width 64": [*R, "--d-width", "64"],
    "R, batch 32": [*R, "--batch-size", "32"],
    # round 3 (on the CPU at the budget, beside "R, EMA 0.995"): the learning rates' decay
    "R, EMA 0.995, linear decay (the new preset)": [*R, "--ema-decay", "0.995",
                                                    "--lr-schedule", "linear"],
}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


#: The mechanisms that lost were removed from the loop after the ablation; their rows were
#: measured at commit 0dc2523, where these flags still exist (docs/decisions.md).
REMOVED_FLAGS = ("--loss", "--spectral-norm", "--r1-gamma", "--augment")


def selected(args) -> list[str]:
    names = [n for n in VARIANTS if not args.only or slug(n) in args.only.split(",")]
    runnable = [n for n in names if not set(VARIANTS[n]) & set(REMOVED_FLAGS)]
    for name in sorted(set(names) - set(runnable)):
        print(f"skipping {name!r}: its flag was removed after the ablation (run it at 0dc2523)")
    return runnable


def train_command(name: str, args, extra: list[str], out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "training", "train", *BASE, *BEFORE, "--seed", "0",
           *VARIANTS[name],
           *extra, "--no-progress", "--out", str(out), "--device", args.device]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    if args.train_subset:
        cmd += ["--train-subset", str(args.train_subset)]
    if args.device == "cuda":
        cmd.append("--no-amp")  # fp32, as on a CPU
    return cmd


def quality(args) -> None:
    names = selected(args)
    pending = list(names)
    running: dict[str, subprocess.Popen] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    started = time.time()
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            out = Path(args.out) / slug(name)
            cmd = train_command(name, args, ["--epochs", str(args.epochs), "--threads", "1",
                                             "--eval-samples", str(args.eval_samples),
                                             "--checkpoint-every", "100000"], out)
            out.mkdir(parents=True, exist_ok=True)
            log = (out / "train.log").open("w")
            running[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                             stderr=subprocess.STDOUT)
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                print(f"{time.time() - started:6.0f} s  {name}: exit {proc.returncode}",
                      flush=True)
                del running[name]
        time.sleep(1)


def images_per_second(cmd: list[str], checkout: Path, out: Path) -> float:
    """Run one timing command in `checkout`; its batch over the loop's median step time
    (the first 10 steps are warm-up)."""
    subprocess.run(cmd, cwd=checkout, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(checkout)})
    batch = json.loads((out / "config.json").read_text())["batch_size"]
    return batch / float(np.median(step_seconds(out)[10:]))


def speed(args) -> None:
    names = selected(args)
    results: dict[str, dict[str, list[float]]] = {n: {"1": [], "2": []} for n in names}
    for round_ in range(args.rounds):
        for threads in ("1", "2"):
            for name in names:
                out = Path(args.out) / "speed" / f"{slug(name)}-t{threads}-r{round_}"
                cmd = train_command(name, args, ["--steps", str(args.steps), "--threads",
                                                 threads, "--eval-every", "-1",
                                                 "--sample-at", "0"], out)
                rate = images_per_second(cmd, ROOT, out)
                results[name][threads].append(rate)
                print(f"round {round_} threads {threads} {name}: {rate:.0f} img/s", flush=True)
    (Path(args.out) / "speed.json").write_text(json.dumps(results, indent=2) + "\n")


#: The recipe the models shipped before this ablation were trained with (models/README.md).
SHIPPED_BEFORE = ["--d-width", "64"]


def throughput(args) -> None:
    """img/s of the shipped models' recipe in the baseline checkout and of this checkout's
    preset, each through its own loop, alternating so both see the same load."""
    recipes = {"today's recipe (baseline checkout, D width 64)": (Path(args.baseline),
                                                                  SHIPPED_BEFORE),
               "new preset (this checkout)": (ROOT, [])}
    results: dict[str, dict[str, list[float]]] = {n: {"1": [], "2": []} for n in recipes}
    for round_ in range(args.rounds):
        for threads in ("1", "2"):
            for name, (checkout, flags) in recipes.items():
                out = (Path(args.out) / "throughput" / f"{slug(name)}-t{threads}-r{round_}"
                       ).resolve()  # the baseline runs from its own checkout
                cmd = [sys.executable, "-m", "training", "train", *BASE, *flags, "--steps",
                       str(args.steps), "--threads", threads, "--eval-every", "-1",
                       "--no-progress", "--out", str(out)]
                if args.data_dir:
                    cmd += ["--data-dir", str(Path(args.data_dir).resolve())]
                rate = images_per_second(cmd, checkout, out)
                results[name][threads].append(rate)
                print(f"round {round_} threads {threads} {name}: {rate:.0f} img/s", flush=True)
    for name, rates in results.items():
        print(f"{name}: median {statistics.median(rates['1']):.0f} img/s on 1 thread, "
              f"{statistics.median(rates['2']):.0f} on 2")
    (Path(args.out) / "throughput.json").write_text(json.dumps(results, indent=2) + "\n")


def report(args) -> str:
    out = Path(args.out)
    speeds = json.loads((out / "speed.json").read_text()) if (out / "speed.json").exists() else {}
    lines = ["| change | img/s, 1 thread | img/s, 2 threads | FD after epoch 1 / 2 / 3 ... | "
             "KID ± std over subsets, last epoch | precision / recall, last epoch | label accuracy, last "
             "epoch | smallest class, last epoch |", "|---|---:|---:|---|---:|---|---:|---:|"]
    for name in VARIANTS:
        eval_csv = out / slug(name) / "eval.csv"
        if not eval_csv.exists():
            continue
        with eval_csv.open() as f:
            rows = list(csv.DictReader(f))
        s1 = speeds.get(name, {}).get("1", [])
        s2 = speeds.get(name, {}).get("2", [])
        last = rows[-1]
        lines.append(
            f"| {name} | {statistics.median(s1):.0f} | {statistics.median(s2):.0f} | "
            if s1 and s2 else f"| {name} | | | ")
        lines[-1] += (" / ".join(f"{float(r['fd']):.2f}" for r in rows) + " | "
                      f"{float(last['kid']):.2f} ± {float(last['kid_std']):.2f} | "
                      f"{float(last['precision']):.3f} / {float(last['recall']):.3f} | "
                      f"{100 * float(last['label_accuracy']):.1f}% | "
                      f"{100 * float(last['min_class_share']):.1f}% |")
    text = "\n".join(lines) + "\n"
    if args.md:
        Path(args.md).write_text(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("quality", "speed", "throughput", "report"))
    parser.add_argument("--baseline", help="throughput: a checkout of the commit before")
    parser.add_argument("--data-dir")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", help="comma-separated variant slugs, e.g. preset,batch-32 "
                        "(default: all)")
    parser.add_argument("--train-subset", type=int, help="the first N images only (smoke runs)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--eval-samples", type=int, default=10000)
    parser.add_argument("--steps", type=int, default=60, help="speed: steps per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--md", help="report: also write the table here")
    args = parser.parse_args()
    if args.what == "quality":
        quality(args)
    elif args.what == "speed":
        speed(args)
    elif args.what == "throughput":
        throughput(args)
        return 0
    print(report(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
