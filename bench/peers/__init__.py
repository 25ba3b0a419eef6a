"""The servers a user would pick instead, serving the same ONNX file, for bench/compare_servers.py.

Each is a small program run with the peer's own virtual environment (bench/peers/setup.sh):

    handwritten_server.py  grpcio + onnxruntime by hand (helloworld style), the V2 ModelInfer
    handwritten_aio_server.py  the same with grpc.aio and a 2-thread run pool
    kserve_server.py       KServe's Python ModelServer (V2 gRPC)
    mlserver_runtime.py    Seldon MLServer, a custom MLModel, adaptive batching
    pytriton_server.py     NVIDIA PyTriton (Triton Inference Server), dynamic batching

All take latents (FP32 [N, latent]) and, for conditional models, labels (INT64 [N, 1]) over the
Open Inference Protocol and answer UINT8 images [N, 1, 28, 28] in raw_output_contents.
"""
