#!/usr/bin/env bash
# How the bundled models and the preset comparison runs are trained, one run after another on
# one CPU thread (so a second core stays free for other work).
#
#   DATA=../shared/data RUNS=runs bash tools/train_models.sh default     # the bundled models
#   DATA=../shared/data RUNS=runs bash tools/train_models.sh comparison  # same-budget presets
set -euo pipefail
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs}
COMMON=(--data-dir "$DATA" --threads 1 --no-progress --checkpoint-every 500 --eval-samples 5000)

case "${1:-default}" in
  default)
    # The default MNIST model: class-conditional dcgan, 12 epochs (720k images). Trained
    # before the preset's D width became 48, so that is spelled out to reproduce it.
    dcgan-train train --dataset mnist --arch dcgan --conditional --d-width 64 --epochs 12 \
        --out "$RUNS/mnist-cond" "${COMMON[@]}"
    # Fashion-MNIST, the same recipe.
    dcgan-train train --dataset fashion-mnist --arch dcgan --conditional --d-width 64 --epochs 12 \
        --out "$RUNS/fashion-cond" "${COMMON[@]}"
    ;;
  comparison)
    # Each architecture, unconditional, for the same budget of 3 epochs (180k images), with
    # its own preset hyper-parameters; evaluated at every epoch's end.
    for arch in dcgan tf-dcgan mlp upsample-dcgan; do
      if [ -e "$RUNS/compare-$arch/config.json" ]; then
        echo "skipping $arch: $RUNS/compare-$arch exists (dcgan-train resume continues it)"
        continue
      fi
      dcgan-train train --dataset mnist --arch "$arch" --epochs 3 \
          --out "$RUNS/compare-$arch" "${COMMON[@]}"
      if [ "$arch" = dcgan ]; then  # the former D width 64 (the preset's until 48 won)
        dcgan-train train --dataset mnist --arch dcgan --d-width 64 --epochs 3 \
            --out "$RUNS/compare-dcgan-d64" "${COMMON[@]}"
      fi
    done
    # The shipped default's recipe (class-conditional dcgan) for the same 3 epochs, with the
    # preset's D width 48 and the shipped model's 64.
    for width in 48 64; do
      if [ ! -e "$RUNS/compare-dcgan-cond-d$width/config.json" ]; then
        dcgan-train train --dataset mnist --arch dcgan --conditional --d-width "$width" \
            --epochs 3 --out "$RUNS/compare-dcgan-cond-d$width" "${COMMON[@]}"
      fi
    done
    # And the presets given labels the same way, so conditional meets conditional.
    for arch in tf-dcgan upsample-dcgan mlp; do
      if [ ! -e "$RUNS/compare-$arch-cond/config.json" ]; then
        dcgan-train train --dataset mnist --arch "$arch" --conditional --epochs 3 \
            --out "$RUNS/compare-$arch-cond" "${COMMON[@]}"
      fi
    done
    ;;
  *) echo "usage: $0 default|comparison" >&2; exit 2 ;;
esac
