"""The datasets: finding, downloading, verifying and parsing MNIST and Fashion-MNIST IDX files.

Where a split is looked for, in order:
  1. `--data-dir` (or `$DCGAN_DATA_DIR`): the files directly in it, or in a `<dataset>/` folder;
  2. for Fashion-MNIST, Debian's `dataset-fashion-mnist` package (/usr/share/datasets/fashion-mnist);
  3. the user cache (`$DCGAN_CACHE_DIR`, else `$XDG_CACHE_HOME/dcgan-digits`, else ~/.cache/...).
If none has it, it is downloaded into the cache from the public mirrors (with retries and a
progress bar), unless downloading is turned off.

Every file is checked before use: the SHA-256 of its *decompressed* bytes against the published
digest (the .gz wrappers differ between mirrors, their contents do not), and the IDX header against
the file's length. A folder holding a smaller real subset carries a `SUBSET.json` manifest with
its own digests. Anything wrong is a `DatasetError` naming the file and what to do about it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    class_names: tuple[str, ...]
    mirrors: tuple[str, ...]
    # file stem -> SHA-256 of the decompressed IDX file
    sha256: dict[str, str]
    system_dirs: tuple[str, ...] = ()


_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        class_names=tuple(str(d) for d in range(10)),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        class_names=("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                     "sneaker", "bag", "ankle-boot"),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}


class DatasetError(RuntimeError):
    """A dataset file is missing, truncated or corrupt; the message says which and what to do."""


@dataclass(frozen=True)
class Split:
    """One split in memory: uint8 images [N, 28, 28] and int64 labels [N]."""

    dataset: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    source: Path

    def __len__(self) -> int:
        return len(self.labels)


def default_cache_dir() -> Path:
    if os.environ.get("DCGAN_CACHE_DIR"):
        return Path(os.environ["DCGAN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dcgan-digits"


def load_split(dataset: str, split: str, data_dir: str | os.PathLike | None = None,
               download: bool = True, mirrors: tuple[str, ...] | None = None) -> Split:
    """Find (or download), verify and parse one split of a dataset."""
    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}: use one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    spec = DATASETS[dataset]
    data_dir = data_dir or os.environ.get("DCGAN_DATA_DIR") or None
    cache = default_cache_dir() / dataset

    folder = _find_folder(spec, split, data_dir, cache)
    if folder is None:
        if not download:
            raise DatasetError(
                f"{dataset} {split} files {list(_FILES[split])} not found in "
                f"{_describe_search(spec, data_dir, cache)}; pass --data-dir to a folder that has "
                "them, or allow downloading")
        folder = cache
        for stem in _FILES[split]:
            _download(stem, spec, cache, mirrors or _mirrors_from_env() or spec.mirrors)

    images_stem, labels_stem = _FILES[split]
    manifest = _subset_manifest(folder)
    images = _read_idx(folder, images_stem, spec, manifest)
    labels = _read_idx(folder, labels_stem, spec, manifest)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{folder}: {images_stem} holds {images.shape} but {labels_stem} holds "
                           f"{labels.shape}; the two files are from different sets")
    if labels.max(initial=0) >= len(spec.class_names):
        raise DatasetError(f"{folder / labels_stem}: label {labels.max()} out of range")
    log.info("%s %s: %d images from %s%s", dataset, split, len(labels), folder,
             " (subset)" if manifest else "")
    return Split(dataset, split, images, labels.astype(np.int64), folder)


# --- finding ----------------------------------------------------------------------------------

def _candidates(spec: DatasetSpec, data_dir, cache: Path) -> list[Path]:
    out: list[Path] = []
    if data_dir:
        out += [Path(data_dir), Path(data_dir) / spec.name]
    out += [Path(d) for d in spec.system_dirs]
    out.append(cache)
    return out


def _describe_search(spec: DatasetSpec, data_dir, cache: Path) -> str:
    return ", ".join(str(p) for p in _candidates(spec, data_dir, cache))


def _file_in(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _find_folder(spec: DatasetSpec, split: str, data_dir, cache: Path) -> Path | None:
    for folder in _candidates(spec, data_dir, cache):
        if all(_file_in(folder, stem) for stem in _FILES[split]):
            return folder
    return None


def _subset_manifest(folder: Path) -> dict | None:
    path = folder / "SUBSET.json"
    return json.loads(path.read_text()) if path.is_file() else None


# --- verifying and parsing --------------------------------------------------------------------

def _decompressed_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        # By content, not name: downloads arrive as `.gz.part`, and some mirrors and packages
        # store the files uncompressed.
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{path} cannot be read ({exc}): it is truncated or corrupt; delete it "
                           "so it is downloaded again, or replace it") from None


def _read_idx(folder: Path, stem: str, spec: DatasetSpec, manifest: dict | None) -> np.ndarray:
    path = _file_in(folder, stem)
    if path is None:
        raise DatasetError(f"{folder / stem}(.gz) is missing")
    raw = _decompressed_bytes(path)
    expected = manifest["sha256"].get(stem) if manifest else spec.sha256[stem]
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected:
        raise DatasetError(
            f"{path}: SHA-256 of the decompressed data is {actual[:12]}…, expected "
            f"{str(expected)[:12]}… ({'subset manifest' if manifest else 'published digest'}); "
            "the file is corrupt, truncated or from another dataset: delete it and download again")
    return parse_idx(raw, path)


def parse_idx(raw: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """Parse an IDX file of unsigned bytes (the only type MNIST uses), checking its length."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated inside its header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DatasetError(f"{path} holds {len(raw)} bytes but its header {dims} needs {expected}:"
                           " the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


# --- downloading ------------------------------------------------------------------------------

def _mirrors_from_env() -> tuple[str, ...]:
    value = os.environ.get("DCGAN_DATA_MIRROR", "")
    return tuple(m if m.endswith("/") else m + "/" for m in value.split(",") if m)


def _download(stem: str, spec: DatasetSpec, dest: Path, mirrors: tuple[str, ...],
              attempts: int = 3, timeout: float = 30.0) -> Path:
    """Fetch `stem.gz` into `dest`, verify its decompressed digest, then move it into place."""
    from tqdm import tqdm

    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"{stem}.gz"
    # A name of its own: the ranks of a multi-node run may download into one shared folder at
    # once, and each verified file lands whole (os.replace) whichever comes last.
    partial = dest / f"{stem}.gz.{socket.gethostname()}-{os.getpid()}.part"
    errors: dict[str, tuple[int, Exception]] = {}  # url -> (tries, the last error)
    for mirror in mirrors:
        url = f"{mirror}{stem}.gz"
        for attempt in range(1, attempts + 1):
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp, open(partial, "wb") as f:
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=f"{spec.name}/{stem}",
                              leave=False) as bar:
                        while chunk := resp.read(1 << 16):
                            f.write(chunk)
                            bar.update(len(chunk))
                digest = hashlib.sha256(_decompressed_bytes(partial)).hexdigest()
                if digest != spec.sha256[stem]:
                    raise DatasetError(f"it served data whose SHA-256 is {digest[:12]}…, "
                                       f"expected {spec.sha256[stem][:12]}…")
                os.replace(partial, target)
                log.info("downloaded %s", url)
                return target
            except (urllib.error.URLError, OSError, DatasetError) as exc:
                errors[url] = (attempt, exc)
                log.warning("download failed: %s (try %d): %s", url, attempt, exc)
                partial.unlink(missing_ok=True)
                if isinstance(exc, urllib.error.HTTPError) and exc.code == 404:
                    break  # this mirror does not have it; retrying will not help
                if attempt < attempts:
                    time.sleep(0.5 * 2 ** (attempt - 1))
    tried = "".join(f"\n  {url}: {exc} ({tries} {'try' if tries == 1 else 'tries'})"
                    for url, (tries, exc) in errors.items())
    raise DatasetError(f"could not download {stem}.gz for {spec.name}:{tried}\nPut the files "
                       f"in a folder and pass --data-dir, or into {dest}")
