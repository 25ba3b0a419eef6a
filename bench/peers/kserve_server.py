"""KServe's Python ModelServer (V2 gRPC and REST) serving the ONNX file, as its docs' custom
model does.

    .bench-venvs/kserve/bin/python bench/peers/kserve_server.py MODEL.onnx PORT [HTTP_PORT]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, open_session, run  # noqa: E402

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer  # noqa: E402


class DCGAN(Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.session = open_session(path)
        self.ready = True

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        latents = payload.inputs[0].as_numpy()
        labels = payload.inputs[1].as_numpy() if len(payload.inputs) > 1 else None
        images = run(self.session, latents, labels)
        output = InferOutput(name="images", shape=list(images.shape), datatype="UINT8")
        output.set_data_from_numpy(images, binary_data=True)
        return InferResponse(response_id=payload.id, model_name=self.name,
                             infer_outputs=[output], use_binary_outputs=True)


if __name__ == "__main__":
    path, port = sys.argv[1], int(sys.argv[2])
    http_port = int(sys.argv[3]) if len(sys.argv) > 3 else free_port()
    ModelServer(grpc_port=port, http_port=http_port, workers=1,
                enable_latency_logging=False).start([DCGAN("dcgan", path)])
