"""Training throughput of each architecture preset: images per second through the real loop.

    python bench/train_bench.py --data-dir ../shared/data --threads 1 \
        --out docs/benchmarks/train-cpu.md

Each preset trains `--steps` steps with its own batch size and hyper-parameters (no evaluation,
no progress bar) through `training.loop.train`; img/s is the batch size over the median
per-step time that the loop records in metrics.csv (the first 10 steps are warm-up). The presets
run interleaved over `--rounds` rounds. Parameters and multiply-accumulates per generated image
are counted from the models themselves.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve_bench import command_line, machine  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.loop import train  # noqa: E402
from training.models import ARCHS, build_discriminator, build_generator, count_macs, \
    count_parameters  # noqa: E402


def step_seconds(run_dir: Path) -> np.ndarray:
    with (run_dir / "metrics.csv").open() as f:
        return np.array([float(r["seconds"]) for r in csv.DictReader(f)])


def model_figures(arch: str) -> dict:
    cfg = TrainConfig(arch=arch).resolved()
    g = build_generator(arch, cfg.latent_dim, 0, cfg.g_width)
    d = build_discriminator(arch, 0, cfg.d_width, cfg.d_dropout)
    return {"g_params": count_parameters(g), "d_params": count_parameters(d),
            "g_macs": count_macs(g, torch.randn(1, cfg.latent_dim)),
            "d_macs": count_macs(d, torch.randn(1, 1, 28, 28)), "batch": cfg.batch_size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out")
    args = parser.parse_args()
    archs = args.archs.split(",")
    per_step = {a: [] for a in archs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for arch in (archs if r % 2 == 0 else archs[::-1]):
                cfg = TrainConfig(arch=arch, steps=args.steps, data_dir=args.data_dir,
                                  threads=args.threads, device=args.device, eval_every=-1,
                                  progress=False, sample_at=[], checkpoint_every=10**9,
                                  out=f"{tmp}/{arch}-{r}", train_subset=20000)
                per_step[arch].extend(step_seconds(train(cfg))[10:])
    rows = []
    for arch in archs:
        fig = model_figures(arch)
        img_s = fig["batch"] / float(np.median(per_step[arch]))
        rows.append({"arch": arch, **fig, "img_s": img_s})
    base = next((r["img_s"] for r in rows if r["arch"] == "tf-dcgan"), None)
    lines = ["| arch | batch | G params | G MACs/image | D params | D MACs/image | train img/s |"
             " vs tf-dcgan |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['img_s'] / base:.2f}x" if base else "-"
        lines.append(f"| {r['arch']} | {r['batch']} | {r['g_params']:,} | {r['g_macs'] / 1e6:.1f} M"
                     f" | {r['d_params']:,} | {r['d_macs'] / 1e6:.1f} M | {r['img_s']:.0f} | "
                     f"{ratio} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, torch {torch.__version__}, "
            f"device {args.device}, {args.threads} thread(s); median step time over "
            f"{args.rounds} interleaved rounds of {args.steps} steps (first 10 dropped).\n"
            f"Command: `{command_line()}`\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
