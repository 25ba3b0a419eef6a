"""`dcgan-client dataset`: a served model's images written in MNIST's IDX format, read by
torchvision's own MNIST loader unmodified, the same bytes on every run, and finished, not
started again, after an interruption."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess

import numpy as np
import pytest

from service.client import GeneratorClient
from service.client import main as client_main
from tests.conftest import python_env

# torchvision.datasets.MNIST, as a user would call it: the folder, the split, no download.
LOAD = """
import json, sys, hashlib
from torchvision.datasets import MNIST
out = {}
for train in (True, False):
    ds = MNIST(sys.argv[1], train=train, download=False)
    out["train" if train else "test"] = {
        "n": len(ds), "targets": ds.targets.tolist(),
        "sha256": hashlib.sha256(ds.data.numpy().tobytes()).hexdigest()}
print(json.dumps(out))
"""


def _make(server, out, *extra) -> int:
    return client_main(["--address", f"127.0.0.1:{server.port}", "dataset", "--model", "cond",
                        "--per-class", "3", "--test-per-class", "2", "--out", str(out),
                        *extra])


def _files(out) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_torchvision_reads_the_dataset_and_sees_the_served_images(server, tmp_path,
                                                                  torchvision_python):
    assert _make(server, tmp_path / "d") == 0
    loaded = subprocess.run([torchvision_python, "-c", LOAD, str(tmp_path / "d")],
                            env={**python_env(), "PYTHONPATH": ""}, capture_output=True,
                            text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    got = json.loads(loaded.stdout)
    with GeneratorClient(f"127.0.0.1:{server.port}") as client:
        train = client.generate(range(30), model="cond")    # seeds 0..29, labels seed mod 10
        test = client.generate(range(30, 50), model="cond")
    assert got["train"]["n"] == 30 and got["test"]["n"] == 20
    assert got["train"]["targets"] == [s % 10 for s in range(30)]
    assert got["test"]["targets"] == [s % 10 for s in range(30, 50)]
    assert np.bincount(got["train"]["targets"]).tolist() == [3] * 10
    assert got["train"]["sha256"] == hashlib.sha256(train.tobytes()).hexdigest()
    assert got["test"]["sha256"] == hashlib.sha256(test.tobytes()).hexdigest()
    # The .gz files are the uncompressed ones, as MNIST's downloads are; the manifest names
    # what made them and every file's hash.
    raw = tmp_path / "d" / "MNIST" / "raw"
    assert gzip.decompress((raw / "train-images-idx3-ubyte.gz").read_bytes()) == \
        (raw / "train-images-idx3-ubyte").read_bytes()
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["spec"]["model"] == "cond"
    assert manifest["spec"]["seeds"] == {"train": {"start": 0, "count": 30},
                                         "test": {"start": 30, "count": 20}}
    assert manifest["files"] == {k.rsplit("/", 1)[1]: v for k, v in _files(tmp_path / "d")
                                 .items() if k.startswith("MNIST/raw/")}


def test_the_same_command_gives_the_same_bytes(server, tmp_path):
    assert _make(server, tmp_path / "a", "--psi", "0.7") == 0
    assert _make(server, tmp_path / "b", "--psi", "0.7") == 0
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _make(server, tmp_path / "c") == 0  # psi 1: other images, other bytes
    assert _files(tmp_path / "c") != _files(tmp_path / "a")


def test_an_interrupted_run_goes_on_where_it_stopped(server, tmp_path, monkeypatch):
    assert _make(server, tmp_path / "whole", "--chunk-size", "4") == 0
    real = GeneratorClient.generate_stream_responses
    streams = []

    def interrupted(self, *args, **kwargs):  # Ctrl-C after the second message of the stream
        streams.append(kwargs["start"])
        for i, response in enumerate(real(self, *args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt
            yield response

    monkeypatch.setattr(GeneratorClient, "generate_stream_responses", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _make(server, tmp_path / "again", "--chunk-size", "4")
    part = tmp_path / "again" / "MNIST" / "raw" / "train-images-idx3-ubyte.part"
    assert part.stat().st_size == 16 + 8 * 28 * 28  # two messages of 4 images, kept

    def recorded(self, *args, **kwargs):
        streams.append(kwargs["start"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GeneratorClient, "generate_stream_responses", recorded)
    assert _make(server, tmp_path / "again", "--chunk-size", "4") == 0
    assert _files(tmp_path / "again") == _files(tmp_path / "whole")
    # The second run asked only for what was missing: train from seed 8, then the test split.
    assert streams == [0, 8, 30]


def test_what_cannot_be_a_dataset_is_refused_with_the_reason(server, tmp_path, capsys):
    assert client_main(["--address", f"127.0.0.1:{server.port}", "dataset", "--model",
                        "plain", "--per-class", "2", "--out", str(tmp_path / "p")]) == 2
    assert "unconditional" in capsys.readouterr().err
    assert _make(server, tmp_path / "d") == 0
    assert _make(server, tmp_path / "d", "--start", "100") == 2  # another spec, same folder
    assert "made with other settings" in capsys.readouterr().err
