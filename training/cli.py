"""`dcgan-train`: train, resume, sample, export and evaluate DCGAN generators.

    dcgan-train train --dataset mnist --arch dcgan --conditional --epochs 5 --out runs/mnist
    dcgan-train resume runs/mnist                         # continue after Ctrl-C or a crash
    dcgan-train export runs/mnist/checkpoints/last.pt --out models/mnist.onnx
    dcgan-train sample models/mnist.onnx --seed 7 --seed 0-15 --grid --out samples/
    dcgan-train evaluate models/mnist.onnx                # JSON scores against the test split
    torchrun --nproc_per_node 2 -m training train ...     # data-parallel (DDP)

Exit codes: 0 done, 1 failed (the message says why), 2 bad command line, 130 interrupted
(a checkpoint was saved; `resume` continues).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training.models import ARCHS

log = logging.getLogger("dcgan-train")


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="folder with the IDX files (or a <dataset>/ subfolder); default "
                        "$DCGAN_DATA_DIR, then Debian's folder, then the user cache")
    p.add_argument("--no-download", dest="download", action="store_false",
                   help="fail instead of downloading missing data from the public mirrors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcgan-train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    presets = "; ".join(f"{name}: {spec.summary}" for name, spec in ARCHS.items())
    t = sub.add_parser("train", parents=[common], help="start a training run",
                       description="Train a GAN. Flags left unset take the --arch preset's value. "
                                   f"Presets — {presets}")
    t.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist",
                   help="training data (default mnist)")
    _add_data_flags(t)
    t.add_argument("--arch", choices=list(ARCHS), default="dcgan",
                   help="architecture and hyper-parameter preset (default dcgan)")
    t.add_argument("--conditional", action="store_true",
                   help="class-conditional: G and D take the label, so callers can ask for a class")
    t.add_argument("--latent-dim", type=int, default=100, help="size of z (default 100)")
    t.add_argument("--g-width", type=int, help="base width of G (default: the preset's)")
    t.add_argument("--d-width", type=int, help="base width of D (default: the preset's)")
    length = t.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimiser steps to train for")
    length.add_argument("--epochs", type=float,
                        help="passes over the training split (default 1 when neither is given)")
    t.add_argument("--batch-size", type=int, help="images per step per process (preset)")
    t.add_argument("--optimizer", choices=["adam", "rmsprop"], help="optimiser (preset)")
    t.add_argument("--lr-g", type=float, help="generator learning rate (preset)")
    t.add_argument("--lr-d", type=float, help="discriminator learning rate (preset)")
    t.add_argument("--beta1", type=float, help="Adam beta1 (preset; 0.5 for dcgan)")
    t.add_argument("--beta2", type=float, help="Adam beta2 (preset; 0.999)")
    t.add_argument("--label-smoothing", type=float, default=0.0,
                   help="one-sided: D's target for real images is 1 minus this (default 0)")
    t.add_argument("--d-dropout", type=float, help="dropout in D (preset)")
    t.add_argument("--ema-decay", type=float,
                   help="decay of the EMA of G's weights that gets exported; 0 = off (preset)")
    t.add_argument("--train-subset", type=int, help="train on the first N images only")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CUDA (mixed precision) when torch sees a GPU, else CPU")
    t.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--seed", type=int, default=0,
                   help="run seed: same seed, same weights on CPU (default 0)")
    t.add_argument("--out", default="runs/dcgan", help="run directory (default runs/dcgan)")
    t.add_argument("--checkpoint-every", type=int, default=1000,
                   help="steps between checkpoints; one is also written at the end (default 1000)")
    t.add_argument("--sample-at", type=_int_list, default=[1, 200, 400, 600],
                   help="steps at which to save a 4x4 sample grid, besides each epoch's end "
                        "(default 1,200,400,600)")
    t.add_argument("--log-every", type=int, default=1,
                   help="steps between rows of metrics.csv (default 1: every iteration)")
    t.add_argument("--eval-every", type=int, default=0,
                   help="steps between quick FD evaluations that keep checkpoints/best.pt; 0 = "
                        "at each epoch's end, -1 = never (default 0)")
    t.add_argument("--eval-samples", type=int, default=2000,
                   help="generated images per quick evaluation (default 2000)")
    t.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events")
    t.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")

    r = sub.add_parser("resume", parents=[common], help="continue a run from its last checkpoint",
                       description="Continue RUN_DIR from checkpoints/last.pt with its saved "
                                   "config; reaches the same weights as an uninterrupted run.")
    r.add_argument("run_dir", help="the run directory given to `train --out`")
    r.add_argument("--steps", type=int, help="train to this total step count instead")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    e = sub.add_parser("export", parents=[common], help="write a checkpoint's generator as ONNX",
                       description="Export the generator (its EMA weights when kept) to ONNX "
                                   "with metadata, then run onnx.checker and a parity check "
                                   "against PyTorch; a failed check exits 1 and writes nothing.")
    e.add_argument("checkpoint", help="a checkpoint file, or a run directory (its last.pt)")
    e.add_argument("--out", required=True, help="the .onnx file to write")
    e.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the checker and parity checks (not recommended)")

    s = sub.add_parser("sample", parents=[common], help="write PNGs for seeds from a checkpoint or ONNX file",
                       description="Images for seeds through the versioned seed->latent rule: the "
                                   "same pixels as the service's Generate for the same seeds.")
    s.add_argument("model", help="a .onnx file, a checkpoint, or a run directory")
    s.add_argument("--seed", action="append", required=True, metavar="SEEDS",
                   help="seed, range or list: 7, 0-15, 3,9,20-22 (repeatable)")
    s.add_argument("--label", action="append", metavar="CLASS",
                   help="class for conditional models, by number or name: one for all seeds or "
                        "one per seed (repeatable); default seed mod 10")
    s.add_argument("--out", default="samples", help="output folder (default samples/)")
    s.add_argument("--grid", action="store_true", help="also write grid.png of all images")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu")

    v = sub.add_parser("evaluate", parents=[common], help="score a generator against the test split (JSON)",
                       description="Fréchet distance in the shipped classifier's feature space, "
                                   "classifier Inception Score, class coverage and (conditional) "
                                   "label accuracy. MODEL `real` scores the train split itself: "
                                   "the floor.")
    v.add_argument("model", help="a .onnx file, a checkpoint, a run directory, or `real`")
    v.add_argument("--samples", type=int, default=10000, help="images to score (default 10000)")
    v.add_argument("--dataset", choices=["mnist", "fashion-mnist"],
                   help="default: the model's own dataset")
    _add_data_flags(v)
    v.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    v.add_argument("--out", help="also write the JSON to this file")

    c = sub.add_parser("train-classifier", parents=[common], help="(re)build the evaluation classifier",
                       description="Train the small CNN whose features `evaluate` uses, and save "
                                   "it into the package's assets.")
    c.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    _add_data_flags(c)
    c.add_argument("--epochs", type=int, default=2)
    c.add_argument("--out", help="where to save (default: the package's assets folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure the user can act on says so in its message
        from training.loop import TrainingInterrupted
        if isinstance(exc, TrainingInterrupted):
            print(f"{exc}; resume with `dcgan-train resume`", file=sys.stderr)
            return 130
        log.debug("failure", exc_info=True)
        print(f"dcgan-train {args.command}: error: {exc}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "train":
        from training.config import TrainConfig
        from training.loop import train
        fields = {k: v for k, v in vars(args).items() if k not in ("command", "log_level")}
        run_dir = train(TrainConfig(**fields))
        print(run_dir)
    elif args.command == "resume":
        from training.loop import resume
        print(resume(args.run_dir, steps=args.steps, overrides={"progress": args.progress}))
    elif args.command == "export":
        from training.export import export
        print(json.dumps(export(args.checkpoint, args.out, verify=args.verify), indent=2))
    elif args.command == "sample":
        from service.contract import parse_seeds
        from training.sampling import sample
        written = sample(args.model, parse_seeds(args.seed), Path(args.out), args.label,
                         grid=args.grid, device=args.device)
        print(f"wrote {len(written)} files to {args.out}")
    elif args.command == "evaluate":
        from training.evaluation import evaluate
        scores = evaluate(args.model, n=args.samples, data_dir=args.data_dir,
                          dataset=args.dataset, device=args.device)
        text = json.dumps(scores, indent=2)
        if args.out:
            Path(args.out).write_text(text + "\n")
        print(text)
    elif args.command == "train-classifier":
        from training.evaluation import train_classifier
        report = train_classifier(args.dataset, args.data_dir, epochs=args.epochs,
                                  out=Path(args.out) if args.out else None)
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
