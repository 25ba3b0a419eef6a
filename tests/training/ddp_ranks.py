"""Run `dcgan-train train` (under torchrun, or alone), then have every rank save the weights
it holds, so a test can compare the ranks with each other and with a single process:

    python -m torch.distributed.run --nproc_per_node 2 tests/training/ddp_ranks.py OUT -- FLAGS

Watches the real loop from outside: records the models `_train_step` is given, changes
nothing in it. With `--fixed-norm` (before `OUT`), every BatchNorm layer normalises with its
running statistics (a fixed affine map) instead of the batch's: then a rank's forward pass does
not depend on which other rows share its batch, and N ranks must match one process to float
rounding, so a sharding bug cannot hide in BatchNorm's per-rank noise.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

import training.loop as loop  # noqa: E402
from training.cli import main  # noqa: E402

seen = {}
step = loop._train_step


def _watched(models, *args, **kwargs):
    seen["models"] = models
    return step(models, *args, **kwargs)


def _fixed_norm(self, x):
    return torch.nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                          self.bias, False, 0.0, self.eps)


if __name__ == "__main__":
    if sys.argv[1] == "--fixed-norm":
        torch.nn.modules.batchnorm._BatchNorm.forward = _fixed_norm
        del sys.argv[1]
    out, flags = Path(sys.argv[1]), sys.argv[sys.argv.index("--") + 1:]
    loop._train_step = _watched
    code = main(["train", *flags])
    models = seen["models"]
    torch.save({"g": models.g.state_dict(), "d": models.d.state_dict()},
               out / f"rank{os.environ.get('RANK', '0')}.pt")
    sys.exit(code)
