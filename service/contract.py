"""What the training package and the service must agree on, in one place (numpy only), so a
seed gives the same pixels whichever one you ask: the seed -> latent rule and the latent-walk
rule (both versioned), the label rule, the canonical type of every request value (`as_*`,
`labels_for`: every door, the CLI and `evaluate` parse through these), the ONNX metadata keys
and the exported graphs' output encoding.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

# --- seed -> latent ---------------------------------------------------------------------------

#: Version 1 of the rule: for each seed, numpy's PCG64 bit generator seeded with that seed alone,
#: then `standard_normal(latent_dim, dtype=float32)`. Each seed has its own stream, so a seed's
#: latent (and so its image) never depends on the other seeds in a request.
SEED_RULE = "pcg64-standard-normal-float32/v1"

#: Seeds are uint64 on the wire; numpy's SeedSequence accepts any non-negative int.
MAX_SEED = 2**64 - 1


def seed_to_latent(seed: int, latent_dim: int) -> np.ndarray:
    """The latent vector for one seed under rule v1: float32, shape [latent_dim]."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed {seed} is outside 0..2**64-1")
    return np.random.Generator(np.random.PCG64(seed)).standard_normal(latent_dim, dtype=np.float32)


def seeds_to_latents(seeds: Iterable[int], latent_dim: int) -> np.ndarray:
    """Latents for many seeds, stacked: float32, shape [N, latent_dim], C-contiguous."""
    seeds = list(seeds)
    out = np.empty((len(seeds), latent_dim), dtype=np.float32)
    for row, seed in enumerate(seeds):
        out[row] = seed_to_latent(int(seed), latent_dim)
    return out


def default_labels(seeds: Iterable[int], num_classes: int) -> np.ndarray:
    """A seed's class when the caller gives none: seed mod classes (consecutive seeds cover
    every class evenly)."""
    return np.fromiter((int(s) % num_classes for s in seeds), dtype=np.int64)


# --- walking the latent space -----------------------------------------------------------------

#: Version 2 of the latent-walk rule, recorded in responses that use it:
#:  * interpolation from latent a to latent b in N frames at t_i = i / (N - 1), spherical
#:    (slerp: a·sin((1-t)Ω)/sin Ω + b·sin(tΩ)/sin Ω, Ω the angle between a and b; linear when
#:    sin Ω < 1e-6) or linear ((1-t)·a + t·b), computed in float64, rounded to float32 once;
#:    frame 0 is a and frame N-1 is b, bit for bit;
#:  * truncation by psi in (0, 1]: psi is first rounded to float32 (the type every door
#:    carries it in, see `as_psi`), then z' = mean + psi·(z - mean) with mean 0, the latents'
#:    own mean (standard normal), computed in float64 and rounded to float32 once; psi = 1
#:    returns z untouched.
#: v1 left psi's precision open, so a float64 0.8 and the float32 0.8 gave different pixels
#: for some seeds; v2 gives every door the float32's.
LATENT_RULE = "slerp-lerp-truncation/v2"
INTERPOLATIONS = ("slerp", "lerp")
#: 2**-150, half the smallest float32: psi must be above it, or its float32 is 0.
PSI_FLOOR = 2.0**-150


class ContractError(ValueError):
    """A request breaks a rule of this contract; the message says what to send instead."""


def as_psi(value) -> float:
    """psi's one canonical value, in (0, 1]: the float32 nearest `value` (what the dcgan proto
    and the V2 tensor carry: queries, JSON and command lines are rounded to it here, so every
    door truncates by the same number), as a Python float."""
    if value == 1:  # the default, on every call: no truncation
        return 1.0
    try:  # text and JSON numbers are read as a double first, as every JSON parser does
        sent = float(value)
        with np.errstate(over="ignore", under="ignore"):
            psi = float(np.float32(sent))
    except (TypeError, ValueError, OverflowError):
        raise ContractError(f"psi {value!r} is not a number: send one in (0, 1]") from None
    # As sent, then as carried: 1.00000001 is not in (0, 1] even if its float32 is, and
    # 5e-324 is, but its float32 is 0 (PSI_FLOOR: the largest value that rounds to 0).
    if not (0.0 < sent <= 1.0 and psi > 0.0):  # also refuses NaN
        raise ContractError(f"psi {value!r} is outside (0, 1] or rounds to 0 as a float32: 1 "
                            "is no truncation, smaller values trade variety for quality")
    return psi


def psi_text(psi: float) -> str:
    """The shortest decimal that reads back as this float32 psi ("0.8", not 0.800000011...)."""
    return str(np.float32(psi))


def as_method(value) -> str:
    """The walk's method: "slerp" or "lerp"."""
    if value not in INTERPOLATIONS:
        raise ContractError(f"unknown interpolation {value!r}: use slerp or lerp")
    return value


def as_frames(value, limit: int) -> int:
    """An interpolation's frame count: a whole number 2..limit, both ends included."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not 2 <= value <= limit:
        raise ContractError(f"{value!r} frames: ask for 2 to {limit}")
    return int(value)


def as_seeds(seeds: Sequence[int], limit: int) -> list[int]:
    """Seeds as a list of ints 0..2**64-1, 1 to `limit` of them, counted before any is read
    (a hostile request may carry millions, and `SeedRanges` may stand for billions)."""
    if not len(seeds):
        raise ContractError("seeds is empty: send at least one seed")
    if len(seeds) > limit:
        raise ContractError(f"{len(seeds)} seeds in one request; this server allows at most "
                            f"{limit}: split the request, or stream them (GenerateStream, "
                            "dcgan-client --stream)")
    seeds = seeds.tolist() if isinstance(seeds, np.ndarray) else [int(s) for s in seeds]
    for s in seeds:
        if not 0 <= s <= MAX_SEED:
            raise ContractError(f"seed {s} is outside 0..2**64-1")
    return seeds


def as_latents(latents, latent_dim: int, limit: int) -> np.ndarray:
    """Explicit latents as float32 [N, latent_dim], C-contiguous, finite, 1..limit rows: from
    raw little-endian float32 bytes (the dcgan proto) or an array (V2 tensors)."""
    if isinstance(latents, (bytes, bytearray, memoryview)):
        if len(latents) % (4 * latent_dim):
            raise ContractError(f"latents: {len(latents)} bytes is not a whole number of "
                                f"float32 vectors of {latent_dim} (send N x {latent_dim} x 4 "
                                "bytes)")
        array = np.frombuffer(latents, "<f4").reshape(-1, latent_dim)
    else:
        array = np.asarray(latents)
        if array.ndim != 2 or array.shape[1] != latent_dim:
            raise ContractError(f"latents have shape {list(array.shape)}: send "
                                f"[N, {latent_dim}]")
    if len(array) > limit:  # counted before anything is converted
        raise ContractError(f"{len(array)} latents in one request; this server allows at most "
                            f"{limit}")
    if not len(array):
        raise ContractError("latents is empty: send at least one vector")
    array = np.ascontiguousarray(array, np.float32)
    if not np.isfinite(array).all():
        raise ContractError("latents hold NaN or infinite values: send finite numbers")
    return array


def interpolate(a: np.ndarray, b: np.ndarray, frames: int, method: str = "slerp"
                ) -> np.ndarray:
    """float32 [frames, D] from latent `a` to latent `b` (each float32 [D]), the walk rule."""
    method = as_method(method)
    if frames < 2:
        raise ContractError(f"{frames} frames: an interpolation needs at least 2")
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    t = np.linspace(0.0, 1.0, frames)[:, None]
    path = (1 - t) * a64 + t * b64
    if method == "slerp":
        norms = np.linalg.norm(a64) * np.linalg.norm(b64)
        cos = np.clip(a64 @ b64 / norms, -1.0, 1.0) if norms else 1.0
        omega = np.arccos(cos)
        if np.sin(omega) >= 1e-6:
            path = (np.sin((1 - t) * omega) * a64 + np.sin(t * omega) * b64) / np.sin(omega)
    out = path.astype(np.float32)
    out[0], out[-1] = a, b  # the endpoints are the two latents themselves
    return out


def walk_labels(a: int, b: int, frames: int, labels: Sequence[int], num_classes: int,
                model: str = "this model") -> np.ndarray | None:
    """The label rule of an interpolation from seed `a` to seed `b`: one class for every frame,
    the one given or the two seeds' shared default; None for an unconditional model. The
    shipped conditional models take a class number, not a mix of two classes."""
    if not num_classes:
        return labels_for([a], labels, num_classes, model)  # refuses labels
    if len(labels) > 1:
        raise ContractError(f"{len(labels)} labels for an interpolation: send none or one; "
                            f"{model} takes one class, not a mix of two")
    if not len(labels) and a % num_classes != b % num_classes:
        raise ContractError(f"seeds {a} and {b} default to classes {a % num_classes} and "
                            f"{b % num_classes}; {model} takes one class, not a mix of two: "
                            "pass --label (one label in the API) to walk within one class")
    return np.full(frames, labels_for([a], labels, num_classes, model)[0], np.int64)


def truncate(latents: np.ndarray, psi: float) -> np.ndarray:
    """Latents moved toward the mean (0) by psi in (0, 1], the walk rule: psi is rounded to
    float32 first (`as_psi`), so a float64 0.8 and the float32 0.8 give the same latents."""
    psi = as_psi(psi)
    if psi == 1.0:
        return latents
    return (np.asarray(latents, np.float64) * psi).astype(np.float32)


def labels_for(seeds: Sequence[int], labels: Sequence[int], num_classes: int,
               model: str = "this model") -> np.ndarray | None:
    """The label rule: none (each seed its default), one for every seed, or one per seed;
    int64 [N] for a conditional model, None for an unconditional one."""
    if not num_classes:
        if len(labels):
            raise ContractError(f"{model} is not class-conditional: send no labels")
        return None
    if not len(labels):
        return default_labels(seeds, num_classes)
    if len(labels) not in (1, len(seeds)):  # counted before any label is looked at
        raise ContractError(f"{len(labels)} labels for {len(seeds)} seeds: send none, one for "
                            "all seeds, or one per seed")
    try:
        values = np.asarray(labels, dtype=np.int64)
    except OverflowError:  # past int64: surely not a class
        raise ContractError(f"labels past int64: {model} has classes 0..{num_classes - 1}"
                            ) from None
    bad = np.unique(values[(values < 0) | (values >= num_classes)])
    if bad.size:
        raise ContractError(f"labels {bad[:5].tolist()} out of range: {model} has classes "
                            f"0..{num_classes - 1}")
    return np.full(len(seeds), values[0]) if len(values) == 1 else values


# --- exported graph ---------------------------------------------------------------------------

INPUT_LATENT = "z"  # float32 [N, latent_dim]
INPUT_LABEL = "label"  # int64 [N], only in class-conditional models
OUTPUT_IMAGES = "images"  # uint8 [N, 1, H, W]
#: The graph scales, rounds, clips and casts itself: a server copies its output bytes as they are.
OUTPUT_ENCODING = "uint8-gray-nchw"
METADATA_FORMAT = "1"  # the layout below; bumped when a key changes meaning


class MetadataKey:
    """ONNX `metadata_props` keys the exporter writes and the service requires."""

    FORMAT = "dcgan.metadata_format"
    ARCH = "dcgan.arch"
    DATASET = "dcgan.dataset"
    LATENT_DIM = "dcgan.latent_dim"
    NUM_CLASSES = "dcgan.num_classes"  # 0 for unconditional models
    CLASS_NAMES = "dcgan.class_names"  # comma-separated, one per class
    IMAGE_SHAPE = "dcgan.image_shape"  # "1,28,28"
    OUTPUT_ENCODING = "dcgan.output_encoding"
    SEED_RULE = "dcgan.seed_rule"
    RUN_ID = "dcgan.run_id"
    VERSION = "dcgan.version"  # model version: the run id and training step
    TRAINED_STEPS = "dcgan.trained_steps"

    REQUIRED = (FORMAT, ARCH, DATASET, LATENT_DIM, NUM_CLASSES, IMAGE_SHAPE, OUTPUT_ENCODING,
                SEED_RULE, VERSION)


class MetadataError(ValueError):
    """An ONNX file lacks the metadata a server needs, or holds values it cannot use."""


@dataclass(frozen=True)
class ModelMetadata:
    """What a server needs to know about an exported generator, parsed from its metadata."""

    arch: str
    dataset: str
    latent_dim: int
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    version: str
    run_id: str
    trained_steps: int

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def to_props(self) -> dict[str, str]:
        """The `metadata_props` to write into an ONNX file."""
        key = MetadataKey
        return {key.FORMAT: METADATA_FORMAT, key.ARCH: self.arch, key.DATASET: self.dataset,
                key.LATENT_DIM: str(self.latent_dim), key.NUM_CLASSES: str(self.num_classes),
                key.CLASS_NAMES: ",".join(self.class_names),
                key.IMAGE_SHAPE: ",".join(str(d) for d in self.image_shape),
                key.OUTPUT_ENCODING: OUTPUT_ENCODING, key.SEED_RULE: SEED_RULE,
                key.RUN_ID: self.run_id, key.VERSION: self.version,
                key.TRAINED_STEPS: str(self.trained_steps)}

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> "ModelMetadata":
        """Parse and check metadata; raises MetadataError naming what is missing or wrong."""
        missing = [k for k in MetadataKey.REQUIRED if k not in props]
        if missing:
            raise MetadataError(
                f"missing metadata keys {missing}: export the model with `dcgan-train export`, "
                "which writes them")
        if props[MetadataKey.FORMAT] != METADATA_FORMAT:
            raise MetadataError(f"metadata format {props[MetadataKey.FORMAT]!r} is not "
                                f"{METADATA_FORMAT!r}: re-export with this version")
        if props[MetadataKey.SEED_RULE] != SEED_RULE:
            raise MetadataError(f"seed rule {props[MetadataKey.SEED_RULE]!r} is not the rule "
                                f"this version implements ({SEED_RULE!r})")
        if props[MetadataKey.OUTPUT_ENCODING] != OUTPUT_ENCODING:
            raise MetadataError(f"output encoding {props[MetadataKey.OUTPUT_ENCODING]!r} is not "
                                f"{OUTPUT_ENCODING!r}")
        try:
            latent_dim = int(props[MetadataKey.LATENT_DIM])
            num_classes = int(props[MetadataKey.NUM_CLASSES])
            shape = tuple(int(d) for d in props[MetadataKey.IMAGE_SHAPE].split(","))
            trained_steps = int(props.get(MetadataKey.TRAINED_STEPS, "0"))
        except ValueError as exc:
            raise MetadataError(f"non-numeric metadata value: {exc}") from None
        if latent_dim <= 0 or num_classes < 0 or len(shape) != 3 or min(shape) <= 0:
            raise MetadataError(f"implausible metadata: latent_dim={latent_dim}, "
                                f"num_classes={num_classes}, image_shape={shape}")
        names = tuple(n for n in props.get(MetadataKey.CLASS_NAMES, "").split(",") if n)
        if names and len(names) != num_classes:
            raise MetadataError(f"{len(names)} class names for {num_classes} classes")
        return cls(arch=props[MetadataKey.ARCH], dataset=props[MetadataKey.DATASET],
                   latent_dim=latent_dim, num_classes=num_classes, class_names=names,
                   image_shape=shape, version=props[MetadataKey.VERSION],
                   run_id=props.get(MetadataKey.RUN_ID, ""), trained_steps=trained_steps)


# --- seed lists on command lines --------------------------------------------------------------

#: One seed spec exactly as a URL takes it: N, N-M or a comma-separated list of those.
SEED_SPEC = r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$"


def seed_ranges(specs: Iterable[str]) -> list[tuple[int, int]]:
    """Seed specs as (first, last) pairs, inclusive, in order: "7", "0-15", "3,9,20-22"."""
    ranges = []
    for spec in specs:
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            try:
                first, last = int(lo), int(hi) if sep else int(lo)
            except ValueError:
                raise ContractError(f"bad seed {part!r}: use N, N-M or comma-separated lists"
                                    ) from None
            if first < 0 or last > MAX_SEED or last < first:
                raise ContractError(f"bad seed range {part!r}: seeds are 0..2**64-1, low to high")
            ranges.append((first, last))
    return ranges


def parse_seeds(specs: Iterable[str]) -> list[int]:
    """Seeds from command-line specs: "7", "0-15" (inclusive), "3,9,20-22"; order is kept."""
    return [seed for first, last in seed_ranges(specs) for seed in range(first, last + 1)]


class SeedRanges:
    """Seeds as inclusive (first, last) ranges: `len()` counts them without listing any, so a
    limit is checked before "0-9999999999" becomes a list (see `as_seeds`)."""

    def __init__(self, ranges: Iterable[tuple[int, int]]):
        self.ranges = list(ranges)

    def __len__(self) -> int:
        count = sum(last - first + 1 for first, last in self.ranges)
        if count > sys.maxsize:  # len() cannot say so: refused here, as as_seeds would
            raise ContractError(f"{count} seeds in one request: ask for fewer")
        return count

    def __iter__(self):
        for first, last in self.ranges:
            yield from range(first, last + 1)
