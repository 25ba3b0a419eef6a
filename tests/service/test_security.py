"""TLS, mutual TLS and bearer tokens on 127.0.0.1, with a CA and certificates made by the test."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.client import GeneratorClient
from service.process.config import ServeConfig
from service.process.server import create_server


def _serve(tiny_onnx, **kw):
    if kw.get("tls_cert"):
        kw.setdefault("health_port", 0)  # TLS needs a port probes can reach
    return create_server(ServeConfig(host="127.0.0.1", port=0, metrics_port=-1, http_port=-1,
                                     models=(("m", str(tiny_onnx)),), **kw))


def _status(client: GeneratorClient) -> str:
    try:
        client.generate([1, 2])
        return "OK"
    except grpc.RpcError as err:
        return err.code().name


def test_tls_serves_encrypted_and_refuses_plaintext(pki, tiny_onnx):
    running = _serve(tiny_onnx, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"))
    address = f"127.0.0.1:{running.port}"
    try:
        with GeneratorClient(address, tls_ca=(pki / "ca.pem").read_bytes(), timeout=5) as c:
            assert c.generate([1, 2]).shape == (2, 28, 28)
        with GeneratorClient(address, timeout=2) as plain:
            assert _status(plain) == "UNAVAILABLE"
        with GeneratorClient(address, tls=True, timeout=2) as untrusted:  # system CAs only
            assert _status(untrusted) == "UNAVAILABLE"
    finally:
        running.stop(grace=0)


def test_mutual_tls_requires_a_client_certificate_from_the_ca(pki, tiny_onnx):
    running = _serve(tiny_onnx, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"),
                     tls_client_ca=str(pki / "ca.pem"))
    address, ca = f"127.0.0.1:{running.port}", (pki / "ca.pem").read_bytes()
    try:
        with GeneratorClient(address, tls_ca=ca, tls_cert=(pki / "client.pem").read_bytes(),
                             tls_key=(pki / "client.key").read_bytes(), timeout=5) as good:
            assert _status(good) == "OK"
        with GeneratorClient(address, tls_ca=ca, timeout=2) as anonymous:
            assert _status(anonymous) == "UNAVAILABLE"
        with GeneratorClient(address, tls_ca=ca, tls_cert=(pki / "stranger.pem").read_bytes(),
                             tls_key=(pki / "stranger.key").read_bytes(), timeout=2) as stranger:
            assert _status(stranger) == "UNAVAILABLE"
    finally:
        running.stop(grace=0)


def test_mutual_tls_server_answers_plaintext_probes_on_its_health_port(pki, tiny_onnx):
    """What Kubernetes' gRPC probes and the image's HEALTHCHECK need from a secure server: a
    plaintext port, no client certificate, with the health service and nothing else."""
    running = _serve(tiny_onnx, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"),
                     tls_client_ca=str(pki / "ca.pem"), health_port=0)
    try:
        assert running.health_port and running.health_port != running.port
        with grpc.insecure_channel(f"127.0.0.1:{running.health_port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for service in ("", "dcgan.v1.GeneratorService", "model/m"):
                assert health.Check(health_pb2.HealthCheckRequest(service=service),
                                    timeout=5).status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as err:  # nothing else is served there
                from service.api.dcgan.v1 import generator_pb2 as pb
                from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
                pb_grpc.GeneratorServiceStub(ch).Generate(pb.GenerateRequest(seeds=[1]),
                                                          timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # The dcgan-client health command, as the HEALTHCHECK runs it, exits 0.
        from service.client import main as client_main
        assert client_main(["--address", f"127.0.0.1:{running.health_port}", "--timeout", "5",
                            "health"]) == 0
        # The gRPC port itself still wants TLS and a client certificate.
        with GeneratorClient(f"127.0.0.1:{running.port}", timeout=2) as plain:
            assert _status(plain) == "UNAVAILABLE"
    finally:
        running.stop(grace=0)


def test_tls_without_a_health_port_is_refused_at_start(pki, tiny_onnx):
    """A TLS server with no plaintext health port could never be seen healthy by a probe or
    the image's HEALTHCHECK (which would probe the TLS port in plaintext): dcgan-serve says so
    and exits, configured as the image is, through the environment."""
    import subprocess

    from tests.conftest import PYTHON, python_env
    env = python_env() | {"DCGAN_TLS_CERT": str(pki / "server.pem"),
                          "DCGAN_TLS_KEY": str(pki / "server.key"), "DCGAN_HEALTH_PORT": "-1"}
    proc = subprocess.run([PYTHON, "-m", "service", "--port", "0", "--http-port", "-1",
                           "--metrics-port", "-1", "--model", f"m={tiny_onnx}"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "--tls-cert needs --health-port" in proc.stderr and "50052" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_plaintext_health_port_names_nothing_and_bounds_its_streams(pki, tiny_onnx):
    """That port asks for no token or certificate: an unknown name is a bare NOT_FOUND (the
    authenticated port lists the served names), and Watch streams beyond its limit are
    refused rather than held."""
    from service.process.server import MAX_HEALTH_CALLS
    running = _serve(tiny_onnx, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"),
                     health_port=0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.health_port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            with pytest.raises(grpc.RpcError) as err:
                health.Check(health_pb2.HealthCheckRequest(service="model/nope"), timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert "model/m" not in err.value.details()
            assert "GeneratorService" not in err.value.details()
            watches = [health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
                       for _ in range(MAX_HEALTH_CALLS)]
            for watch in watches:  # each held open, its first status read
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as err:
                next(health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for watch in watches:
                watch.cancel()
        # The authenticated (TLS) port still says which names exist.
        creds = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{running.port}", creds,
                                 options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
            with pytest.raises(grpc.RpcError) as err:
                health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="model/nope"), timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert "'model/m'" in err.value.details()
    finally:
        running.stop(grace=0)


def test_bearer_token_guards_every_rpc_but_health(tiny_onnx, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    running = _serve(tiny_onnx, auth_token_file=str(token_file))
    address = f"127.0.0.1:{running.port}"
    try:
        with GeneratorClient(address, token="s3cret-token", timeout=5) as good:
            assert _status(good) == "OK"
            assert sum(len(c) for c in good.generate_stream(start=0, count=20)) == 20
        for token in ("", "wrong"):
            with GeneratorClient(address, token=token, timeout=5) as bad:
                with pytest.raises(grpc.RpcError) as err:
                    bad.generate([1])
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "bearer token" in err.value.details()
                with pytest.raises(grpc.RpcError) as err:
                    list(bad.generate_stream(start=0, count=5))
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.RpcError):
                    bad.list_models()
        with grpc.insecure_channel(address) as ch:  # probes need no token
            check = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        running.stop(grace=0)


def test_client_cli_speaks_tls_and_tokens(pki, tiny_onnx, tmp_path, monkeypatch):
    from service.client import main
    token_file = tmp_path / "token"
    token_file.write_text("t0k")
    running = _serve(tiny_onnx, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"),
                     auth_token_file=str(token_file))
    try:
        base = ["--address", f"127.0.0.1:{running.port}", "--tls-ca", str(pki / "ca.pem")]
        assert main([*base, "--token-file", str(token_file), "generate", "--seed", "0-2",
                     "--out", str(tmp_path / "out")]) == 0
        assert len(list((tmp_path / "out").iterdir())) == 3
        assert main([*base, "info"]) == 1  # no token
    finally:
        running.stop(grace=0)
