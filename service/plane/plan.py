"""A request in the data plane's terms, checked into a plan, and the result of running one.

    Request  the values as a door sent them (converted from its message, not yet checked)
    Plan     the request checked through the contract, every value in its canonical form, on
             the model it runs on; it names its result (`digest`) before anything runs
    Result   the images, and their encoding (`encode`)
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from service.contract import (LATENT_RULE, SEED_RULE, ContractError, as_frames, as_latents,
                              as_method, as_psi, as_seeds, labels_for, walk_labels)
from service.imaging import encode_gif, encode_png, make_grid
from service.plane.registry import ServedModel


class Format(enum.Enum):
    RAW = "raw"
    PNG = "png"            # one PNG per image
    PNG_GRID = "png_grid"  # one PNG of every image; a walk's is one strip
    GIF = "gif"            # one looping animated GIF, an image a frame


class Kind(enum.Enum):
    """Where a request's latents come from (the `kind` label of the images counter)."""
    SEED = "seed"
    INTERPOLATION = "interpolation"
    LATENT = "latent"


@dataclass(frozen=True)
class Walk:
    """An interpolation: `frames` latents from seed `a`'s to seed `b`'s (the walk rule)."""
    a: int
    b: int
    frames: int
    method: str = "slerp"


@dataclass
class Request:
    """One request, whichever door it came through; its deadline is the call's."""
    model: str = ""
    version: str = ""
    seeds: Sequence[int] = ()      # a list, an array, a range or SeedRanges: counted first
    labels: Sequence[int] = ()
    psi: float = 1.0
    latents: bytes | np.ndarray | None = None  # instead of seeds: float32 [N, latent_dim]
    walk: Walk | None = None                   # instead of seeds: an interpolation
    format: Format = Format.RAW


@dataclass
class Plan:
    """A checked request: the model it runs on and every value in its canonical form."""
    model: ServedModel
    kind: Kind
    seeds: list[int]
    labels: np.ndarray | None
    psi: float
    format: Format
    deadline: float | None              # time.perf_counter() after which nobody waits
    latents: np.ndarray | None = None   # the caller's own (Kind.LATENT)
    walk: Walk | None = None

    @property
    def latent_rule(self) -> str:
        """The latent-walk rule these images use, or "" for plain seeds."""
        return "" if self.kind is Kind.SEED and self.psi == 1.0 else LATENT_RULE

    @functools.cached_property
    def digest(self) -> str:
        """A name for the result: the pixels and their encoding depend on these values alone,
        so equal digests mean equal bytes (the image URLs' strong ETag)."""
        what = (self.seeds if self.kind is Kind.SEED else
                vars(self.walk) if self.walk else hashlib.sha256(self.latents).hexdigest())
        key = json.dumps([self.model.name, self.model.version, SEED_RULE, self.latent_rule,
                          self.format.value, self.kind.value, what,
                          None if self.labels is None else self.labels.tolist(), self.psi])
        return hashlib.sha256(key.encode()).hexdigest()[:32]


def make_plan(model: ServedModel, request: Request, max_images: int,
              deadline: float | None) -> Plan:
    """Check every value of `request` through the contract, for `model`."""
    meta, where = model.metadata, f"model {model.name!r}"
    psi = as_psi(request.psi)
    walk, latents, seeds = request.walk, None, []
    if walk is not None:
        walk = Walk(*as_seeds([walk.a, walk.b], 2), as_frames(walk.frames, max_images),
                    as_method(walk.method))
        kind = Kind.INTERPOLATION
        labels = walk_labels(walk.a, walk.b, walk.frames, request.labels, meta.num_classes,
                             where)
    elif request.latents is not None and len(request.latents):
        if len(request.seeds):
            raise ContractError("send seeds or latents, not both")
        kind = Kind.LATENT
        latents = as_latents(request.latents, meta.latent_dim, max_images)
        if meta.num_classes and not len(request.labels):
            raise ContractError(f"{where} is class-conditional: send one label for all "
                                "latents or one per latent")
        labels = labels_for(range(len(latents)), request.labels, meta.num_classes, where)
    else:
        kind = Kind.SEED
        seeds = as_seeds(request.seeds, max_images)
        labels = labels_for(seeds, request.labels, meta.num_classes, where)
    return Plan(model, kind, seeds, labels, psi, request.format, deadline, latents, walk)


@dataclass
class Result:
    model: str
    version: str
    kind: Kind
    seeds: list[int]
    labels: np.ndarray | None       # int64 [N] for conditional models
    images: np.ndarray              # uint8 [N, 1, H, W], C-contiguous
    format: Format
    psi: float
    latent_rule: str
    pngs: list[bytes] = field(default_factory=list)  # Format.PNG
    picture: bytes = b""            # Format.PNG_GRID or GIF
    grid_columns: int = 0


def encode(plan: Plan, images: np.ndarray) -> Result:
    """The result of `plan`, its images encoded as it asks."""
    result = Result(plan.model.name, plan.model.version, plan.kind, plan.seeds, plan.labels,
                    images, plan.format, plan.psi, plan.latent_rule)
    if plan.format is Format.PNG:
        result.pngs = [encode_png(img[0]) for img in images]
    elif plan.format is Format.PNG_GRID:  # a walk is one strip; seeds a near-square grid
        result.grid_columns = len(images) if plan.walk else math.ceil(math.sqrt(len(images)))
        result.picture = encode_png(make_grid(images, result.grid_columns))
    elif plan.format is Format.GIF:
        result.picture = encode_gif(images)
    return result
