"""TLS and mutual TLS for the gRPC and HTTP ports: `server_credentials(config)` builds grpc's
credentials, `http_ssl_context` the HTTP port's, from the same PEM files (`--tls-cert`,
`--tls-key`, and `--tls-client-ca` to require client certificates). Bearer tokens are the
edge's (`service/edge/call.py`).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from service.process.config import ServeConfig
from service.errors import ServiceError


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ServiceError(f"cannot read the {what} {path}: {exc.strerror}") from None


def server_credentials(config: ServeConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    key = _read(config.tls_key, "TLS key (--tls-key)")
    cert = _read(config.tls_cert, "TLS certificate (--tls-cert)")
    client_ca = _read(config.tls_client_ca, "client CA (--tls-client-ca)") \
        if config.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def http_ssl_context(config: ServeConfig) -> ssl.SSLContext | None:
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
        if config.tls_client_ca:
            context.load_verify_locations(config.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ServiceError(f"cannot use the TLS files (--tls-cert, --tls-key, "
                           f"--tls-client-ca): {exc}") from None
    return context
