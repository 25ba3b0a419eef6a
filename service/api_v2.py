"""The KServe Open Inference Protocol (V2) over gRPC: tensors in -> `generation.Generator` -> tensors out.

Beside the project's own API, so that tools built for the standard protocol (`tritonclient`,
KServe's custom-predictor deployments) work against this server unmodified. The same seeds
give the same pixels as `Generate`: both go through the same `Generator`. The tensors, and
the checks on them, are `inference_protocol`'s, shared with the REST edge (`api_http.py`).

Thin, like `api_dcgan`: errors are raised as the service's own exceptions and become status
codes in the edge (`service.edge`), which wraps every handler here as it wraps the dcgan API.
"""

from __future__ import annotations

import grpc

from service.api.inference import grpc_predict_v2_pb2 as v2
from service.api.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from service.edge import Edge, rpc
from service.errors import InvalidRequest, ModelNotFound
from service.generation import Generator, ServedModel
from service.inference_protocol import (PLATFORM, SERVER_NAME, InputTensor,
                                        generation_request, input_specs, output_specs,
                                        output_tensors, resolve_model, server_version,
                                        wanted_outputs)

# Where protobuf keeps the typed (non-raw) values of each datatype.
_CONTENTS_FIELD = {"UINT64": "uint64_contents", "INT64": "int64_contents",
                   "INT32": "int_contents", "FP32": "fp32_contents"}
_CONFIG_TYPE = {"UINT64": v2.TYPE_UINT64, "INT64": v2.TYPE_INT64, "UINT8": v2.TYPE_UINT8,
                "FP32": v2.TYPE_FP32}


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, generator: Generator, edge: Edge):
        self.generator = generator
        self.edge = edge
        self.version = server_version()

    # --- health and metadata -------------------------------------------------------------------

    @rpc("ServerLive")
    async def ServerLive(self, request, context, call):
        return v2.ServerLiveResponse(live=True)

    @rpc("ServerReady")
    async def ServerReady(self, request, context, call):
        return v2.ServerReadyResponse(ready=not self.edge.gate.draining)

    @rpc("ModelReady")
    async def ModelReady(self, request, context, call):
        try:
            resolve_model(self.generator, request.name, request.version)
        except ModelNotFound:
            return v2.ModelReadyResponse(ready=False)
        return v2.ModelReadyResponse(ready=not self.edge.gate.draining)

    @rpc("ServerMetadata")
    async def ServerMetadata(self, request, context, call):
        return v2.ServerMetadataResponse(name=SERVER_NAME, version=self.version, extensions=[])

    @rpc("ModelMetadata")
    async def ModelMetadata(self, request, context, call):
        model = resolve_model(self.generator, request.name, request.version)
        call.model = model.name
        return _metadata(model)

    @rpc("ModelConfig")
    async def ModelConfig(self, request, context, call):
        model = resolve_model(self.generator, request.name, request.version)
        call.model = model.name
        return v2.ModelConfigResponse(config=_config(model))

    # --- inference ------------------------------------------------------------------------------

    @rpc("ModelInfer", admit=True)
    async def ModelInfer(self, request: v2.ModelInferRequest, context: grpc.aio.ServicerContext,
                         call) -> v2.ModelInferResponse:
        model = resolve_model(self.generator, request.model_name, request.model_version)
        call.model = model.name
        parameters = {key: getattr(value, value.WhichOneof("parameter_choice"))
                      for key, value in request.parameters.items()
                      if value.WhichOneof("parameter_choice")}
        generation = generation_request(_input_tensors(request), parameters,
                                        context.time_remaining())
        wanted = wanted_outputs([o.name for o in request.outputs], model)
        call.kind = generation.kind.value
        result = await self.generator.generate(model, generation)
        call.images = len(result.images)
        self.edge.metrics.observe_request_size(model.name, call.images)
        response = v2.ModelInferResponse(model_name=result.model, model_version=result.version,
                                         id=request.id)
        if result.latent_rule:  # the rule these images used, as Generate reports it
            response.parameters["latent_rule"].string_param = result.latent_rule
            response.parameters["psi"].string_param = f"{result.psi:g}"
        for name, datatype, values in output_tensors(result, wanted):
            response.outputs.append(v2.ModelInferResponse.InferOutputTensor(
                name=name, datatype=datatype, shape=list(values.shape)))
            response.raw_output_contents.append(values.tobytes())
        return response


def _input_tensors(request: v2.ModelInferRequest) -> list[InputTensor]:
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidRequest(f"{len(request.raw_input_contents)} raw_input_contents for "
                             f"{len(request.inputs)} inputs: send one per input")
    tensors = []
    for i, tensor in enumerate(request.inputs):
        field = _CONTENTS_FIELD.get(tensor.datatype)
        tensors.append(InputTensor(
            tensor.name, tensor.datatype, list(tensor.shape),
            raw=request.raw_input_contents[i] if request.raw_input_contents else None,
            values=getattr(tensor.contents, field) if field else ()))
    return tensors


def _metadata(model: ServedModel) -> v2.ModelMetadataResponse:
    tensor = v2.ModelMetadataResponse.TensorMetadata
    return v2.ModelMetadataResponse(
        name=model.name, versions=[model.metadata.version], platform=PLATFORM,
        inputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape)
                for s in input_specs(model)],
        outputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape)
                 for s in output_specs(model)])


def _config(model: ServedModel) -> v2.ModelConfig:
    """Triton's view of the same tensors as `_metadata`."""
    return v2.ModelConfig(
        name=model.name, platform=PLATFORM, backend="onnxruntime", max_batch_size=0,
        input=[v2.ModelInput(name=s.name, data_type=_CONFIG_TYPE[s.datatype], dims=s.shape,
                             optional=s.optional) for s in input_specs(model)],
        output=[v2.ModelOutput(name=s.name, data_type=_CONFIG_TYPE[s.datatype], dims=s.shape)
                for s in output_specs(model)])
