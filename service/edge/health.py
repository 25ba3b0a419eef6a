"""The standard gRPC health service (grpc.health.v1), as the edge serves it.

SERVING for "", dcgan.v1.GeneratorService and model/<name> once every model has loaded;
NOT_SERVING from the drain on. Check is open and never limited (`Admission`, call.py); an
unknown name is NOT_FOUND, which lists the names this server reports only where every caller
may see them (no bearer token set, and not the plaintext health port).
"""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2_grpc

from service.errors import ModelNotFound

SERVICE_NAME = health.SERVICE_NAME


def model_health_name(model: str) -> str:
    """The health-check service name of one model (grpc.health.v1 `service` field)."""
    return f"model/{model}"


class HealthServicer(health.aio.HealthServicer):
    def __init__(self, list_names: bool) -> None:
        super().__init__()
        self.names: list[str] = []
        self.list_names = list_names

    async def set(self, service: str, status) -> None:
        if service not in self.names:
            self.names.append(service)
        await super().set(service, status)

    async def Check(self, request, context):
        if request.service not in self.names:
            raise ModelNotFound(_unknown(request.service, self.names, self.list_names))
        return await super().Check(request, context)


class HealthPortServicer(health_pb2_grpc.HealthServicer):
    """The health-only port's face of the shared `HealthServicer`: the same statuses, and an
    unknown name is a bare NOT_FOUND (that port asks for no token or certificate)."""

    def __init__(self, shared: HealthServicer):
        self.shared = shared

    async def Check(self, request, context):
        if request.service not in self.shared.names:
            raise ModelNotFound(_unknown(request.service, [], False))
        return await self.shared.Check(request, context)

    async def Watch(self, request, context):
        return await self.shared.Watch(request, context)


def _unknown(service: str, names: list[str], list_names: bool) -> str:
    if not list_names:
        return "unknown service name"
    return (f"no health status for {service!r}: this server reports "
            f"{', '.join(map(repr, names))}")
