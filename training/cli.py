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

from service.contract import as_psi
from service.settings import add_flags, argument_type, from_args
from training.config import TrainConfig
from training.models import ARCHS

log = logging.getLogger("dcgan-train")


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
    add_flags(t, TrainConfig)
    t.add_argument("--continue", dest="continue_run", action="store_true",
                   help="if --out already holds a checkpoint, continue that run from it (with "
                        "its saved config) instead of starting anew: what a worker restarted "
                        "by torchrun needs, so an elastic run loses only the steps since the "
                        "last checkpoint")

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
    s.add_argument("--seed", action="append", metavar="SEEDS",
                   help="seed, range or list: 7, 0-15, 3,9,20-22 (repeatable)")
    s.add_argument("--interpolate", nargs=2, type=int, metavar=("A", "B"),
                   help="instead of --seed: walk from seed A's latent to seed B's; writes "
                        "frame_*.png, strip.png and interpolation.gif")
    s.add_argument("--frames", type=int, default=16, help="frames of --interpolate (default 16)")
    s.add_argument("--method", choices=["slerp", "lerp"], default="slerp",
                   help="spherical (default) or linear interpolation")
    s.add_argument("--psi", type=argument_type(as_psi, "psi"), default=1.0,
                   help="truncation in (0, 1]: latents scaled toward the mean; 1 (default) is "
                        "none, smaller trades variety for quality")
    s.add_argument("--label", action="append", metavar="CLASS",
                   help="class for conditional models, by number or name: one for all seeds or "
                        "one per seed (repeatable); default seed mod 10")
    s.add_argument("--out", default="samples", help="output folder (default samples/)")
    s.add_argument("--grid", action="store_true", help="also write grid.png of all images")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu")

    v = sub.add_parser("evaluate", parents=[common], help="score a generator against the test split (JSON)",
                       description="Fréchet distance, Kernel Inception Distance and "
                                   "precision / recall in the shipped classifier's feature "
                                   "space, classifier Inception Score, class coverage and "
                                   "(conditional) label accuracy and Classification Accuracy "
                                   "Score; with --inception-weights also "
                                   "the conventional Inception FID and KID. MODEL `real` scores "
                                   "the train split itself: the floor.")
    v.add_argument("model", help="a .onnx file, a checkpoint, a run directory, or `real`")
    v.add_argument("--samples", type=int, default=10000, help="images to score (default 10000)")
    v.add_argument("--dataset", choices=["mnist", "fashion-mnist"],
                   help="default: the model's own dataset")
    _add_data_flags(v)
    v.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    v.add_argument("--out", help="also write the JSON to this file")
    v.add_argument("--psi", type=argument_type(as_psi, "psi"), default=1.0,
                   help="truncation in (0, 1] of the latents scored (default 1: none)")
    v.add_argument("--no-cas", dest="cas", action="store_false",
                   help="skip the Classification Accuracy Score of a conditional model (it "
                        "trains two small classifiers: about a minute at 10,000 samples)")
    v.add_argument("--inception-weights", metavar="PATH",
                   help="inception-2015-12-05.pt (the TorchScript FID Inception network of the "
                        "StyleGAN2-ADA metrics): also report the conventional Inception FID and "
                        "KID. Slow on a CPU (299x299 per image): use --device cuda where you can")

    c = sub.add_parser("train-classifier", parents=[common], help="(re)build the evaluation classifier",
                       description="Train the small CNN whose features `evaluate` uses, and save "
                                   "it into the package's assets.")
    c.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    _add_data_flags(c)
    c.add_argument("--epochs", type=int, default=2)
    c.add_argument("--out", help="where to save (default: the package's assets folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "sample":  # as are these: exit 2
        if bool(args.seed) == bool(args.interpolate):
            parser.error("sample needs --seed SEEDS or --interpolate A B (one of the two)")
        if args.interpolate and args.label and len(args.label) > 1:
            parser.error("--interpolate takes one --label for the whole walk")
        if args.interpolate and args.frames < 2:
            parser.error("--frames must be at least 2")
    if args.command == "train":  # a bad combination of flags is a bad command line: exit 2
        args.config = from_args(TrainConfig, args)
        try:
            args.config.validate()
        except ValueError as exc:
            parser.error(str(exc))
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
        from training import checkpoints
        from training.loop import resume, train
        out = Path(args.config.out)
        if args.continue_run and (out / "checkpoints" / checkpoints.LAST).is_file():
            print(resume(out, overrides={"progress": args.config.progress}))
        else:
            print(train(args.config))
    elif args.command == "resume":
        from training.loop import resume
        print(resume(args.run_dir, steps=args.steps, overrides={"progress": args.progress}))
    elif args.command == "export":
        from training.export import export
        print(json.dumps(export(args.checkpoint, args.out, verify=args.verify), indent=2))
    elif args.command == "sample":
        from service.contract import parse_seeds
        from training.sampling import interpolation, sample
        if args.interpolate:
            written = interpolation(args.model, *args.interpolate, args.frames, Path(args.out),
                                    args.method, args.psi,
                                    args.label[0] if args.label else None, args.device)
        else:
            written = sample(args.model, parse_seeds(args.seed), Path(args.out), args.label,
                             grid=args.grid, device=args.device, psi=args.psi)
        print(f"wrote {len(written)} files to {args.out}")
    elif args.command == "evaluate":
        from training.evaluation import evaluate
        scores = evaluate(args.model, n=args.samples, data_dir=args.data_dir,
                          dataset=args.dataset, device=args.device, psi=args.psi,
                          inception_weights=args.inception_weights, cas=args.cas)
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
