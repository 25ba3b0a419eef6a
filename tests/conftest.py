"""Shared fixtures: small real data, a tiny generator trained and exported once per session,
and a real server on a free loopback port.

The committed subset in tests/data (2,000 train / 1,000 test images per dataset) is used
everywhere, so the suite runs the same on a fresh clone; tests that need the full sets use
`full_data_dir`, which is ../shared/data when present.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import sys
import time
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
def other_onnx(tmp_path_factory) -> Path:
    """A second unconditional tiny generator, trained from another seed: other pixels (another
    version of a model)."""
    from training.export import export
    from training.loop import train
    run = train(tiny_config(tmp_path_factory.mktemp("other-run"), seed=7))
    export(run, run / "model.onnx")
    return run / "model.onnx"


@pytest.fixture(scope="session")
def tiny_cond_onnx(tiny_cond_run) -> Path:
    from training.export import export
    out = tiny_cond_run / "model.onnx"
    export(tiny_cond_run, out)
    return out


@pytest.fixture(scope="session")
def server(tiny_onnx, tiny_cond_onnx):
    """A real server on 127.0.0.1 serving `cond` (default) and `plain`, metrics on a free port."""
    from service.process.config import ServeConfig
    from service.process.server import create_server
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


@pytest.fixture
def no_crash_logged(caplog):
    """Fails the test if the service logged an ERROR (a crash) while it ran."""
    caplog.set_level(logging.ERROR)
    yield
    crashes = [r for r in caplog.records if r.levelno >= logging.ERROR
               and r.name.startswith(("service", "dcgan-serve", "aiohttp", "grpc"))]
    assert not crashes, [r.getMessage() for r in crashes]


@contextlib.contextmanager
def long_queue(running, model: str = "plain"):
    """Three 1,024-seed Generate calls queued on `running` (a server of one image per run,
    `batch_max_images=1`), their runs under way: what a request sent now waits behind.
    Yields the model's runs histogram; on leaving, every one of those calls has finished."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from service.api.dcgan.v1 import generator_pb2 as pb
    from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
    runs = running.metrics.batch_size.labels(model=model,
                                             version=running.registry.get(model).version)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel, \
            ThreadPoolExecutor(3) as pool:
        stub = pb_grpc.GeneratorServiceStub(channel)
        big = pb.GenerateRequest(model=model, seeds=list(range(1024)))  # 1,024 runs each
        queued = [pool.submit(stub.Generate, big, timeout=120) for _ in range(3)]
        deadline = time.monotonic() + 30
        while runs._sum.get() < 8:  # the queue is being worked through
            assert time.monotonic() < deadline
            time.sleep(0.002)
        yield runs
        assert runs._sum.get() < 3 * 1024, "the queue was gone before the test was done"
        for future in queued:
            assert future.result().count == 1024


def python_env() -> dict:
    """Environment for subprocesses: this interpreter's packages, no progress bars."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable


# --- a test CA with server and client certificates (TLS and mutual TLS tests) -------------------

def _cert(name, issuer_key, issuer_name, key, ca=False, server=False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                          name)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(obj) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """ca.pem; server.pem/.key (for localhost and 127.0.0.1) and client.pem/.key signed by it;
    stranger.pem/.key, a client certificate from another CA."""
    from cryptography.hazmat.primitives.asymmetric import ec
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", ca_key, None, ca_key, ca=True)
    files = {"ca.pem": _pem(ca)}
    for who, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{who}.pem"] = _pem(_cert(who, ca_key, ca.subject, key, server=server))
        files[f"{who}.key"] = _pem(key)
    other_key = ec.generate_private_key(ec.SECP256R1())  # a client cert from another CA
    files["stranger.pem"] = _pem(_cert("stranger", other_key, None, other_key))
    files["stranger.key"] = _pem(other_key)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="session")
def tritonclient_grpc_python() -> str:
    """The Python of an environment with `tritonclient[grpc]`, made with the README's own
    install line in tests/artifacts (kept between runs): tritonclient.grpc wants a newer grpcio
    than the server pins, so users run it apart, as the tests do."""
    import re
    import subprocess
    readme = (ROOT / "README.md").read_text()
    [install] = re.findall(r"(python3 -m venv \.venv-triton .*)", readme)
    home = ROOT / "tests" / "artifacts"
    home.mkdir(parents=True, exist_ok=True)
    python = home / ".venv-triton" / "bin" / "python"
    if not python.exists():
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        made = subprocess.run(install, shell=True, cwd=home, env=env, capture_output=True,
                              text=True, timeout=600)
        assert made.returncode == 0, made.stderr[-2000:]
    return str(python)


#: The torch and torchvision pair whose wheels import together on these machines (x86_64,
#: Python 3.11): torchvision pins its exact torch, and the project's torch 2.13 CPU build has no
#: torchvision beside it. A CUDA build of ~5.5 GB, made once in tests/artifacts.
TORCHVISION_INSTALL = ("torch==2.14.1", "torchvision==0.29.1")


@pytest.fixture(scope="session")
def torchvision_python() -> str:
    """The Python of an environment with torchvision, for tests that check a file as
    torchvision's own loaders read it (kept between runs in tests/artifacts)."""
    import subprocess
    home = ROOT / "tests" / "artifacts" / ".venv-torchvision"
    python = home / "bin" / "python"
    if not (home / "ready").exists():
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        for step in ([sys.executable, "-m", "venv", "--clear", str(home)],
                     [str(python), "-m", "pip", "install", "-q", *TORCHVISION_INSTALL]):
            made = subprocess.run(step, env=env, capture_output=True, text=True, timeout=1500)
            assert made.returncode == 0, made.stderr[-2000:]
        (home / "ready").write_text("")
    return str(python)
