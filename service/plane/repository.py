"""The model repository: a folder of models as Triton lays it out (NAME/VERSION/model.onnx, the
highest version a name's default), and, under explicit model control, loading and unloading
them while the server serves.

A load builds every version's batcher beside the served models, then swaps the registry in
one assignment (no call waits; a file that cannot be served changes nothing). An unload swaps
the name out, then closes it once its calls have finished (at most the drain time); a reload
(SIGHUP) does both for every served model. They block: the plane runs them on a thread.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from service.errors import ModelLoadError, ModelNotFound, NotAllowed
from service.plane.batching import Batcher
from service.plane.registry import ModelRegistry

MODEL_FILE = "model.onnx"


def build_registry(paths: list[tuple[str, str, Path]], build: Callable[[str, str, Path], Batcher],
                   default_name: str | None = None) -> ModelRegistry:
    """A registry of every (name, version, file), each batcher built and warmed; if one fails,
    those already built are closed (no worker threads are left behind) and it raises."""
    registry = ModelRegistry(default_name)
    try:
        for name, version, path in paths:
            registry.add(name, build(name, version, path), version)
    except BaseException:
        registry.close()
        raise
    return registry


def repository_models(folder: Path) -> dict[str, list[tuple[str, Path]]]:
    """name -> [(version, file)], the highest version first, of what `folder` holds. A version
    folder's name is a number, as Triton reads it: "007" is version "7"."""
    found = {}
    for model in sorted(p for p in folder.iterdir() if p.is_dir()):
        versions = {str(int(v.name)): v / MODEL_FILE for v in sorted(model.iterdir())
                    if v.is_dir() and v.name.isdigit() and (v / MODEL_FILE).is_file()}
        if versions:
            found[model.name] = sorted(versions.items(), key=lambda item: -int(item[0]))
    return found


class ModelRepository:
    def __init__(self, folder: Path | None, explicit: bool, registry: ModelRegistry,
                 build: Callable[[str, str, Path], Batcher], drain_seconds: float,
                 on_change: Callable[[str, bool], None] = lambda name, served: None):
        self.folder = folder
        self.explicit = explicit
        self.registry = registry
        self._build = build  # (name, version, file) -> a warm batcher
        self._drain_seconds = drain_seconds
        self.on_change = on_change  # (name, served now): the health statuses follow
        self._lock = threading.Lock()  # one load or unload at a time
        self._failed: dict[str, str] = {}  # name -> why its last load failed

    def index(self, ready_only: bool = False) -> list[dict]:
        """Every model the repository holds and every one served, with its state."""
        served = {(m.name, m.version) for m in self.registry}
        rows = [{"name": name, "version": version, "state": "READY", "reason": ""}
                for name, version in served]
        if self.folder is not None:
            for name, versions in repository_models(self.folder).items():
                rows += [{"name": name, "version": version, "state": "UNAVAILABLE",
                          "reason": self._failed.get(name, "unloaded")}
                         for version, _ in versions if (name, version) not in served]
        rows.sort(key=lambda row: (row["name"], row["version"]))
        return [row for row in rows if row["state"] == "READY" or not ready_only]

    def load(self, name: str) -> None:
        """Serve every version of `name` in the repository (again, from the files, if it is
        served already)."""
        self._check_allowed("load")
        with self._lock:
            versions = repository_models(self.folder).get(name) if self.folder else None
            if not versions:
                raise ModelNotFound(f"the repository {self.folder} has no model {name!r} "
                                    f"(expected {name}/<version>/{MODEL_FILE})")
            try:
                fresh = build_registry([(name, v, path) for v, path in versions], self._build)
            except ModelLoadError as exc:
                self._failed[name] = f"load failed: {exc}"
                raise ModelLoadError(f"cannot load {name!r}, still serving what was served: "
                                     f"{exc}") from None
            self._failed.pop(name, None)
            batchers = [(model.version, model.batcher) for model in fresh]
            old = self.registry.versions(name)
            self.registry.replace_with(self.registry.with_model(name, batchers))
            self.on_change(name, True)
            self._close_when_unused(old)

    def reload(self, configured: list[tuple[str, str, Path]]) -> None:
        """Build every served model again from its files beside the served ones, then swap
        them all in at once (SIGHUP): the `configured` ones and, under explicit control, those
        loaded through the API. A file that cannot be served raises and changes nothing; the
        old batchers close once their calls have finished."""
        with self._lock:
            paths = list(configured)
            if self.explicit:
                found = repository_models(self.folder)
                configured_names = {name for name, _, _ in configured}
                loaded = dict.fromkeys(m.name for m in self.registry)
                paths += [(name, version, path) for name in loaded
                          if name not in configured_names and name in found
                          for version, path in found[name]]
            fresh = build_registry(paths, self._build, self.registry.default_name)
            old = list(self.registry)
            self.registry.replace_with(fresh)
            for name in dict.fromkeys(m.name for m in [*old, *fresh]):  # health follows
                self.on_change(name, bool(fresh.versions(name)))
        threading.Thread(target=self._close_when_unused, args=(old,), daemon=True).start()

    def unload(self, name: str) -> None:
        """Stop serving `name`; returns once the calls that were using it have finished."""
        self._check_allowed("unload")
        with self._lock:
            old = self.registry.versions(name)
            if not old:
                raise ModelNotFound(f"no model named {name!r} is loaded")
            self.registry.replace_with(self.registry.with_model(name))
            self.on_change(name, False)
            self._close_when_unused(old)

    def _check_allowed(self, what: str) -> None:
        if not self.explicit:
            raise NotAllowed(f"cannot {what} models: model control is off; start the server "
                             "with --model-control explicit (and --model-repository DIR)")

    def _close_when_unused(self, models) -> None:
        """Wait (at most the drain time) for the calls using these batchers, then close them."""
        deadline = time.monotonic() + self._drain_seconds
        while any(m.batcher.calls for m in models) and time.monotonic() < deadline:
            time.sleep(0.01)
        for model in models:
            model.batcher.close()
