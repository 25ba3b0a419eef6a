#!/usr/bin/env bash
# How the bundled models and the preset comparison runs are trained, one run after another on
# one CPU thread (so a second core stays free for other work).
#
#   DATA=../shared/data RUNS=runs bash tools/train_models.sh default     # the bundled models
#   DATA=../shared/data RUNS=runs bash tools/train_models.sh comparison  # same-budget presets
set -euo pipefail
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs}
COMMON=(--data-dir "$DATA" --threads 1 --no-progress --checkpoint-every 500 --eval-samples 10000)

case "${1:-default}" in
  default)
    # The bundled models: the class-conditional dcgan preset (the recipe of
    # docs/benchmarks/recipe-ablation.md) with TAC-GAN's class heads (issue #41's third
    # round), 16 epochs (960k images); MNIST's G keeps a fifth of AC-GAN's pull toward the
    # asked class (--aux-twin-weight 0.8, the fourth round), Fashion-MNIST's about a sixth,
    # with a slower EMA of G (the fifth round). Each ran beside another run.
    dcgan-train train --dataset mnist --arch dcgan --conditional --epochs 16 \
        --aux-class-weight 1 --aux-twin --aux-twin-weight 0.8 --out "$RUNS/mnist-v4" "${COMMON[@]}"
    dcgan-train train --dataset fashion-mnist --arch dcgan --conditional --epochs 16 \
        --aux-class-weight 1 --aux-twin --aux-twin-weight 0.84 --ema-decay 0.999 \
        --out "$RUNS/fashion-mnist-v4" "${COMMON[@]}"
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
    # The default recipe (class-conditional dcgan preset) for the same 3 epochs, and the
    # recipe before the ablation (Adam 2e-4, betas 0.5/0.999, EMA 0.999, constant rates).
    if [ ! -e "$RUNS/compare-dcgan-cond/config.json" ]; then
      dcgan-train train --dataset mnist --arch dcgan --conditional --epochs 3 \
          --out "$RUNS/compare-dcgan-cond" "${COMMON[@]}"
    fi
    if [ ! -e "$RUNS/compare-dcgan-cond-before/config.json" ]; then
      dcgan-train train --dataset mnist --arch dcgan --conditional --epochs 3 \
          --lr-g 2e-4 --lr-d 2e-4 --beta1 0.5 --beta2 0.999 --ema-decay 0.999 \
          --lr-schedule constant --out "$RUNS/compare-dcgan-cond-before" "${COMMON[@]}"
    fi
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
