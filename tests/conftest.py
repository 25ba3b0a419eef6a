"""Shared fixtures: small real data, a tiny generator trained and exported once per session,
and a real server on a free loopback port.

The committed subset in tests/data (2,000 train / 1,000 test images per dataset) is used
everywhere, so the suite runs the same on a fresh clone; tests that need the full sets use
`full_data_dir`, which is ../shared/data when present.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUBSET_DIR = ROOT / "tests" / "data"
FULL_DATA_DIR = ROOT.parent / "shared" / "data"

#: A tiny, fast generator: enough to check every mechanism, not to draw digits.
TINY = dict(g_width=8, d_width=16, batch_size=32, train_subset=512, eval_every=-1,
            progress=False, threads=1, checkpoint_every=1000, sample_at=[1])


@pytest.fixture(scope="session")
def subset_dir() -> Path:
    return SUBSET_DIR


@pytest.fixture(scope="session")
def full_data_dir() -> Path:
    if not (FULL_DATA_DIR / "mnist" / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"the full datasets are not at {FULL_DATA_DIR} (a fresh clone); the "
                    "committed subset covers the same code paths")
    return FULL_DATA_DIR


def tiny_config(out: Path, **overrides):
    from training.config import TrainConfig
    values = dict(TINY, data_dir=str(SUBSET_DIR), download=False, out=str(out), steps=30)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """An unconditional tiny dcgan run (30 steps on the subset)."""
    from training.loop import train
    return train(tiny_config(tmp_path_factory.mktemp("tiny-run")))


@pytest.fixture(scope="session")
def tiny_cond_run(tmp_path_factory) -> Path:
    """A class-conditional tiny dcgan run."""
    from training.loop import train
    return train(tiny_config(tmp_path_factory.mktemp("tiny-cond-run"), conditional=True))


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run) -> Path:
    from training.export import export
    out = tiny_run / "model.onnx"
    export(tiny_run, out)
    return out


@pytest.fixture(scope="session")
def tiny_cond_onnx(tiny_cond_run) -> Path:
    from training.export import export
    out = tiny_cond_run / "model.onnx"
    export(tiny_cond_run, out)
    return out


@pytest.fixture(scope="session")
def server(tiny_onnx, tiny_cond_onnx):
    """A real server on 127.0.0.1 serving `cond` (default) and `plain`, metrics on a free port."""
    from service.config import ServeConfig
    from service.server import create_server
    config = ServeConfig(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                         http_port=0,
                         models=(("cond", str(tiny_cond_onnx)), ("plain", str(tiny_onnx))),
                         device="cpu", max_batch=256)
    running = create_server(config)
    yield running
    running.stop(grace=1)


@pytest.fixture(scope="session")
def channel(server):
    import grpc
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


@pytest.fixture(scope="session")
def stub(channel):
    from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
    return pb_grpc.GeneratorServiceStub(channel)


def python_env() -> dict:
    """Environment for subprocesses: this interpreter's packages, no progress bars."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable
