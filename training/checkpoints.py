"""Checkpoint files: written atomically, read back with `weights_only=True`.

A checkpoint holds plain tensors and containers only (so the safe loader accepts it):
the resolved config, the step reached, G, D, the EMA generator, both optimisers and AMP scalers.
It is written to a temporary file and renamed over the old one, so a crash or Ctrl-C while
saving leaves the last good checkpoint in place.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

FORMAT = 1
LAST = "last.pt"
BEST = "best.pt"


def save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():  # a run directory: its latest checkpoint
        path = path / "checkpoints" / LAST
    if not path.is_file():
        folder = path.parent if path.parent.is_dir() else None
        found = sorted(p.name for p in folder.glob("*.pt")) if folder else []
        hint = (f"{folder} holds {', '.join(found)}" if found else
                "pass a run directory (its checkpoints/last.pt is used) or a .pt file")
        if path.name == BEST and LAST in found:
            hint += f" (best.pt is written only by an evaluation; {LAST} is the newest)"
        raise FileNotFoundError(f"no checkpoint at {path}: {hint}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint written by this version of dcgan-train")
    return state
