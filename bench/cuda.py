"""The CUDA path, run for real: one prepared script for a machine with an NVIDIA GPU.

    bash tools/gpu_wheels.sh                 # here, once: wheels and fp16 models under .whl/
    # on the GPU machine, after the wheels are installed (tools/gpu_wheels.sh says how):
    python bench/cuda.py --out $OUT/cuda.json [--quick]

What it does, in order, each step's figures into the JSON (and a line each on stdout):

1. serves on CUDA: `python -m service --device cuda` on the bundled models; refuses to go on
   unless every model runs on the CUDA provider; `Generate`, V2 gRPC, V2 REST and a PNG URL
   answered, and the same request gives the same bytes from each door;
2. exactness: CPU against CUDA pixels over 10,000 seeds of each model (how many pixels
   differ, by how many levels); within CUDA, the same seeds alone, in batches of 64 and of
   1,024, and through streams of two chunk sizes, byte for byte;
3. absolute figures: in-process img/s at batch 1, 64, 1,024 and 4,096, fp32 and fp16, plain
   `run`, IO binding and CUDA graphs; PyTorch eager and `torch.compile` on the same generator
   (onnx2torch); the graph's FLOPs and bytes per image against the GPU's peak;
4. the service end to end: gRPC `Generate` at batch 64 x 8 clients and a 1,000,000-image
   `GenerateStream`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.contract import default_labels, seeds_to_latents  # noqa: E402
from service.process.config import bundled_models  # noqa: E402
from service.runtime import OnnxGenerator, RuntimeOptions  # noqa: E402

LISTENING = re.compile(r"listening grpc=\S+:(\d+) http=\S+:(\d+)")
FIGURES: dict = {}


def say(key: str, value) -> None:
    FIGURES[key] = value
    print(f"{key}: {value}", flush=True)


def feeds(generator: OnnxGenerator, seeds: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    meta = generator.metadata
    return (seeds_to_latents(seeds, meta.latent_dim),
            default_labels(seeds, meta.num_classes) if meta.conditional else None)


def exactness(name: str, path: Path, seeds: int) -> None:
    cpu = OnnxGenerator(path, RuntimeOptions(device="cpu"))
    cuda = OnnxGenerator(path, RuntimeOptions(device="cuda"))
    on_cpu, on_gpu = [], []
    for start in range(0, seeds, 1024):
        z, y = feeds(cpu, list(range(start, min(seeds, start + 1024))))
        on_cpu.append(cpu.run(z, y))
        on_gpu.append(cuda.run(z, y))
    a, b = np.concatenate(on_cpu).astype(int), np.concatenate(on_gpu).astype(int)
    diff = np.abs(a - b)
    say(f"{name}.cpu_vs_cuda", {"images": seeds, "pixels": int(diff.size),
                                "pixels_differing": int((diff > 0).sum()),
                                "images_differing": int((diff.reshape(seeds, -1) > 0).any(1).sum()),
                                "max_levels": int(diff.max()),
                                "levels": {str(k): int((diff == k).sum()) for k in range(1, 4)}})
    z, y = feeds(cuda, list(range(1024)))
    whole = cuda.run(z, y)
    alone = np.concatenate([cuda.run(z[i:i + 1], None if y is None else y[i:i + 1])
                            for i in range(64)])
    in_64 = np.concatenate([cuda.run(z[i:i + 64], None if y is None else y[i:i + 64])
                            for i in range(0, 1024, 64)])
    say(f"{name}.cuda_same_bytes_any_batch", bool((whole[:64] == alone).all()
                                                  and (whole == in_64).all()))


def throughput(path: Path, batch: int, seconds: float, mode: str) -> float:
    """img/s of one session at `batch`: plain run, IO binding, or CUDA graphs (IO binding on
    fixed buffers, replayed)."""
    import onnxruntime as ort
    options = {"device_id": 0}
    if mode == "graph":
        options["enable_cuda_graph"] = "1"
    session = ort.InferenceSession(str(path), providers=[("CUDAExecutionProvider", options)])
    names = [i.name for i in session.get_inputs()]
    z = np.random.default_rng(0).standard_normal((batch, session.get_inputs()[0].shape[1]),
                                                 dtype=np.float32)
    inputs = {"z": z} | ({"label": np.zeros(batch, np.int64)} if "label" in names else {})
    if mode == "run":
        step = lambda: session.run(None, inputs)  # noqa: E731
    else:
        binding = session.io_binding()
        for key, value in inputs.items():
            binding.bind_ortvalue_input(key, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
        out = ort.OrtValue.ortvalue_from_shape_and_type(
            [batch, *session.get_outputs()[0].shape[1:]], np.uint8, "cuda", 0)
        binding.bind_ortvalue_output("images", out)
        step = lambda: session.run_with_iobinding(binding)  # noqa: E731
    for _ in range(3):
        step()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        done += batch
    if mode != "run":
        out.numpy()  # the last run's images reached the host: its work is done
    return done / (time.perf_counter() - started)


def torch_figures(path: Path, batches: list[int], seconds: float) -> None:
    import onnx
    import torch
    from onnx2torch import convert
    model = convert(onnx.load(str(path))).cuda().eval()
    for compiled in (False, True):
        run = torch.compile(model) if compiled else model
        for batch in batches:
            z = torch.randn(batch, 100, device="cuda")
            args = (z,) + ((torch.zeros(batch, dtype=torch.long, device="cuda"),)
                           if len(model.graph.find_nodes(op="placeholder")) > 1 else ())
            with torch.inference_mode():
                for _ in range(3):
                    run(*args)
                torch.cuda.synchronize()
                done, started = 0, time.perf_counter()
                while time.perf_counter() - started < seconds:
                    run(*args)
                    done += batch
                torch.cuda.synchronize()
            say(f"torch.{'compile' if compiled else 'eager'}.b{batch}",
                round(done / (time.perf_counter() - started)))


def closed_loop_img_s(client, batch: int, clients: int, seconds: float) -> float:
    """`clients` threads each sending `batch`-seed Generate calls back to back."""
    from concurrent.futures import ThreadPoolExecutor
    stop = time.perf_counter() + seconds

    def loop(first: int) -> int:
        done = 0
        while time.perf_counter() < stop:
            done += len(client.generate(list(range(first, first + batch))))
        return done
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        images = sum(pool.map(loop, range(0, batch * clients, batch)))
    return images / (time.perf_counter() - started)


def graph_cost(path: Path) -> dict:
    """FLOPs (2 per multiply-add) and weight bytes per image of the generator's convolutions
    and matrix products: what the GPU's peak is measured against."""
    import onnx
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.output, *model.graph.input]}
    weights = {t.name: t for t in model.graph.initializer}
    flops = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and \
                node.input[1] in weights:
            w = list(weights[node.input[1]].dims)
            # Conv: each output position does all its weights; ConvTranspose: each input one.
            at = node.input[0] if node.op_type == "ConvTranspose" else node.output[0]
            flops += 2 * int(np.prod(w)) * int(np.prod(shapes.get(at, [])[2:] or [1]))
    size = sum(int(np.prod(t.dims)) * 4 for t in weights.values())
    return {"flops_per_image": flops, "weight_bytes": size}


def serve_and_call(seconds: float) -> None:
    from service.client import GeneratorClient
    proc = subprocess.Popen([sys.executable, "-m", "service", "--device", "cuda", "--host",
                             "127.0.0.1", "--port", "0", "--http-port", "0", "--metrics-port",
                             "-1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    log, port = [], None
    for line in proc.stdout:
        log.append(line)
        if m := LISTENING.search(line):
            port, http = int(m[1]), int(m[2])
            break
    threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True).start()
    try:
        assert port, "".join(log)
        say("serve.log_models", [line.strip() for line in log if "model '" in line])
        assert all("CUDAExecutionProvider" in line for line in log if "model '" in line)
        with GeneratorClient(f"127.0.0.1:{port}", timeout=60) as client:
            import urllib.request
            info = client.list_models()
            say("serve.providers", {m.name: list(m.execution_providers) for m in info})
            raw = client.generate(list(range(16)), model=info[0].name).tobytes()
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v1/models/{info[0].name}"
                                        "/grid.png?seeds=0-15", timeout=60) as answer:
                say("serve.png_url_status", answer.status)
            say("serve.generate_64x8_img_s", round(closed_loop_img_s(client, 64, 8, seconds)))
            started, images = time.perf_counter(), 0
            for chunk in client.generate_stream(start=0, count=1_000_000, chunk_size=4096):
                images += len(chunk)
            say("serve.stream_1m_img_s", round(images / (time.perf_counter() - started)))
            again = client.generate(list(range(16)), model=info[0].name).tobytes()
            say("serve.same_bytes_twice", raw == again)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="1,000 seeds, 1 s per figure")
    args = parser.parse_args()
    import onnxruntime as ort
    say("onnxruntime", ort.__version__)
    say("providers", ort.get_available_providers())
    say("gpu", subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True,
                              text=True).stdout.strip())
    seconds, seeds = (1.0, 1000) if args.quick else (3.0, 10_000)
    try:
        serve_and_call(seconds)
        for name, path in bundled_models():
            say(f"{name}.graph", graph_cost(path))
            exactness(name, path, seeds)
            fp16 = ROOT / ".whl" / "small" / f"{path.stem}-fp16.onnx"
            for precision, model in (("fp32", path), ("fp16", fp16)):
                if not model.exists():
                    say(f"{name}.{precision}", "missing (tools/gpu_wheels.sh makes it)")
                    continue
                for mode in ("run", "iobinding", "graph"):
                    for batch in (1, 64, 1024, 4096):
                        say(f"{name}.{precision}.{mode}.b{batch}",
                            round(throughput(model, batch, seconds, mode)))
            torch_figures(path, [1, 64, 1024, 4096], seconds)
    finally:
        args.out.write_text(json.dumps(FIGURES, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
