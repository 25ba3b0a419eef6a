"""The service's exceptions, raised where a problem is detected; the message says what to fix.

None knows a transport: the edge maps them to a gRPC status and its HTTP equivalent in one
place (`service/edge/call.py`, `STATUS_FOR`); anything else is INTERNAL. A few carry the HTTP
status that says more than their gRPC code's (`http_status`).
"""


class ServiceError(Exception):
    http_status = 0  # 0: the HTTP status of the gRPC code the edge maps this to


class InvalidRequest(ServiceError):
    """Malformed, or asks for something the model cannot do."""


class Unsupported(InvalidRequest):
    """A body this server cannot read at all (its media type)."""
    http_status = 415


class Unauthenticated(ServiceError):
    """No bearer token, or the wrong one."""


class ModelNotFound(ServiceError):
    """Names a model (or version) this server does not serve."""


class ModelLoadError(ServiceError):
    """A model file that cannot be served: missing, not ONNX, wrong shape or metadata."""


class DeviceUnavailable(ServiceError):
    """The execution device asked for (CUDA) cannot be used here."""


class NotAllowed(ServiceError):
    """The server is not set up for it (a load without --model-control explicit)."""


class DeadlineExceeded(ServiceError):
    """The caller's deadline passed before the work could start."""


class SlowBody(DeadlineExceeded):
    """The caller took longer to send its body than --read-timeout."""
    http_status = 408


class Overloaded(ServiceError):
    """At a limit of calls or queued work: back off and retry."""


class TooLarge(Overloaded):
    """Larger than any valid request."""
    http_status = 413


class ShuttingDown(ServiceError):
    """The server, or the model a call runs on, is going away: retry (elsewhere)."""
