"""What this server runs on, said where an operator looks: the start-up log and the
`dcgan_build_info` metric; and a warning when grpcio is not the release the project pins.

Why grpcio gets a warning of its own: every newer release costs this server 25-37 % of its calls
(docs/benchmarks/grpcio-versions-cpu.md), and nothing else would tell. pip moves grpcio
silently: installing a client library beside the server (`tritonclient[grpc]` wants grpcio
>= 1.81.1) upgrades the server's grpcio with it, and every call gets slower.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from importlib import metadata

import grpc
import onnxruntime
from google import protobuf

#: The distribution whose requirements pin grpcio (pyproject.toml's `[project] name`).
DISTRIBUTION = "dcgan-digits"

#: The grpcio releases where a call got dearer, with what it costs from there on: measured on a
#: bare grpc.aio handler by bench/grpcio_versions.py, as ratios to the pinned release.
REGRESSIONS = (
    ((1, 80), "from 1.80 a lone caller gets 0.63-0.71x the calls/s (1.5-1.75x the CPU per "
              "call)"),
    ((1, 84), "from 1.84 eight concurrent callers get 0.67-0.75x (1.3-1.45x the CPU per call)"),
)
DOC = "docs/benchmarks/grpcio-versions-cpu.md"


def _release(version: str) -> tuple[int, ...]:
    """(1, 85, 4) from "1.85.4" or "1.86.0rc1": the numeric release, pre-release tags aside."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("rc")[0])[:3])


def pinned_grpcio() -> str | None:
    """The grpcio release the installed package requires exactly, or None when the package
    is run from a source tree that was never installed (no metadata to read it from)."""
    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return None
    for requirement in requirements:
        if m := re.fullmatch(r"grpcio\s*==\s*([\w.]+)", requirement.split(";")[0].strip()):
            return m[1]
    return None


@dataclass(frozen=True)
class BuildInfo:
    version: str
    python: str
    grpcio: str
    grpcio_pinned: str
    onnxruntime: str
    protobuf: str

    @classmethod
    def current(cls) -> BuildInfo:
        # The modules' own versions: what this process imported, whichever wheel brought it
        # (onnxruntime or onnxruntime-gpu).
        try:
            version = metadata.version(DISTRIBUTION)
        except metadata.PackageNotFoundError:
            version = "unknown"
        return cls(version=version, python=platform.python_version(),
                   grpcio=grpc.__version__, grpcio_pinned=pinned_grpcio() or "unknown",
                   onnxruntime=onnxruntime.__version__, protobuf=protobuf.__version__)

    def labels(self) -> dict[str, str]:
        """The metric's labels: `dcgan_build_info{grpcio!="1.78.2"}` finds a drifted server."""
        return dict(version=self.version, python=self.python, grpcio=self.grpcio,
                    grpcio_pinned=self.grpcio_pinned, onnxruntime=self.onnxruntime,
                    protobuf=self.protobuf)

    def describe(self) -> str:
        pin = ("pinned" if self.grpcio == self.grpcio_pinned
               else f"pinned {self.grpcio_pinned}")
        return (f"dcgan-digits {self.version}, grpcio {self.grpcio} ({pin}), onnxruntime "
                f"{self.onnxruntime}, protobuf {self.protobuf}, Python {self.python}")

    def grpcio_warning(self) -> str | None:
        """What running on another grpcio costs and how to fix it; None on the pinned one (or
        when the pin cannot be read)."""
        if self.grpcio_pinned == "unknown" or self.grpcio == self.grpcio_pinned:
            return None
        running = _release(self.grpcio)
        if running < _release(self.grpcio_pinned):
            cost = "an older release than the pin, which the tests do not run on"
        else:
            costs = [text for since, text in REGRESSIONS if running >= since]
            cost = "; ".join(costs) if costs else "a release not measured yet"
        pinned = self.grpcio_pinned
        return (f"grpcio {self.grpcio} is installed, not the {pinned} this service pins: "
                f"{cost} ({DOC}). Fix: pip install grpcio=={pinned} "
                f"grpcio-health-checking=={pinned} grpcio-reflection=={pinned} in the "
                f"server's environment, and give clients that need a newer grpcio "
                f"(tritonclient[grpc]) an environment of their own")
