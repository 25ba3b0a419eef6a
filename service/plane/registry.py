"""The served models by name and version, and how a request's name finds one: several versions
of a name may be served side by side (`--model mnist:1=A --model mnist:2=B`), the first one a
name's default. The default model is the first one served (at start, or the first loaded when
the server starts with none) and stays so: while it is unloaded, a request that names no
model is NOT_FOUND, until it is loaded again.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.contract import ModelMetadata
from service.errors import ModelNotFound
from service.plane.batching import Batcher
from service.runtime import OnnxGenerator


@dataclass
class ServedModel:
    name: str
    version: str      # as configured, or the file's own (its training run id)
    batcher: Batcher
    is_default: bool  # the default model's default version
    is_default_version: bool  # the version a request naming this model but no version gets

    @property
    def generator(self) -> OnnxGenerator:
        return self.batcher.generator

    @property
    def metadata(self) -> ModelMetadata:
        return self.batcher.generator.metadata


class ModelRegistry:
    """The loaded models: name -> versions, each name's default version first."""

    def __init__(self, default_name: str | None = None) -> None:
        self._models: dict[str, dict[str, ServedModel]] = {}
        self.default_name = default_name

    def add(self, name: str, batcher: Batcher, version: str = "") -> ServedModel:
        version = version or batcher.generator.metadata.version
        versions = self._models.setdefault(name, {})
        if version in versions:
            raise ValueError(f"model {name!r} version {version!r} is already served")
        self.default_name = self.default_name or name
        is_default = name == self.default_name and not versions
        model = versions[version] = ServedModel(name, version, batcher, is_default,
                                                is_default_version=not versions)
        return model

    def replace_with(self, other: "ModelRegistry") -> list[ServedModel]:
        """Serve `other`'s models from now on; returns the old ones (for closing later).

        One reference assignment, so every request sees either the old set or the new set;
        a request that already picked an old model finishes on it.
        """
        old = list(self)
        self._models, self.default_name = other._models, other.default_name
        return old

    def close(self) -> None:
        for model in self:
            model.batcher.close()

    def with_model(self, name: str, versions: list[tuple[str, Batcher]] = ()) -> "ModelRegistry":
        """A copy serving `versions` (default first) under `name` in place of what `name`
        serves here (nothing, when `versions` is empty: `name` unloaded)."""
        fresh = ModelRegistry(self.default_name)
        for model in self:
            if model.name != name:
                fresh.add(model.name, model.batcher, model.version)
            elif versions:  # keep the name's place in the order (the default model stays)
                for version, batcher in versions:
                    fresh.add(name, batcher, version)
                versions = ()
        for version, batcher in versions:
            fresh.add(name, batcher, version)
        return fresh

    def get(self, name: str = "", version: str = "") -> ServedModel:
        """The model called `name` (empty: the default), at `version` (empty: its default)."""
        if not self._models:
            raise ModelNotFound("no model is loaded: load one (RepositoryModelLoad)")
        if not name and self.default_name not in self._models:
            raise ModelNotFound(f"the default model {self.default_name!r} is not loaded: name "
                                f"one of {', '.join(self._models)}, or load it again")
        if (versions := self._models.get(name or self.default_name)) is None:
            raise ModelNotFound(f"no model named {name!r}: this server serves "
                                f"{', '.join(self._models)} (or leave model empty for the "
                                "default)")
        if not version:
            return next(iter(versions.values()))
        if version.isdigit() and version not in versions:  # "007" is version 7, as Triton reads it
            version = str(int(version))
        if (model := versions.get(version)) is None:
            model = next(iter(versions.values()))
            raise ModelNotFound(f"model {model.name!r} has no version {version!r}: it serves "
                                f"{', '.join(map(repr, versions))}; send one of those or leave "
                                "the version out for the default")
        return model

    def versions(self, name: str) -> list[ServedModel]:
        """Every served version of `name`, its default first (none if not served)."""
        return list(self._models.get(name, {}).values())

    def __iter__(self):
        """Every served version of every model, the default first."""
        return (model for versions in self._models.values() for model in versions.values())

    def __len__(self) -> int:
        return sum(len(versions) for versions in self._models.values())
