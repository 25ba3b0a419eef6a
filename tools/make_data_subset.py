"""Write the small real-data subsets committed under tests/data/ (for clones without the full sets).

    python tools/make_data_subset.py --data-dir ../shared/data --train 2000 --test 1000

Takes the first N images of each split (MNIST's and Fashion-MNIST's first images are already
well mixed across classes), writes them as gzipped IDX files with the same names as the full
sets, and a SUBSET.json manifest with the SHA-256 of each decompressed file, which the loader
verifies instead of the published digests.
"""

import argparse
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np

from training.data import DATASETS, _FILES, load_split


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default="tests/data")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    args = parser.parse_args()
    for name in DATASETS:
        folder = Path(args.out) / name
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {"dataset": name, "note": "first N images of each split of the full set",
                    "sha256": {}, "counts": {}}
        for split, n in (("train", args.train), ("test", args.test)):
            data = load_split(name, split, args.data_dir, download=False)
            for stem, array in zip(_FILES[split], (data.images[:n], data.labels[:n])):
                raw = idx_bytes(array)
                # mtime=0 keeps the .gz bytes stable between runs of this script.
                (folder / f"{stem}.gz").write_bytes(gzip.compress(raw, mtime=0))
                manifest["sha256"][stem] = hashlib.sha256(raw).hexdigest()
            manifest["counts"][split] = n
        (folder / "SUBSET.json").write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"wrote {folder}")


if __name__ == "__main__":
    main()
