"""`dcgan-client dataset`: a labelled synthetic dataset from a served model, written in MNIST's
own IDX format, so a loader written for MNIST reads it unmodified (torchvision's included).

    dcgan-client dataset --model mnist --per-class 6000 --out synthetic/

    synthetic/MNIST/raw/train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
                        t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]
    synthetic/manifest.json

`torchvision.datasets.MNIST("synthetic")` loads it (`FashionMNIST/raw` for a Fashion-MNIST
model); the `.gz` files are the same bytes as MNIST's own downloads hold. The train split takes
the seeds from `--start`, K x N of them for K classes and N per class, and the test split the
K x M after them; each seed gets the server's default label (seed mod K), so every class has
exactly N (M) images, interleaved. The manifest names the model, its version, the seed and
latent rules, psi, the seed ranges and every file's SHA-256.

The images come from GenerateStream in order and are appended to `.part` files as they arrive.
Run the same command again after an interruption and it goes on after the last whole image;
the same command gives the same bytes every time (the gzip members carry no name or time).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

from service.api.dcgan.v1 import generator_pb2 as pb

#: The folder torchvision's dataset class looks in, by the model's dataset.
FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
#: IDX magic numbers: unsigned bytes, 3 dimensions (images) or 1 (labels).
IMAGES_MAGIC, LABELS_MAGIC = 0x0803, 0x0801
SPLITS = (("train", "train"), ("test", "t10k"))


def write_dataset(client, out: Path, per_class: int, test_per_class: int, model: str = "",
                  version: str = "", start: int = 0, psi: float | None = None,
                  chunk_size: int = 0, say=print) -> dict:
    """Write (or finish) the dataset in `out`; returns its manifest."""
    if per_class < 1 or test_per_class < 1:
        raise ValueError("--per-class and --test-per-class must be at least 1")
    info = client.stub.GetModelInfo(pb.GetModelInfoRequest(model=model, model_version=version),
                                    timeout=client.timeout, metadata=client.metadata)
    if not info.num_classes:
        raise ValueError(f"model {info.name!r} is unconditional: a labelled dataset needs a "
                         "class-conditional model")
    train, test = info.num_classes * per_class, info.num_classes * test_per_class
    spec = {"model": info.name, "version": info.version, "dataset": info.dataset,
            "seed_rule": info.seed_rule, "psi": 1.0 if psi is None else psi,
            "labels": "seed mod classes", "classes": list(info.class_names),
            "height": info.height, "width": info.width,
            "seeds": {"train": {"start": start, "count": train},
                      "test": {"start": start + train, "count": test}}}
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    if manifest is not None and manifest["spec"] != spec:
        raise ValueError(f"{out} holds a dataset made with other settings (its manifest.json): "
                         "pick another --out, or delete it to start again")
    if manifest is not None and manifest.get("complete"):
        say(f"{out} is already complete")
        return manifest
    raw = out / FOLDERS.get(info.dataset, "MNIST") / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    _write_json(manifest_path, {"spec": spec, "complete": False})
    latent_rules = set()
    for split, prefix in SPLITS:
        seeds = spec["seeds"][split]
        latent_rules |= _stream_split(client, info, raw / prefix, seeds["start"],
                                      seeds["count"], psi, chunk_size, say)
    files = {}
    for _, prefix in SPLITS:
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            final = raw / f"{prefix}-{kind}"
            Path(f"{final}.part").replace(final)
            _gzip(final)
            files.update({p.name: _sha256(p) for p in (final, Path(f"{final}.gz"))})
    manifest = {"spec": spec, "latent_rule": "".join(sorted(latent_rules)), "files": files,
                "complete": True}
    _write_json(manifest_path, manifest)
    say(f"wrote {out}: {spec['seeds']['train']['count']} train and "
        f"{spec['seeds']['test']['count']} test images of model {info.name} {info.version}")
    return manifest


def _stream_split(client, info, stem: Path, start: int, count: int, psi, chunk_size: int,
                  say) -> set[str]:
    """Append the split's images and labels to its `.part` files, after what they already
    hold whole; returns the latent rules the responses named."""
    images_path = Path(f"{stem}-images-idx3-ubyte.part")
    labels_path = Path(f"{stem}-labels-idx1-ubyte.part")
    size = info.height * info.width
    done = 0
    if images_path.exists() and labels_path.exists():
        done = min((images_path.stat().st_size - 16) // size, labels_path.stat().st_size - 8)
        done = max(done, 0)
    with open(images_path, "r+b" if done else "wb") as images, \
            open(labels_path, "r+b" if done else "wb") as labels:
        # The headers carry the final count: a loader reads them only once the files are whole.
        images.write(_header(IMAGES_MAGIC, count, info.height, info.width))
        labels.write(_header(LABELS_MAGIC, count))
        images.truncate(16 + done * size)
        labels.truncate(8 + done)
        images.seek(0, 2)
        labels.seek(0, 2)
        if done:
            say(f"{stem.name}: {done} of {count} images already written, going on")
        rules = set()
        if done == count:
            return rules
        stream = client.generate_stream_responses(
            start=start + done, count=count - done, model=info.name, version=info.version,
            chunk_size=chunk_size, format="raw", psi=psi)
        for response in stream:
            if len(response.labels) != response.count:
                raise ValueError(f"the server sent {response.count} images with "
                                 f"{len(response.labels)} labels")
            images.write(response.raw)
            labels.write(bytes(response.labels))
            images.flush()
            labels.flush()
            rules.add(response.latent_rule)
    return rules


def _header(magic: int, *dims: int) -> bytes:
    return b"".join(n.to_bytes(4, "big") for n in (magic, *dims))


def _gzip(path: Path) -> None:
    """`path`.gz, the same bytes every time: no file name, time 0, level 9."""
    with open(path, "rb") as source, open(f"{path}.gz", "wb") as target, \
            gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=target,
                          mtime=0) as packed:
        shutil.copyfileobj(source, packed)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, value: dict) -> None:
    part = path.with_suffix(".json.part")
    part.write_text(json.dumps(value, indent=2) + "\n")
    part.replace(path)
