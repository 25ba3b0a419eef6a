"""Score several generators with `evaluate` in one run and write the comparison table.

    python tools/compare_models.py --data-dir ../shared/data --samples 10000 \
        --out docs/model-comparison.md \
        dcgan=runs/compare-dcgan tf-dcgan=runs/compare-tf-dcgan ... shipped=models/mnist-dcgan.onnx

Each NAME=MODEL is a checkpoint, run directory (its best checkpoint) or ONNX file; the real
train split is always added as the floor. `--keep NAME` carries a row of the earlier table
(the --out file's JSON) whose checkpoints are gone, marked as such: its scores predate KID and
precision / recall. Every model is scored on the same seeds (0..N-1,
labels seed mod 10 for conditional ones) against the same test split with the same classifier.
Images seen and step compute come from each run's metrics.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.evaluation import evaluate  # noqa: E402


def run_figures(model: Path) -> dict:
    run = model if model.is_dir() else model.parent.parent
    metrics = run / "metrics.csv"
    if not metrics.is_file():
        return {}
    with metrics.open() as f:
        rows = list(csv.DictReader(f))
    return {"images_seen": int(rows[-1]["images_seen"]),
            "step_minutes": sum(float(r["seconds"]) for r in rows) / 60}


def resolve(model: str) -> Path:
    path = Path(model)
    if path.is_dir():
        best = path / "checkpoints" / "best.pt"
        return best if best.is_file() else path / "checkpoints" / "last.pt"
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", metavar="NAME=MODEL")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir")
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--out", required=True)
    parser.add_argument("--keep", action="append", default=[], metavar="NAME",
                        help="carry this row of the earlier JSON, unscored")
    args = parser.parse_args()

    earlier = {}
    if args.keep:
        earlier = {r["name"]: r for r in json.loads(Path(args.out).with_suffix(".json")
                                                    .read_text())}
    results = []
    for spec in args.models:
        name, _, model = spec.partition("=")
        path = resolve(model)
        scores = evaluate(str(path), n=args.samples, data_dir=args.data_dir, dataset=args.dataset)
        results.append({"name": name, "model": str(path), **run_figures(Path(model)), **scores})
        print(f"{name}: FD {scores['fd']:.2f}", flush=True)
    for name in args.keep:
        results.append({**earlier[name], "kept": True})
    real = evaluate("real", n=args.samples, data_dir=args.data_dir, dataset=args.dataset)
    results.append({"name": "real train images (floor)", "model": "real", **real})

    lines = ["| model | images seen | step compute (1 thread) | FD ↓ | KID ↓ (± std) | precision ↑ | "
             "recall ↑ | IS ↑ | class entropy | smallest class | requested class recognised |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        seen = f"{r['images_seen']:,}" if "images_seen" in r else "—"
        minutes = f"{r['step_minutes']:.1f} min" if "step_minutes" in r else "—"
        acc = f"{r['label_accuracy']:.1%}" if "label_accuracy" in r else "—"
        kid = f"{r['kid']:.2f} ± {r['kid_std']:.2f}" if "kid" in r else "—"
        precision = f"{r['precision']:.3f}" if "precision" in r else "—"
        recall = f"{r['recall']:.3f}" if "recall" in r else "—"
        name = f"{r['name']} (earlier run, see below)" if r.get("kept") else r["name"]
        lines.append(f"| {name} | {seen} | {minutes} | {r['fd']:.2f} | {kid} | {precision} | "
                     f"{recall} | {r['inception_score']:.2f} | {r['class_entropy']:.3f} | "
                     f"{r['min_class_share']:.1%} | {acc} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"Scored {time.strftime('%Y-%m-%d')} in one run: {args.samples:,} images per model (seeds "
        f"0..{args.samples - 1}), against the {args.dataset} test split, with the shipped "
        "classifier.\nCommand: `python tools/compare_models.py --data-dir DATA --samples "
        f"{args.samples} --out {args.out} " + " ".join(args.models)
        + "".join(f" --keep {k}" for k in args.keep) + "`\n\n" + "\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
