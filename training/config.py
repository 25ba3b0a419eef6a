"""The one typed config of a training run: every knob, its default, and why.

Each field is declared once with its default and help; `service.settings` makes the flags of
`dcgan-train train` and the table in docs/training.md from it. Fields left unset (None) take
the chosen architecture's preset (`models.ARCHS[arch].defaults`). The resolved config is written to
`RUN_DIR/config.json`, stored in every checkpoint, and summarised in the exported model's metadata.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from service.settings import setting
from training.models import ARCHS


P = "preset"  # shown as the default of a field whose None means "the --arch preset's value"


@dataclass
class TrainConfig:
    # --- what to train
    dataset: str = setting("mnist", "training data", choices=("mnist", "fashion-mnist"))
    arch: str = setting("dcgan", "architecture and hyper-parameter preset (docs/training.md)",
                        choices=tuple(ARCHS))
    conditional: bool = setting(False, "class-conditional: G and D take the label, so callers "
                                "can ask for a class")
    latent_dim: int = setting(100, "size of z; the service reads it from the model metadata")
    g_width: int | None = setting(None, "base width of G", shown_default=P)
    d_width: int | None = setting(None, "base width of D", shown_default=P)

    # --- how long (one of the two; neither: one epoch)
    steps: int | None = setting(None, "optimiser steps to train for")
    epochs: float | None = setting(None, "passes over the training split", shown_default="1")

    # --- optimisation (None: the preset's value)
    batch_size: int | None = setting(None, "images per step per process", shown_default=P)
    optimizer: str | None = setting(None, "optimiser", choices=("adam", "rmsprop"),
                                    shown_default=P)
    lr_g: float | None = setting(None, "generator learning rate", shown_default=P)
    lr_d: float | None = setting(None, "discriminator learning rate", shown_default=P)
    beta1: float | None = setting(None, "Adam beta1 (the DCGAN paper's 0.5; Keras leaves 0.9)",
                                  shown_default=P)
    beta2: float | None = setting(None, "Adam beta2", shown_default=P)
    label_smoothing: float = setting(0.0, "one-sided: D's target for real images is 1 minus "
                                     "this")
    d_dropout: float | None = setting(None, "dropout in D", shown_default=P)
    ema_decay: float | None = setting(None, "decay of the EMA of G's weights that gets "
                                      "exported; 0 = off", shown_default=P)
    aux_class_weight: float = setting(0.0, "AC-GAN (Odena et al., 2017): weight of a class "
                                      "loss from a classifier head on D's features, on real "
                                      "images for D and on fakes under their requested labels "
                                      "for G; 0 = off (conditional only). It trades variety "
                                      "for class fidelity: docs/benchmarks/recipe-ablation.md")
    aux_twin: bool = setting(False, "TAC-GAN (Gong et al., 2019): with --aux-class-weight, a "
                             "twin class head learns the classes of fakes and G works against "
                             "it, which wins back the variety AC-GAN costs; the bundled models "
                             "use it with weight 1")
    aux_twin_weight: float = setting(1.0, "with --aux-twin, the twin's term in G's loss as a "
                                     "share of the class term: 1 = TAC-GAN as published; "
                                     "below 1 keeps part of AC-GAN's pull toward the asked "
                                     "class (the bundled models: MNIST 0.8, Fashion-MNIST "
                                     "0.84)")
    lr_schedule: str | None = setting(None, "learning rates: constant, or linear (constant for "
                                      "the first half of the run, then down to 0)",
                                      choices=("constant", "linear"), shown_default=P)

    # --- where and how
    data_dir: str | None = setting(None, "folder with the IDX files (or a <dataset>/ "
                                   "subfolder)", shown_default="$DCGAN_DATA_DIR, Debian's "
                                   "folder, then the user cache")
    download: bool = setting(True, "download missing data from the public mirrors (off: fail "
                             "instead)")
    train_subset: int | None = setting(None, "train on the first N images only (smoke tests)",
                                       shown_default="all")
    device: str = setting("auto", "auto: CUDA (mixed precision) when torch sees a GPU, else "
                          "CPU", choices=("auto", "cpu", "cuda"))
    amp: bool = setting(True, "mixed precision on CUDA (bf16, or fp16 where bf16 is missing); "
                        "off: full fp32 as on a CPU")
    threads: int | None = setting(None, "torch CPU threads", shown_default="torch's choice")
    seed: int = setting(0, "run seed: every step's randomness derives from (seed, step, rank), "
                        "so the same seed gives the same weights on a CPU")
    out: str = setting("runs/dcgan", "the run directory")

    # --- reporting
    checkpoint_every: int = setting(1000, "steps between checkpoints (one is also written at "
                                    "the end)")
    sample_at: list[int] = setting([1, 200, 400, 600], "steps at which to save a 4x4 sample "
                                   "grid, besides each epoch's end (comma-separated)")
    log_every: int = setting(1, "steps between rows of metrics.csv")
    eval_every: int = setting(0, "steps between quick FD evaluations that keep "
                              "checkpoints/best.pt; 0 = at each epoch's end (when the dataset's "
                              "classifier ships), -1 = never")
    eval_samples: int = setting(2000, "generated images per quick evaluation. FD is biased "
                                "upward at small n and its noise can reorder close runs: compare "
                                "runs at one n, and choose recipes at 10000")
    tensorboard: bool = setting(False, "also write TensorBoard event files to RUN_DIR/tb")
    progress: bool = setting(True, "a progress bar with live losses")
    run_id: str = ""                  # set when the run starts: <arch>-<dataset>-<timestamp>

    def resolved(self) -> "TrainConfig":
        """A copy with the preset's values filled into every field left as None."""
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}: use one of {', '.join(ARCHS)}")
        values = dataclasses.asdict(self)
        for key, default in ARCHS[self.arch].defaults.items():
            if values.get(key) is None:
                values[key] = default
        cfg = TrainConfig(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        problems = []
        if self.steps is not None and self.epochs is not None:
            problems.append("give --steps or --epochs, not both")
        if self.steps is not None and self.steps <= 0:
            problems.append(f"--steps must be positive, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            problems.append(f"--epochs must be positive, got {self.epochs}")
        if self.batch_size is not None and self.batch_size <= 0:
            problems.append(f"--batch-size must be positive, got {self.batch_size}")
        if not 0.0 <= self.label_smoothing < 0.5:
            problems.append(f"--label-smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.d_dropout is not None and not 0.0 <= self.d_dropout < 1.0:
            problems.append(f"--d-dropout must be in [0, 1), got {self.d_dropout}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.aux_class_weight < 0:
            problems.append(f"--aux-class-weight must be >= 0, got {self.aux_class_weight}")
        if self.aux_class_weight and not self.conditional:
            problems.append("--aux-class-weight needs --conditional (it is about classes)")
        if not 0 <= self.aux_twin_weight <= 1:
            problems.append(f"--aux-twin-weight must be in [0, 1], got {self.aux_twin_weight}")
        if self.aux_twin_weight != 1 and not self.aux_twin:
            problems.append("--aux-twin-weight needs --aux-twin (it is the twin's share)")
        if self.aux_twin and not self.aux_class_weight:
            problems.append("--aux-twin needs --aux-class-weight (it is its twin head's weight)")
        if self.latent_dim <= 0:
            problems.append(f"--latent-dim must be positive, got {self.latent_dim}")
        if self.optimizer not in (None, "adam", "rmsprop"):
            problems.append(f"--optimizer must be adam or rmsprop, got {self.optimizer!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.checkpoint_every <= 0:
            problems.append("--checkpoint-every must be positive")
        if problems:
            raise ValueError("; ".join(problems))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def save(self, path: Path) -> None:
        path.write_text(self.to_json() + "\n")
