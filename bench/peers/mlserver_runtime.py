"""Seldon MLServer with a custom MLModel running the ONNX file, adaptive batching on.

    .bench-venvs/mlserver/bin/python bench/peers/mlserver_runtime.py MODEL.onnx PORT WORKDIR \
        [HTTP_PORT]

Writes MLServer's settings.json and model-settings.json into WORKDIR and runs `mlserver start`
there; MLServer then imports `DCGANRuntime` from this file (copied beside the settings).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

HERE = Path(__file__).resolve().parent


class DCGANRuntime(MLModel):
    async def load(self) -> bool:
        sys.path.insert(0, str(HERE))
        from common import open_session
        self.session = open_session(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        from common import run
        latents = NumpyCodec.decode_input(payload.inputs[0])
        labels = NumpyCodec.decode_input(payload.inputs[1]) if len(payload.inputs) > 1 else None
        images = run(self.session, latents, labels)
        return InferenceResponse(model_name=self.name, outputs=[
            NumpyCodec.encode_output("images", images)])



def main() -> None:
    sys.path.insert(0, str(HERE))
    from common import free_port
    model, port, workdir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    http_port = int(sys.argv[4]) if len(sys.argv) > 4 else free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "common.py", workdir / "common.py")
    shutil.copy(Path(__file__), workdir / "mlserver_runtime.py")
    (workdir / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "grpc_port": port, "http_port": http_port,
        "metrics_port": free_port(), "grpc_max_message_length": 64 << 20}))
    (workdir / "model-settings.json").write_text(json.dumps({
        "name": "dcgan", "implementation": "mlserver_runtime.DCGANRuntime",
        "max_batch_size": 256, "max_batch_time": 0.001,
        "parameters": {"uri": str(Path(model).resolve())}}))
    os.chdir(workdir)
    mlserver = Path(sys.executable).parent / "mlserver"
    os.execv(str(mlserver), [str(mlserver), "start", str(workdir)])


if __name__ == "__main__":
    main()
