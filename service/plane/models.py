"""The served models by name: how every door finds the model a request names, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from service.contract import ModelMetadata
from service.errors import ModelNotFound
from service.plane.batching import Batcher
from service.plane.runtime import OnnxGenerator


@dataclass
class ServedModel:
    name: str
    engine: Batcher
    is_default: bool

    @property
    def runner(self) -> OnnxGenerator:
        return self.engine.runner

    @property
    def metadata(self) -> ModelMetadata:
        return self.engine.runner.metadata

    @property
    def version(self) -> str:
        return self.metadata.version


class ModelRegistry:
    """The loaded models by name; the first loaded is the default."""

    def __init__(self) -> None:
        self._models: dict[str, ServedModel] = {}

    def add(self, name: str, engine: Batcher) -> None:
        self._models[name] = ServedModel(name, engine, is_default=not self._models)

    def replace_with(self, other: "ModelRegistry") -> list[ServedModel]:
        """Serve `other`'s models from now on; returns the old ones (for closing later).

        One reference assignment, so every request sees either the old set or the new set;
        a request that already picked an old model finishes on it.
        """
        old = list(self._models.values())
        self._models = other._models
        return old

    def close(self) -> None:
        for model in self._models.values():
            model.engine.close()

    def get(self, name: str = "", version: str = "") -> ServedModel:
        """The model called `name` (empty: the default), at `version` if one is given."""
        if not name:
            model = self.default
        elif (model := self._models.get(name)) is None:
            raise ModelNotFound(f"no model named {name!r}: this server serves "
                                f"{', '.join(self._models)} (or leave model empty for the "
                                "default)")
        if version and version != model.version:
            raise ModelNotFound(f"model {model.name!r} has version {model.version!r}, not "
                                f"{version!r}: send that or leave the version out")
        return model

    @property
    def default(self) -> ServedModel:
        return next(iter(self._models.values()))

    def __iter__(self):
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)
