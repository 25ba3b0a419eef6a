"""The data plane: the models behind every door, each request's work done once.

A door only converts: its message becomes a `Request`, the `Result` its message. Here,
`prepare` resolves the model and checks every value through the contract into a `Plan`
(whose `digest` names the result before anything runs: the image URLs' ETag), and `run`
makes the latents, submits them to the model's batcher and encodes the images off the event
loop. The models' descriptions, versions, readiness, statistics and repository are asked of
it too. `call` is the edge's `CallRecord`: the plane reads its deadline and fills in what it
learns (model, version, kind, images, each step's time).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import hashlib
import json
import math
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Sequence

import numpy as np

from service.contract import (LATENT_RULE, SEED_RULE, ContractError, as_frames, as_latents,
                              as_method, as_psi, as_seeds, interpolate, labels_for,
                              seed_to_latent, truncate, walk_labels)
from service.edge.call import Admission
from service.edge.call import CallRecord
from service.edge.statistics import Statistics
from service.errors import DeadlineExceeded, ShuttingDown
from service.imaging import encode_gif, encode_png, make_grid
from service.plane.registry import ModelRegistry, ServedModel
from service.plane.repository import ModelRepository


# --- a request, its plan and its result ------------------------------------------------------

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
        """A name for the result: the pixels and their encoding depend on the model file's
        bytes and these values alone, so equal digests mean equal bytes (the image URLs'
        strong ETag), and a file replaced under the same name and version changes it."""
        what = (self.seeds if self.kind is Kind.SEED else
                vars(self.walk) if self.walk else hashlib.sha256(self.latents).hexdigest())
        key = json.dumps([self.model.generator.digest, SEED_RULE, self.latent_rule,
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


# --- the plane -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelDescription:
    """A served model as every door describes it (ListModels, GetModelInfo, /v1/models)."""
    name: str
    version: str
    run: str  # the file's training run and step
    arch: str
    dataset: str
    latent_dim: int
    num_classes: int
    class_names: list[str]
    height: int
    width: int
    execution_providers: list[str]
    seed_rule: str
    is_default: bool
    is_default_version: bool
    max_batch: int


class DataPlane:
    """`max_images` is the most images one request may ask for (`--max-batch`); `encoder`
    runs PNG and GIF encoding (milliseconds for a big grid) off the event loop."""

    def __init__(self, registry: ModelRegistry, repository: ModelRepository,
                 statistics: Statistics, admission: Admission, encoder: Executor,
                 max_images: int, latent_cache: int = 4096):
        self.registry = registry
        self.repository = repository
        self._statistics = statistics
        self._admission = admission
        self.encoder = encoder
        self.max_images = max_images
        self.latents = LatentCache(latent_cache)

    # --- the models ---------------------------------------------------------------------------

    def model(self, name: str, version: str, call: CallRecord) -> ServedModel:
        """The model a request names (empty: the default), recorded on the call."""
        model = self.registry.get(name, version)
        call.model, call.version = model.name, model.version
        return model

    def versions(self, name: str) -> list[str]:
        """The served versions of the model called `name`, its default first."""
        return [model.version for model in self.registry.versions(name)]

    def describe(self, model: ServedModel) -> ModelDescription:
        meta = model.metadata
        return ModelDescription(
            model.name, model.version, meta.version, meta.arch, meta.dataset, meta.latent_dim,
            meta.num_classes, list(meta.class_names), meta.image_shape[1],
            meta.image_shape[2], model.generator.providers, SEED_RULE, model.is_default,
            model.is_default_version, self.max_images)

    def ready(self, name: str = "", version: str = "") -> bool:
        """Whether the server (no name) or the named model takes inference calls: not while
        draining. An unknown model is ModelNotFound."""
        if name:
            self.registry.get(name, version)
        return not self._admission.draining

    def statistics(self, name: str, version: str, call: CallRecord) -> dict:
        """Triton's statistics of `name` at `version`: without a version every served version
        of it, without a name every served model; an unknown one is ModelNotFound."""
        served = [self.model(name, version, call)] if name else list(self.registry)
        if name and not version:
            served = self.registry.versions(served[0].name)
        return self._statistics.report([(model.name, model.version) for model in served])

    def index(self, ready_only: bool) -> list[dict]:
        return self.repository.index(ready_only)

    async def load(self, name: str) -> None:
        await asyncio.to_thread(self.repository.load, name)

    async def unload(self, name: str) -> None:
        await asyncio.to_thread(self.repository.unload, name)

    # --- inference ----------------------------------------------------------------------------

    async def infer(self, request: Request, call: CallRecord) -> Result:
        return await self.run(self.prepare(request, call), call)

    def prepare(self, request: Request, call: CallRecord) -> Plan:
        """Resolve and check `request` without running anything."""
        model = self.model(request.model, request.version, call)
        plan = make_plan(model, request, self.max_images, call.deadline)
        call.kind = plan.kind.value
        return plan

    async def run(self, plan: Plan, call: CallRecord) -> Result:
        with plan.model.batcher.calling():  # a retired model's batcher waits for it
            if plan.deadline is not None and time.perf_counter() >= plan.deadline:
                raise DeadlineExceeded("the request's timeout passed before generation "
                                       "started")
            started = time.perf_counter()
            latents = self._latents(plan)
            queued = time.perf_counter()
            images = await plan.model.batcher.submit(latents, plan.labels, plan.deadline, call)
            encoding = time.perf_counter()
            if plan.format is Format.RAW:  # nothing to encode: the bytes go out as they are
                result = encode(plan, images)
            else:
                result = await asyncio.get_running_loop().run_in_executor(
                    self.encoder, encode, plan, images)
        ended = time.perf_counter()
        call.ran = True
        call.images += len(images)
        call.input_s += queued - started
        call.output_s += ended - encoding
        if call.trace is not None:
            if not call.trace.handed_over:
                call.trace.handed_over = queued  # admission ends: into the queue
            if plan.format is not Format.RAW:
                call.trace.add("encode", encoding, ended, **{"dcgan.format": plan.format.value})
        return result

    async def stream(self, request: Request, max_chunk_bytes: int, chunk_images: int,
                     call: CallRecord) -> AsyncIterator[Result]:
        """A long run of seeds in chunks (`chunk_images`, or the most that fit
        `max_chunk_bytes`), each a request of its own on the model resolved once; the labels
        and the format are checked against the whole run before the first chunk."""
        model = self.model(request.model, request.version, call)
        if request.format not in (Format.RAW, Format.PNG):
            raise ContractError("GenerateStream returns RAW or PNG images; ask Generate for a "
                                "PNG grid")
        seeds, labels = request.seeds, request.labels
        if not len(seeds):
            raise ContractError("seeds is empty: send at least one seed")
        if len(labels) > 1:  # one per seed: counted against every seed before anything runs
            labels_for(seeds, labels, model.metadata.num_classes, f"model {model.name!r}")
        h, w = model.metadata.image_shape[1:]
        chunk = stream_chunks(len(seeds), chunk_images, self.max_images, h * w,
                              max_chunk_bytes)
        with model.batcher.calling():  # across the chunks: a retired model waits for it
            for start in range(0, len(seeds), chunk):
                part = replace(request, seeds=seeds[start:start + chunk],
                               labels=labels[start:start + chunk] if len(labels) > 1 else labels)
                plan = make_plan(model, part, self.max_images, call.deadline)
                call.kind = plan.kind.value
                try:
                    result = await self.run(plan, call)
                except ShuttingDown as exc:
                    raise ShuttingDown(f"{exc} ({start} of {len(seeds)} images were sent: "
                                       f"ask again for the seeds from {seeds[start]} on)"
                                       ) from None
                yield result

    def _latents(self, plan: Plan) -> np.ndarray:
        """float32 [N, latent_dim]: the seeds', the walk's or the caller's, truncated by psi."""
        dim = plan.model.metadata.latent_dim
        if plan.kind is Kind.INTERPOLATION:
            walk = plan.walk
            latents = interpolate(self.latents([walk.a], dim)[0], self.latents([walk.b], dim)[0],
                                  walk.frames, walk.method)
        elif plan.kind is Kind.LATENT:
            latents = plan.latents
        else:
            latents = self.latents(plan.seeds, dim)
        return truncate(latents, plan.psi)


class LatentCache:
    """The latent rows of the most recently asked seeds (the seed rule), kept for reuse.

    Making a seed's latent builds a fresh PCG64 stream, a large share of the event loop's own
    work per batch-1 call (docs/decisions.md), and callers ask for the same seeds again and
    again (a demo's seeds 0..63, a seed a user liked). Rows are read-only, so a cached row can
    be handed out without a copy. `size` 0 turns the cache off.
    """

    def __init__(self, size: int):
        self._row = (functools.lru_cache(maxsize=size)(_read_only_latent) if size
                     else _read_only_latent)

    def stats(self) -> tuple[int, int]:
        """(rows kept, hits so far); (0, 0) when the cache is off."""
        if not hasattr(self._row, "cache_info"):
            return 0, 0
        info = self._row.cache_info()
        return info.currsize, info.hits

    def __call__(self, seeds: list[int], latent_dim: int) -> np.ndarray:
        """float32 [N, latent_dim], C-contiguous, for `seeds` (already checked)."""
        if len(seeds) == 1:
            return self._row(seeds[0], latent_dim)[None]
        return np.stack([self._row(seed, latent_dim) for seed in seeds])


def _read_only_latent(seed: int, latent_dim: int) -> np.ndarray:
    latent = seed_to_latent(seed, latent_dim)
    latent.flags.writeable = False
    return latent


def stream_chunks(seeds_total: int, chunk_size: int, max_images: int, bytes_per_image: int,
                  max_message_bytes: int) -> int:
    """Images per streamed message: as asked (or max_images), within max_images and the size
    limit. PNG images are never larger than about raw size plus a few hundred bytes of
    headers, so the raw size with headroom bounds either format."""
    fits = max(1, int(max_message_bytes * 0.8) // (bytes_per_image + 512))
    return max(1, min(chunk_size or max_images, max_images, fits, seeds_total))
