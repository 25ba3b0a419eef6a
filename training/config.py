"""The one typed config of a training run: every knob, its default, and why.

`TrainConfig` is built from the CLI flags (`cli.py`); fields the user leaves unset take the
chosen architecture's preset (`models.ARCHS[arch].defaults`). The resolved config is written to
`RUN_DIR/config.json`, stored in every checkpoint, and summarised in the exported model's metadata.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from training.models import ARCHS


@dataclass
class TrainConfig:
    # --- what to train
    dataset: str = "mnist"            # mnist | fashion-mnist
    arch: str = "dcgan"               # dcgan | tf-dcgan | upsample-dcgan | mlp
    conditional: bool = False         # feed labels 0-9 to G and D, so callers can ask for a class
    latent_dim: int = 100             # size of z; the service reads it from the model metadata
    g_width: int | None = None        # arch-specific base width of G (None: the preset's)
    d_width: int | None = None        # arch-specific base width of D (None: the preset's)

    # --- how long
    steps: int | None = None          # optimiser steps; exclusive with epochs
    epochs: float | None = None       # passes over the training split (converted to steps)

    # --- optimisation (None: the preset's value)
    batch_size: int | None = None
    optimizer: str | None = None      # adam | rmsprop
    lr_g: float | None = None
    lr_d: float | None = None
    beta1: float | None = None        # 0.5 is the DCGAN paper's; Keras tutorials leave 0.9
    beta2: float | None = None
    label_smoothing: float = 0.0      # one-sided: D's target for real images is 1 - this
    d_dropout: float | None = None
    ema_decay: float | None = None    # 0 = off; an EMA of G's weights is what gets exported

    # --- where and how
    data_dir: str | None = None       # None: $DCGAN_DATA_DIR, Debian's folder, then the cache
    download: bool = True             # fetch missing data from the public mirrors
    train_subset: int | None = None   # train on the first N images only (smoke tests)
    device: str = "auto"              # auto | cpu | cuda; CUDA runs in mixed precision
    threads: int | None = None        # torch CPU threads (None: torch's default)
    seed: int = 0                     # every step's randomness derives from (seed, step, rank)
    out: str = "runs/dcgan"           # the run directory

    # --- reporting
    checkpoint_every: int = 1000      # steps between checkpoints (and one at the end)
    sample_at: list[int] = field(default_factory=lambda: [1, 200, 400, 600])  # + each epoch end
    log_every: int = 1                # steps between metric rows in metrics.csv
    eval_every: int = 0               # steps between quick FD evaluations (0 = at epoch ends
                                      # only when a classifier for the dataset ships; -1 = never)
    eval_samples: int = 2000          # images per quick evaluation
    tensorboard: bool = False         # also write TensorBoard event files to RUN_DIR/tb
    progress: bool = True             # tqdm progress bar with live losses
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
