"""Generating images for seeds from a checkpoint or an exported ONNX file (`dcgan-train sample`).

An ONNX file runs through the service's own runner (`service.runtime.OnnxGenerator`), so the
PNGs written here are byte-for-byte what `Generate` returns for the same seeds and labels.
A checkpoint runs in torch with the same seed rule and the same post-processing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from service.contract import (interpolate, labels_for, psi_text, seed_to_latent,
                              seeds_to_latents, truncate, walk_labels)
from service.imaging import encode_png, make_grid, save_walk
from training import checkpoints
from training.data import DATASETS
from training.models import ARCHS, build_generator, to_uint8


class OnnxSource:
    def __init__(self, path: Path, device: str = "cpu"):
        from service.runtime import OnnxGenerator, RuntimeOptions
        self.model = OnnxGenerator(path, RuntimeOptions(device=device))
        meta = self.model.metadata
        self.dataset, self.arch = meta.dataset, meta.arch
        self.num_classes, self.latent_dim = meta.num_classes, meta.latent_dim

    def images_for(self, latents: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        return self.model.run(latents, labels)

    def generate(self, seeds: Sequence[int], labels: np.ndarray | None = None, batch: int = 500,
                 psi: float = 1.0):
        return _generate(self, seeds, labels, batch, psi)


class TorchSource:
    """A torch generator (from a checkpoint, or live in a training run) behind the same API."""

    def __init__(self, g: torch.nn.Module, dataset: str, arch: str, num_classes: int,
                 device: torch.device | str = "cpu"):
        self.g, self.dataset, self.arch = g, dataset, arch
        self.num_classes, self.latent_dim = num_classes, g.latent_dim
        self.device = torch.device(device)
        self.output_range = ARCHS[arch].output_range

    @torch.no_grad()
    def images_for(self, latents: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        was_training = self.g.training
        self.g.eval()
        z = torch.from_numpy(latents).to(self.device)
        y = torch.from_numpy(labels).to(self.device) if labels is not None else None
        images = to_uint8(self.g(z, y), self.output_range).cpu().numpy()
        self.g.train(was_training)
        return images

    def generate(self, seeds: Sequence[int], labels: np.ndarray | None = None, batch: int = 500,
                 psi: float = 1.0):
        return _generate(self, seeds, labels, batch, psi)

    @classmethod
    def from_checkpoint(cls, path: Path, device: str = "cpu") -> "TorchSource":
        state = checkpoints.load(path)
        cfg = state["config"]
        dev = torch.device("cuda" if device == "cuda" else "cpu")
        return cls(generator_from_checkpoint(state).to(dev), cfg["dataset"], cfg["arch"],
                   int(state["num_classes"]), dev)


def generator_from_checkpoint(state: dict) -> torch.nn.Module:
    """The generator to use from a checkpoint: the EMA weights when the run kept them."""
    cfg = state["config"]
    g = build_generator(cfg["arch"], int(cfg["latent_dim"]), int(state["num_classes"]),
                        int(cfg["g_width"]))
    g.load_state_dict(state["ema"] if state.get("ema") is not None else state["generator"])
    return g.eval()


def load_generator_source(model: str | Path, device: str = "cpu"):
    path = Path(model)
    if path.suffix == ".onnx":
        return OnnxSource(path, device)
    return TorchSource.from_checkpoint(path, device)


def _generate(source, seeds, labels, batch, psi=1.0):
    seeds = list(seeds)
    labels = labels_for(seeds, () if labels is None else labels, source.num_classes)
    out = []
    for i in range(0, len(seeds), batch):
        latents = truncate(seeds_to_latents(seeds[i:i + batch], source.latent_dim), psi)
        out.append(source.images_for(latents, None if labels is None else labels[i:i + batch]))
    return np.concatenate(out) if out else np.zeros((0, 1, 28, 28), np.uint8), labels


def resolve_labels(source, seeds: list[int], labels: list[str] | None) -> np.ndarray | None:
    """Labels from the command line, by number or class name, under the contract's label rule
    (none, one for all seeds, or one per seed)."""
    if not labels:
        return None
    names = DATASETS[source.dataset].class_names if source.num_classes else ()
    values = []
    for label in labels:
        if label in names:
            values.append(names.index(label))
        elif label.isdigit():
            values.append(int(label))
        else:
            raise ValueError(f"label {label!r} is not a class of {source.dataset}: use 0-"
                             f"{source.num_classes - 1} or one of {', '.join(names)}")
    return labels_for(seeds, values, source.num_classes, "this model")


def sample(model: str | Path, seeds: list[int], out_dir: Path, labels: list[str] | None = None,
           grid: bool = False, device: str = "cpu", psi: float = 1.0) -> list[Path]:
    """Write one PNG per seed (seed_<seed>[_label<k>][_psi<psi>].png) and, with `grid`,
    grid.png; `psi` < 1 truncates the latents (the contract's latent-walk rule)."""
    source = load_generator_source(model, device)
    label_array = resolve_labels(source, seeds, labels)
    images, used_labels = source.generate(seeds, label_array, psi=psi)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, seed in enumerate(seeds):
        suffix = f"_label{used_labels[i]}" if used_labels is not None else ""
        suffix += f"_psi{psi_text(psi)}" if psi != 1.0 else ""
        path = out_dir / f"seed_{seed}{suffix}.png"
        path.write_bytes(encode_png(images[i, 0]))
        written.append(path)
    if grid:
        path = out_dir / "grid.png"
        path.write_bytes(encode_png(make_grid(images)))
        written.append(path)
    return written


def interpolation(model: str | Path, a: int, b: int, frames: int, out_dir: Path,
                  method: str = "slerp", psi: float = 1.0, label: str | None = None,
                  device: str = "cpu", frame_ms: int = 80) -> list[Path]:
    """Walk from seed `a`'s latent to seed `b`'s in `frames` frames (the contract's rule):
    frame_<i>.png each, strip.png (one row) and interpolation.gif (looping). The first and last
    frames are the very images `sample` (and `Generate`) give for `a` and `b`.

    A conditional model takes one class for the whole walk: `label`, or the seeds' default
    class when both seeds have the same one. These models take a class number, not a mix of
    classes, so a walk between two classes is refused with a message saying so.
    """
    source = load_generator_source(model, device)
    given = [] if label is None else [label]
    if given and source.num_classes:
        given = resolve_labels(source, [a], given)  # a class number or name
    labels = walk_labels(a, b, frames, given, source.num_classes)
    latents = interpolate(seed_to_latent(a, source.latent_dim),
                          seed_to_latent(b, source.latent_dim), frames, method)
    return save_walk(source.images_for(truncate(latents, psi), labels), out_dir, frame_ms)

