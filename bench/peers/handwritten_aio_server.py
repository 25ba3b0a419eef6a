"""The hand-written baseline in asyncio form: `grpc.aio`, session.run in a thread pool.

    python bench/peers/handwritten_aio_server.py MODEL.onnx PORT

The other way a user writes a small gRPC wrapper today; beside handwritten_server.py it shows
what grpc's asyncio server costs per call against its thread-pool server on this machine.
"""

from __future__ import annotations

import asyncio
import sys
from concurrent import futures
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this project's V2 stubs
from bench.peers.common import announce, open_session, raw_v2_inputs, run  # noqa: E402
from service.api.inference import grpc_predict_v2_pb2 as v2  # noqa: E402
from service.api.inference import grpc_predict_v2_pb2_grpc as v2_grpc  # noqa: E402


class HandwrittenAio(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, path: str):
        self.session = open_session(path, threads=1)
        self.pool = futures.ThreadPoolExecutor(max_workers=2)  # one run per core

    async def ServerLive(self, request, context):
        return v2.ServerLiveResponse(live=True)

    async def ModelInfer(self, request, context):
        latents, labels = raw_v2_inputs(request)
        images = await asyncio.get_running_loop().run_in_executor(
            self.pool, run, self.session, latents, labels)
        response = v2.ModelInferResponse(model_name=request.model_name)
        response.outputs.add(name="images", datatype="UINT8", shape=images.shape)
        response.raw_output_contents.append(images.tobytes())
        return response


async def serve(path: str, port: int) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20),
                                      ("grpc.max_send_message_length", 64 << 20)])
    v2_grpc.add_GRPCInferenceServiceServicer_to_server(HandwrittenAio(path), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    announce(port)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
