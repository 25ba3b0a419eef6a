"""NVIDIA PyTriton (Triton Inference Server with its Python backend) serving the ONNX file,
with Triton's dynamic batcher.

    LD_LIBRARY_PATH=<venv python LIBDIR> .bench-venvs/pytriton/bin/python \
        bench/peers/pytriton_server.py MODEL.onnx PORT
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, open_session, run  # noqa: E402

from pytriton.decorators import batch  # noqa: E402
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor  # noqa: E402
from pytriton.triton import Triton, TritonConfig  # noqa: E402



def main() -> None:
    path, port = sys.argv[1], int(sys.argv[2])
    session = open_session(path)
    inputs = session.get_inputs()
    latent_dim = inputs[0].shape[1]
    conditional = len(inputs) > 1

    @batch
    def infer(latent, label=None):
        return {"images": run(session, latent, label)}

    tensors = [Tensor(name="latent", dtype=np.float32, shape=(latent_dim,))]
    if conditional:
        tensors.append(Tensor(name="label", dtype=np.int64, shape=(1,)))
    config = TritonConfig(grpc_port=port, http_port=free_port(), metrics_port=free_port(),
                          grpc_address="127.0.0.1", http_address="127.0.0.1")
    with Triton(config=config) as triton:
        triton.bind(model_name="dcgan", infer_func=infer, inputs=tensors,
                    outputs=[Tensor(name="images", dtype=np.uint8, shape=(1, 28, 28))],
                    config=ModelConfig(max_batch_size=256,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=100)))
        triton.serve()


if __name__ == "__main__":
    main()
