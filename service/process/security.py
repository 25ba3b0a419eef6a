"""Transport security and authentication for the gRPC and HTTP ports.

* TLS / mutual TLS: `server_credentials(config)` builds grpc credentials, `http_ssl_context`
  the HTTP port's, from the same PEM files (`--tls-cert`, `--tls-key`, and `--tls-client-ca`
  to require client certificates).
* Bearer tokens: `BearerTokenInterceptor` refuses calls without `authorization: Bearer <token>`
  with UNAUTHENTICATED (HTTP's check is in `api_http`, with 401). Health checks stay open, so load balancers and Kubernetes probes
  work without credentials; they reveal only SERVING / NOT_SERVING.
"""

from __future__ import annotations

import hmac
import ssl
from pathlib import Path

import grpc

from service.process.config import ServeConfig
from service.errors import ServiceError

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


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


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        if details.method.startswith(OPEN_METHOD_PREFIXES):
            return await continuation(details)
        sent = dict(details.invocation_metadata or ()).get("authorization", "")
        handler = await continuation(details)
        if handler is None or hmac.compare_digest(sent.encode(), self._expected):  # constant time
            return handler
        return _refusal(handler)


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def deny(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "missing or wrong bearer token: send metadata "
                            "'authorization: Bearer <token>'")

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(deny, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
