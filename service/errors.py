"""The service's exceptions, raised where a problem is detected.

None of these know about a transport: the edge (`service/edge/call.py`, `STATUS_FOR`) maps
them to a gRPC status and its HTTP equivalent in one place; anything else is INTERNAL. A few
carry the HTTP status that says more than the gRPC code's (`http_status`).
"""


class ServiceError(Exception):
    """Base class: the message is what the caller is told, so it says what to fix."""

    http_status = 0  # 0: the HTTP status of the gRPC code the edge maps this to


class InvalidRequest(ServiceError):
    """The request is malformed or asks for something the model cannot do."""


class Unsupported(InvalidRequest):
    """A body this server cannot read at all (its media type)."""

    http_status = 415


class Unauthenticated(ServiceError):
    """The caller sent no bearer token, or the wrong one."""


class ModelNotFound(ServiceError):
    """The request names a model this server does not serve."""


class ModelLoadError(ServiceError):
    """A model file cannot be served: missing, unreadable, not ONNX, wrong shape or metadata."""


class DeviceUnavailable(ServiceError):
    """The requested execution device (e.g. CUDA) cannot be used here."""


class NotAllowed(ServiceError):
    """The server is not set up to do what was asked (e.g. load a model without model
    control)."""

    http_status = 409


class DeadlineExceeded(ServiceError):
    """The caller's deadline passed before the work could start."""


class SlowBody(DeadlineExceeded):
    """The caller took longer to send its request's body than the server waits."""

    http_status = 408


class Overloaded(ServiceError):
    """The server is at a limit of calls or queued work; back off and retry."""


class TooLarge(Overloaded):
    """A request larger than any valid one."""

    http_status = 413


class ShuttingDown(ServiceError):
    """The server, or the model a call runs on, is going away; retry (elsewhere)."""
