from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_RAW: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG_GRID: _ClassVar[ImageFormat]

class Interpolation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTERPOLATION_UNSPECIFIED: _ClassVar[Interpolation]
    INTERPOLATION_SLERP: _ClassVar[Interpolation]
    INTERPOLATION_LERP: _ClassVar[Interpolation]
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_RAW: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_PNG_GRID: ImageFormat
INTERPOLATION_UNSPECIFIED: Interpolation
INTERPOLATION_SLERP: Interpolation
INTERPOLATION_LERP: Interpolation

class GenerateRequest(_message.Message):
    __slots__ = ("seeds", "labels", "model", "format", "psi", "latents", "model_version")
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    seeds: _containers.RepeatedScalarFieldContainer[int]
    labels: _containers.RepeatedScalarFieldContainer[int]
    model: str
    format: ImageFormat
    psi: float
    latents: bytes
    model_version: str
    def __init__(self, seeds: _Optional[_Iterable[int]] = ..., labels: _Optional[_Iterable[int]] = ..., model: _Optional[str] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., psi: _Optional[float] = ..., latents: _Optional[bytes] = ..., model_version: _Optional[str] = ...) -> None: ...

class InterpolateRequest(_message.Message):
    __slots__ = ("seed_a", "seed_b", "frames", "method", "labels", "model", "format", "psi", "model_version")
    SEED_A_FIELD_NUMBER: _ClassVar[int]
    SEED_B_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    seed_a: int
    seed_b: int
    frames: int
    method: Interpolation
    labels: _containers.RepeatedScalarFieldContainer[int]
    model: str
    format: ImageFormat
    psi: float
    model_version: str
    def __init__(self, seed_a: _Optional[int] = ..., seed_b: _Optional[int] = ..., frames: _Optional[int] = ..., method: _Optional[_Union[Interpolation, str]] = ..., labels: _Optional[_Iterable[int]] = ..., model: _Optional[str] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., psi: _Optional[float] = ..., model_version: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("model", "model_version", "seeds", "labels", "format", "raw", "count", "height", "width", "png", "grid_png", "grid_columns", "latent_rule", "psi")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    GRID_PNG_FIELD_NUMBER: _ClassVar[int]
    GRID_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    LATENT_RULE_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    seeds: _containers.RepeatedScalarFieldContainer[int]
    labels: _containers.RepeatedScalarFieldContainer[int]
    format: ImageFormat
    raw: bytes
    count: int
    height: int
    width: int
    png: _containers.RepeatedScalarFieldContainer[bytes]
    grid_png: bytes
    grid_columns: int
    latent_rule: str
    psi: float
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., seeds: _Optional[_Iterable[int]] = ..., labels: _Optional[_Iterable[int]] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., raw: _Optional[bytes] = ..., count: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., png: _Optional[_Iterable[bytes]] = ..., grid_png: _Optional[bytes] = ..., grid_columns: _Optional[int] = ..., latent_rule: _Optional[str] = ..., psi: _Optional[float] = ...) -> None: ...

class SeedRange(_message.Message):
    __slots__ = ("start", "count")
    START_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    start: int
    count: int
    def __init__(self, start: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class SeedList(_message.Message):
    __slots__ = ("seeds",)
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    seeds: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seeds: _Optional[_Iterable[int]] = ...) -> None: ...

class GenerateStreamRequest(_message.Message):
    __slots__ = ("range", "list", "labels", "model", "format", "chunk_size", "psi", "model_version")
    RANGE_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    range: SeedRange
    list: SeedList
    labels: _containers.RepeatedScalarFieldContainer[int]
    model: str
    format: ImageFormat
    chunk_size: int
    psi: float
    model_version: str
    def __init__(self, range: _Optional[_Union[SeedRange, _Mapping]] = ..., list: _Optional[_Union[SeedList, _Mapping]] = ..., labels: _Optional[_Iterable[int]] = ..., model: _Optional[str] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., chunk_size: _Optional[int] = ..., psi: _Optional[float] = ..., model_version: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "arch", "dataset", "latent_dim", "num_classes", "class_names", "height", "width", "execution_providers", "seed_rule", "is_default", "max_batch", "run", "is_default_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    SEED_RULE_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    arch: str
    dataset: str
    latent_dim: int
    num_classes: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    height: int
    width: int
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    seed_rule: str
    is_default: bool
    max_batch: int
    run: str
    is_default_version: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., arch: _Optional[str] = ..., dataset: _Optional[str] = ..., latent_dim: _Optional[int] = ..., num_classes: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., execution_providers: _Optional[_Iterable[str]] = ..., seed_rule: _Optional[str] = ..., is_default: bool = ..., max_batch: _Optional[int] = ..., run: _Optional[str] = ..., is_default_version: bool = ...) -> None: ...
