"""The core of a request, with no gRPC in it: validate -> latents -> run the model -> encode.

`await Generator.generate(model, request)` takes a model the edge resolved once
(`ModelRegistry.get`) and a plain `GenerationRequest`, and returns a `GenerationResult`; the
API modules convert their messages to and from these. It runs on the server's event loop: the
cheap steps run there, the model runs in its batcher, PNG encoding on a thread pool.
Problems are raised here, where they are detected, as `service.errors` exceptions whose
messages say what to fix.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import math
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from service.batching import Batcher
from service.contract import (LATENT_RULE, MAX_SEED, ContractError, ModelMetadata, interpolate,
                              labels_for, seed_to_latent, truncate, walk_labels)
from service.errors import InvalidRequest, ModelNotFound
from service.imaging import encode_png, make_grid
from service.runtime import OnnxGenerator

log = logging.getLogger(__name__)


class Format(enum.Enum):
    RAW = "raw"
    PNG = "png"
    PNG_GRID = "png_grid"


class Kind(enum.Enum):
    """Where a request's latents come from (the `kind` label of the images counter)."""
    SEED = "seed"
    INTERPOLATION = "interpolation"
    LATENT = "latent"


@dataclass
class Walk:
    """An interpolation: `frames` latents from seed `a`'s to seed `b`'s (contract rule v1)."""
    a: int
    b: int
    frames: int
    method: str = "slerp"


@dataclass
class GenerationRequest:
    seeds: Sequence[int] = ()
    labels: Sequence[int] = ()
    format: Format = Format.RAW
    timeout: float | None = None  # seconds left before the caller's deadline
    psi: float = 1.0                 # truncation, contract rule v1; 1 is none
    latents: bytes | np.ndarray | None = None  # instead of seeds: float32 [N, latent_dim]
    walk: Walk | None = None         # instead of seeds: an interpolation

    @property
    def kind(self) -> Kind:
        if self.walk is not None:
            return Kind.INTERPOLATION
        return Kind.LATENT if self.latents is not None and len(self.latents) else Kind.SEED


@dataclass
class GenerationResult:
    model: str
    version: str
    seeds: list[int]
    labels: np.ndarray | None       # int64 [N] for conditional models
    images: np.ndarray              # uint8 [N, 1, H, W], C-contiguous
    format: Format
    pngs: list[bytes] = field(default_factory=list)
    grid_png: bytes = b""
    grid_columns: int = 0
    kind: Kind = Kind.SEED
    psi: float = 1.0

    @property
    def latent_rule(self) -> str:
        """The latent-walk rule these images used, or "" for plain seeds."""
        return "" if self.kind is Kind.SEED and self.psi == 1.0 else LATENT_RULE


@dataclass
class ServedModel:
    name: str
    engine: Batcher
    is_default: bool

    @property
    def runner(self) -> OnnxGenerator:
        return self.engine.runner

    @property
    def metadata(self) -> ModelMetadata:
        return self.engine.runner.metadata


class ModelRegistry:
    """The loaded models by name; the first loaded is the default."""

    def __init__(self) -> None:
        self._models: dict[str, ServedModel] = {}

    def add(self, name: str, engine: Batcher) -> None:
        self._models[name] = ServedModel(name, engine, is_default=not self._models)

    def replace_with(self, other: "ModelRegistry") -> list[ServedModel]:
        """Serve `other`'s models from now on; returns the old ones (for closing later).

        One reference assignment, so every request sees either the old set or the new set;
        a request that already picked an old model finishes on it.
        """
        old = list(self._models.values())
        self._models = other._models
        return old

    def close(self) -> None:
        for model in self._models.values():
            model.engine.close()

    def get(self, name: str) -> ServedModel:
        if not name:
            return self.default
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFound(f"no model named {name!r}: this server serves "
                                f"{', '.join(self._models)} (or leave model empty for the "
                                "default)") from None

    @property
    def default(self) -> ServedModel:
        return next(iter(self._models.values()))

    def __iter__(self):
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)


class LatentCache:
    """The latent rows of the most recently asked seeds (contract rule v1), kept for reuse.

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


class Generator:
    """Turns validated requests into images with the registry's models.

    `encoder` runs PNG encoding (milliseconds for a big grid) off the event loop.
    """

    def __init__(self, registry: ModelRegistry, max_batch: int, encoder: Executor,
                 latent_cache: int = 4096):
        self.registry = registry
        self.max_batch = max_batch
        self.encoder = encoder
        self.latents = LatentCache(latent_cache)

    async def generate(self, model: ServedModel, request: GenerationRequest
                       ) -> GenerationResult:
        latents, seeds, labels = self.latents_for(model, request)
        images = await model.engine.generate(latents, labels, request.timeout)
        if request.format is Format.RAW:  # nothing to encode: the bytes go out as they are
            result = self.encode(model, seeds, labels, images, request.format)
        else:
            result = await asyncio.get_running_loop().run_in_executor(
                self.encoder, self.encode, model, seeds, labels, images, request.format,
                request.walk.frames if request.walk else 0)
        result.kind, result.psi = request.kind, request.psi
        return result

    # --- the steps, in order

    def latents_for(self, model: ServedModel, request: GenerationRequest
                    ) -> tuple[np.ndarray, list[int], np.ndarray | None]:
        """(latents float32 [N, D], the seeds or [], labels) for the request's kind, checked."""
        meta, where = model.metadata, f"model {model.name!r}"
        if request.walk is not None:
            walk = request.walk
            if not 2 <= walk.frames <= self.max_batch:
                raise InvalidRequest(f"{walk.frames} frames: ask for 2 to {self.max_batch}")
            self.check_seeds([walk.a, walk.b], 2)
            labels = walk_labels(walk.a, walk.b, walk.frames, request.labels, meta.num_classes,
                                 where)
            latents = interpolate(self.latents([walk.a], meta.latent_dim)[0],
                                  self.latents([walk.b], meta.latent_dim)[0], walk.frames,
                                  walk.method)
            seeds: list[int] = []
        elif request.latents is not None and len(request.latents):
            if len(request.seeds):
                raise InvalidRequest("send seeds or latents, not both")
            latents = _check_latents(request.latents, meta.latent_dim, self.max_batch)
            if meta.num_classes and not len(request.labels):
                raise ContractError(f"{where} is class-conditional: send one label for all "
                                    "latents or one per latent")
            labels = labels_for(range(len(latents)), request.labels, meta.num_classes, where)
            seeds = []
        else:
            seeds = self.check_seeds(request.seeds, self.max_batch)
            labels = labels_for(seeds, request.labels, meta.num_classes, where)
            latents = self.latents(seeds, meta.latent_dim)
        return truncate(latents, request.psi), seeds, labels

    @staticmethod
    def check_seeds(seeds: Sequence[int], max_batch: int) -> list[int]:
        # Count before copying: a hostile request may carry millions of seeds.
        if not len(seeds):
            raise InvalidRequest("seeds is empty: send at least one seed")
        if len(seeds) > max_batch:
            raise InvalidRequest(f"{len(seeds)} seeds in one request; this server allows at most "
                                 f"{max_batch}: split the request or use GenerateStream")
        seeds = seeds.tolist() if isinstance(seeds, np.ndarray) else list(seeds)
        for s in seeds:  # protobuf already bounds uint64; this guards direct callers
            if not 0 <= s <= MAX_SEED:
                raise InvalidRequest(f"seed {s} is outside 0..2**64-1")
        return seeds

    @staticmethod
    def encode(model: ServedModel, seeds: list[int], labels: np.ndarray | None,
               images: np.ndarray, fmt: Format, columns: int = 0) -> GenerationResult:
        result = GenerationResult(model.name, model.runner.metadata.version, seeds, labels,
                                  images, fmt)
        if fmt is Format.PNG:
            result.pngs = [encode_png(img[0]) for img in images]
        elif fmt is Format.PNG_GRID:  # an interpolation is one strip; seeds a near-square grid
            result.grid_columns = columns or math.ceil(math.sqrt(len(images)))
            result.grid_png = encode_png(make_grid(images, result.grid_columns))
        return result


def _check_latents(latents: bytes | np.ndarray, latent_dim: int, max_batch: int) -> np.ndarray:
    """float32 [N, latent_dim] from raw little-endian bytes or an array, checked."""
    if isinstance(latents, (bytes, bytearray, memoryview)):
        if len(latents) % (4 * latent_dim):
            raise InvalidRequest(f"latents: {len(latents)} bytes is not a whole number of "
                                 f"float32 vectors of {latent_dim} (send N x {latent_dim} x 4 "
                                 "bytes)")
        count = len(latents) // (4 * latent_dim)
        if count > max_batch:  # counted before anything is converted
            raise InvalidRequest(f"{count} latents in one request; this server allows at most "
                                 f"{max_batch}")
        array = np.frombuffer(latents, "<f4").reshape(count, latent_dim)
    else:
        array = np.asarray(latents)
        if array.ndim != 2 or array.shape[1] != latent_dim:
            raise InvalidRequest(f"latents have shape {list(array.shape)}: send "
                                 f"[N, {latent_dim}]")
        if len(array) > max_batch:
            raise InvalidRequest(f"{len(array)} latents in one request; this server allows at "
                                 f"most {max_batch}")
        array = array.astype(np.float32, copy=False)
    if not len(array):
        raise InvalidRequest("latents is empty: send at least one vector")
    if not np.isfinite(array).all():
        raise InvalidRequest("latents hold NaN or infinite values: send finite numbers")
    return np.ascontiguousarray(array)


def stream_chunks(seeds_total: int, chunk_size: int, max_batch: int, bytes_per_image: int,
                  max_message_bytes: int) -> int:
    """Images per streamed message: as asked (or max_batch), within max_batch and the size limit.

    PNG images are never larger than about raw size plus a few hundred bytes of headers, so
    the raw size with headroom bounds either format.
    """
    fits = max(1, int(max_message_bytes * 0.8) // (bytes_per_image + 512))
    return max(1, min(chunk_size or max_batch, max_batch, fits, seeds_total))
