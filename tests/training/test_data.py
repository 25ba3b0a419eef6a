"""The dataset loader: finding, verifying, parsing, and downloading over real HTTP on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import gzip
import http.server
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from training import data
from training.data import DATASETS, DatasetError, load_split, parse_idx


def test_subset_loads_with_labels_of_every_class(subset_dir):
    split = load_split("mnist", "train", subset_dir, download=False)
    assert split.images.shape == (2000, 28, 28) and split.images.dtype == np.uint8
    assert split.labels.shape == (2000,)
    assert set(np.unique(split.labels)) == set(range(10))
    test = load_split("fashion-mnist", "test", subset_dir, download=False)
    assert len(test) == 1000


def test_full_sets_verify_against_the_published_digests(full_data_dir):
    for name in DATASETS:
        split = load_split(name, "test", full_data_dir, download=False)
        assert len(split) == 10000


def _copy_subset(subset_dir: Path, tmp_path: Path, name="mnist") -> Path:
    folder = tmp_path / name
    shutil.copytree(subset_dir / name, folder)
    return folder


def test_missing_file_names_the_files_and_the_fix(subset_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DCGAN_CACHE_DIR", str(tmp_path / "cache"))
    folder = _copy_subset(subset_dir, tmp_path)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError) as err:
        load_split("mnist", "test", folder, download=False)
    assert "t10k-labels-idx1-ubyte" in str(err.value) and "--data-dir" in str(err.value)


def test_truncated_gzip_is_an_error_naming_the_file(subset_dir, tmp_path):
    folder = _copy_subset(subset_dir, tmp_path)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz.*truncated or corrupt"):
        load_split("mnist", "train", folder, download=False)


def test_corrupt_content_fails_the_checksum(subset_dir, tmp_path):
    folder = _copy_subset(subset_dir, tmp_path)
    path = folder / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[100] ^= 0xFF  # one flipped byte, still a well-formed IDX file
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DatasetError, match="SHA-256.*delete it and download again"):
        load_split("mnist", "train", folder, download=False)


def test_parse_idx_rejects_a_length_that_disagrees_with_the_header():
    header = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    assert parse_idx(header + bytes(2 * 784)).shape == (2, 28, 28)
    with pytest.raises(DatasetError, match="truncated"):
        parse_idx(header + bytes(784))
    with pytest.raises(DatasetError, match="not an IDX"):
        parse_idx(b"GIF89a")


def test_data_dir_may_hold_a_dataset_subfolder(subset_dir):
    # tests/data has mnist/ and fashion-mnist/ subfolders, like ../shared/data.
    assert load_split("fashion-mnist", "train", subset_dir, download=False).dataset == \
        "fashion-mnist"


# --- downloading from a real HTTP server on 127.0.0.1 ------------------------------------------

class _Mirror:
    """Serves a folder over HTTP on 127.0.0.1; can fail the first N requests or 404 everything."""

    def __init__(self, folder: Path, fail_first: int = 0, status: int = 500):
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(folder), **kw)

            def do_GET(self):
                mirror.requests.append(self.path)
                if len(mirror.requests) <= fail_first or status == 404:
                    self.send_error(status)
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def subset_spec(subset_dir, monkeypatch, tmp_path):
    """Make 'mnist' expect the subset's digests, so the real download code fetches the subset."""
    manifest = json.loads((subset_dir / "mnist" / "SUBSET.json").read_text())
    spec = dataclasses.replace(DATASETS["mnist"], sha256=manifest["sha256"])
    monkeypatch.setitem(DATASETS, "mnist", spec)
    monkeypatch.setenv("DCGAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DCGAN_DATA_DIR", raising=False)
    monkeypatch.setattr(data.time, "sleep", lambda s: None)  # no back-off waits in tests
    served = tmp_path / "served"
    served.mkdir()
    for gz in (subset_dir / "mnist").glob("*.gz"):
        shutil.copy(gz, served / gz.name)
    return served


def test_download_fetches_verifies_and_caches(subset_spec, tmp_path):
    mirror = _Mirror(subset_spec)
    try:
        split = load_split("mnist", "test", mirrors=(mirror.url,))
    finally:
        mirror.close()
    assert len(split) == 1000
    assert split.source == tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in split.source.iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    # A second load finds the cache and asks no mirror.
    assert len(load_split("mnist", "test", download=False)) == 1000


def test_download_retries_after_server_errors(subset_spec):
    mirror = _Mirror(subset_spec, fail_first=2)
    try:
        assert len(load_split("mnist", "test", mirrors=(mirror.url,))) == 1000
    finally:
        mirror.close()
    assert len(mirror.requests) == 4  # two failures, then both files


def test_download_moves_on_from_a_mirror_without_the_file(subset_spec):
    empty, good = _Mirror(subset_spec, status=404), _Mirror(subset_spec)
    try:
        assert len(load_split("mnist", "test", mirrors=(empty.url, good.url))) == 1000
    finally:
        empty.close()
        good.close()
    assert len(empty.requests) == 2  # one try per file: a 404 is not retried


def test_download_of_corrupt_data_fails_and_leaves_nothing(subset_spec, tmp_path, monkeypatch):
    (subset_spec / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not the labels"))
    mirror = _Mirror(subset_spec)
    try:
        with pytest.raises(DatasetError, match="(?s)could not download t10k-labels.*SHA-256"
                           ) as err:
            load_split("mnist", "test", mirrors=(mirror.url,))
        # One line per address, with how often it was tried, then what to do.
        assert str(err.value).count(mirror.url) == 1 and "(3 tries)" in str(err.value)
        assert str(err.value).rstrip().splitlines()[-1].startswith("Put the files")
    finally:
        mirror.close()
    assert not (tmp_path / "cache" / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    assert not list((tmp_path / "cache" / "mnist").glob("*.part"))


def test_mirror_from_environment(subset_spec, monkeypatch):
    mirror = _Mirror(subset_spec)
    monkeypatch.setenv("DCGAN_DATA_MIRROR", mirror.url)
    try:
        assert len(load_split("mnist", "test")) == 1000
    finally:
        mirror.close()
