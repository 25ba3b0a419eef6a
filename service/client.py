"""The Python client library and the `dcgan-client` CLI.

    from service.client import GeneratorClient
    with GeneratorClient("127.0.0.1:50051") as client:
        images = client.generate([0, 1, 2], labels=[7])     # uint8 [3, 28, 28]
        for chunk in client.generate_stream(start=0, count=100_000):
            ...                                             # uint8 [k, 28, 28] per chunk

    dcgan-client generate --seed 0-15 --label 7 --grid --out digits/
    dcgan-client info
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator, Sequence

import grpc
import numpy as np

from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
from service.contract import parse_seeds
from service.imaging import decode_png

FORMATS = {"raw": pb.IMAGE_FORMAT_RAW, "png": pb.IMAGE_FORMAT_PNG,
           "grid": pb.IMAGE_FORMAT_PNG_GRID}


def images_from_response(response: pb.GenerateResponse) -> np.ndarray:
    """uint8 [N, H, W] from a RAW or PNG response (a PNG_GRID response holds one picture)."""
    if response.format == pb.IMAGE_FORMAT_PNG:
        return np.stack([decode_png(p) for p in response.png])
    if response.format == pb.IMAGE_FORMAT_PNG_GRID:
        return decode_png(response.grid_png)[None]
    return np.frombuffer(response.raw, dtype=np.uint8).reshape(
        response.count, response.height, response.width)


class GeneratorClient:
    """A thin, typed wrapper over the generated stub; `stub` is there for anything else."""

    def __init__(self, address: str = "127.0.0.1:50051", timeout: float | None = 30.0,
                 max_message_bytes: int = 64 << 20, channel: grpc.Channel | None = None):
        self.timeout = timeout
        self.channel = channel or grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)])
        self.stub = pb_grpc.GeneratorServiceStub(self.channel)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.channel.close()

    def generate_response(self, seeds: Sequence[int], labels: Sequence[int] = (),
                          model: str = "", format: str = "raw") -> pb.GenerateResponse:
        return self.stub.Generate(pb.GenerateRequest(
            seeds=list(seeds), labels=list(labels), model=model, format=FORMATS[format]),
            timeout=self.timeout)

    def generate(self, seeds: Sequence[int], labels: Sequence[int] = (), model: str = ""
                 ) -> np.ndarray:
        """uint8 images [N, H, W] for the seeds (RAW transfer, the fastest)."""
        return images_from_response(self.generate_response(seeds, labels, model))

    def generate_stream(self, start: int | None = None, count: int | None = None,
                        seeds: Sequence[int] | None = None, labels: Sequence[int] = (),
                        model: str = "", chunk_size: int = 0, format: str = "raw"
                        ) -> Iterator[pb.GenerateResponse]:
        """Stream responses for a seed range (start, count) or a seed list."""
        request = pb.GenerateStreamRequest(labels=list(labels), model=model,
                                           format=FORMATS[format], chunk_size=chunk_size)
        if seeds is not None:
            request.list.seeds.extend(seeds)
        else:
            request.range.start, request.range.count = start or 0, count or 0
        # No overall timeout: a 100k-image stream can legitimately take minutes.
        return self.stub.GenerateStream(request)

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout).models)


# --- CLI --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcgan-client",
                                description="Ask a dcgan-serve server for generated images.")
    p.add_argument("--address", default="127.0.0.1:50051",
                   help="server host:port (default 127.0.0.1:50051)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    g = sub.add_parser("generate", help="write PNGs for seeds")
    g.add_argument("--seed", action="append", required=True, metavar="SEEDS",
                   help="seed, range or list: 7, 0-15, 3,9,20-22 (repeatable)")
    g.add_argument("--label", action="append", type=int, default=[], metavar="N",
                   help="class for conditional models: one for all seeds or one per seed")
    g.add_argument("--model", default="", help="model name (default: the server's default)")
    g.add_argument("--out", default="generated", help="output folder (default generated/)")
    g.add_argument("--grid", action="store_true", help="write one grid.png instead of one per seed")
    g.add_argument("--stream", action="store_true",
                   help="use GenerateStream (for more seeds than one request allows)")
    sub.add_parser("info", help="list the server's models")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with GeneratorClient(args.address, timeout=args.timeout) as client:
            if args.command == "info":
                for m in client.list_models():
                    classes = f", classes: {', '.join(m.class_names)}" if m.num_classes else ""
                    print(f"{m.name}{' (default)' if m.is_default else ''}: {m.arch} on "
                          f"{m.dataset}, version {m.version}, latent {m.latent_dim}, "
                          f"{m.height}x{m.width}, providers {', '.join(m.execution_providers)}"
                          f"{classes}")
                return 0
            return _generate(client, args)
    except grpc.RpcError as err:
        print(f"dcgan-client: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"dcgan-client: {err}", file=sys.stderr)
        return 2


def _generate(client: GeneratorClient, args) -> int:
    seeds = parse_seeds(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.grid:
        response = client.generate_response(seeds, args.label, args.model, "grid")
        (out / "grid.png").write_bytes(response.grid_png)
        print(f"wrote {out / 'grid.png'} ({len(seeds)} images, model {response.model})")
        return 0
    responses = (client.generate_stream(seeds=seeds, labels=args.label, model=args.model,
                                        format="png") if args.stream
                 else [client.generate_response(seeds, args.label, args.model, "png")])
    written = 0
    for response in responses:
        for i, (seed, png) in enumerate(zip(response.seeds, response.png)):
            suffix = f"_label{response.labels[i]}" if response.labels else ""
            (out / f"seed_{seed}{suffix}.png").write_bytes(png)
            written += 1
    print(f"wrote {written} PNGs to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
