"""The hand-written baseline: grpcio's thread-pool server, bytes in, session.run, bytes out.

    python bench/peers/handwritten_server.py MODEL.onnx PORT
"""

from __future__ import annotations

import sys
from concurrent import futures
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this project's V2 stubs
from bench.peers.common import announce, open_session, raw_v2_inputs, run  # noqa: E402
from service.api.inference import grpc_predict_v2_pb2 as v2  # noqa: E402
from service.api.inference import grpc_predict_v2_pb2_grpc as v2_grpc  # noqa: E402


class Handwritten(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, path: str):
        self.session = open_session(path)

    def ServerLive(self, request, context):
        return v2.ServerLiveResponse(live=True)

    def ModelInfer(self, request, context):
        latents, labels = raw_v2_inputs(request)
        images = run(self.session, latents, labels)
        response = v2.ModelInferResponse(model_name=request.model_name)
        response.outputs.add(name="images", datatype="UINT8", shape=images.shape)
        response.raw_output_contents.append(images.tobytes())
        return response


def main() -> None:
    path, port = sys.argv[1], int(sys.argv[2])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", 64 << 20),
                                  ("grpc.max_send_message_length", 64 << 20)])
    v2_grpc.add_GRPCInferenceServiceServicer_to_server(Handwritten(path), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    announce(port)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
