"""The service's exceptions, raised where a problem is detected.

None of these know about gRPC: `doors/edge.py` maps them to status codes in one place
(`STATUS_FOR`), and anything not listed there becomes INTERNAL.
"""


class ServiceError(Exception):
    """Base class: the message is what the caller is told, so it says what to fix."""


class InvalidRequest(ServiceError):
    """The request is malformed or asks for something the model cannot do."""


class ModelNotFound(ServiceError):
    """The request names a model this server does not serve."""


class ModelLoadError(ServiceError):
    """A model file cannot be served: missing, unreadable, not ONNX, wrong shape or metadata."""


class DeviceUnavailable(ServiceError):
    """The requested execution device (e.g. CUDA) cannot be used here."""


class DeadlineExceeded(ServiceError):
    """The caller's deadline passed before the work could start."""


class ShuttingDown(ServiceError):
    """The server is draining before it stops; the caller should retry elsewhere."""


class Overloaded(ServiceError):
    """The server is at its limit of queued work; the caller should back off and retry."""



class NotAllowed(ServiceError):
    """The server is not set up to do what was asked (e.g. load a model without model
    control)."""
