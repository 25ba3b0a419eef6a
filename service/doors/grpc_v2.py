"""The Open Inference Protocol (KServe V2) over gRPC, for the tools built for it (`tritonclient`,
KServe): a converter, tensors -> data plane -> tensors, the tensors' checks shared with the
REST door (`v2_tensors.py`). The same seeds give `Generate`'s pixels.
"""

from __future__ import annotations

from google.protobuf import json_format

from service.api.inference import grpc_predict_v2_pb2 as v2
from service.api.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from service.contract import psi_text
from service.doors.v2_tensors import (EXTENSIONS, SERVER_NAME, UNLOAD_PARAMETERS, InputTensor,
                                      check_repository_parameters, model_config,
                                      model_metadata, output_tensors, server_version,
                                      to_request, wanted_outputs)
from service.edge.call import CallRecord
from service.errors import InvalidRequest, ModelNotFound
from service.plane.dataplane import DataPlane

# Where protobuf keeps the typed (non-raw) values of each datatype.
_CONTENTS_FIELD = {"UINT64": "uint64_contents", "INT64": "int64_contents",
                   "INT32": "int_contents", "FP32": "fp32_contents"}


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane):
        self.plane = plane
        self.version = server_version()

    # --- health and metadata -------------------------------------------------------------------

    async def ServerLive(self, request, context, call: CallRecord):
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context, call: CallRecord):
        return v2.ServerReadyResponse(ready=self.plane.ready())

    async def ModelReady(self, request, context, call: CallRecord):
        try:
            return v2.ModelReadyResponse(ready=self.plane.ready(request.name, request.version))
        except ModelNotFound:
            return v2.ModelReadyResponse(ready=False)

    async def ServerMetadata(self, request, context, call: CallRecord):
        return v2.ServerMetadataResponse(name=SERVER_NAME, version=self.version,
                                         extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context, call: CallRecord):
        model = self.plane.model(request.name, request.version, call)
        return json_format.ParseDict(model_metadata(model, self.plane.versions(model.name)),
                                     v2.ModelMetadataResponse())

    async def ModelConfig(self, request, context, call: CallRecord):
        return json_format.ParseDict({"config": model_config(
            self.plane.model(request.name, request.version, call))}, v2.ModelConfigResponse())

    async def ModelStatistics(self, request, context, call: CallRecord):
        return json_format.ParseDict(
            self.plane.statistics(request.name, request.version, call),
            v2.ModelStatisticsResponse())

    # --- the model repository ------------------------------------------------------------------

    async def RepositoryIndex(self, request, context, call: CallRecord):
        return json_format.ParseDict({"models": self.plane.index(request.ready)},
                                     v2.RepositoryIndexResponse())

    async def RepositoryModelLoad(self, request, context, call: CallRecord):
        check_repository_parameters(request.parameters, "RepositoryModelLoad")
        await self.plane.load(request.model_name)
        return v2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context, call: CallRecord):
        check_repository_parameters(request.parameters, "RepositoryModelUnload", UNLOAD_PARAMETERS)
        await self.plane.unload(request.model_name)
        return v2.RepositoryModelUnloadResponse()

    # --- inference ------------------------------------------------------------------------------

    async def ModelInfer(self, request: v2.ModelInferRequest, context, call: CallRecord
                         ) -> v2.ModelInferResponse:
        parameters = {key: getattr(value, value.WhichOneof("parameter_choice"))
                      for key, value in request.parameters.items()
                      if value.WhichOneof("parameter_choice")}
        plan = self.plane.prepare(to_request(
            request.model_name, request.model_version, _input_tensors(request), parameters,
            call), call)
        wanted = wanted_outputs([o.name for o in request.outputs], plan.model)
        result = await self.plane.run(plan, call)
        response = v2.ModelInferResponse(model_name=result.model, model_version=result.version,
                                         id=request.id)
        if result.latent_rule:  # the rule these images used, as Generate reports it
            response.parameters["latent_rule"].string_param = result.latent_rule
            response.parameters["psi"].string_param = psi_text(result.psi)
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
