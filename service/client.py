"""The Python client library and the `dcgan-client` CLI.

    with GeneratorClient("127.0.0.1:50051") as client:
        images = client.generate([0, 1, 2], labels=[7])     # uint8 [3, 28, 28]
        for chunk in client.generate_stream(start=0, count=100_000):
            ...                                             # uint8 [k, 28, 28] per chunk

    dcgan-client generate --seed 0-15 --label 7 --grid --out digits/
    dcgan-client dataset --model mnist --per-class 6000 --out synthetic/   # MNIST's IDX files
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

import grpc
import numpy as np

from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
from service.contract import SeedRanges, as_psi, parse_seeds, seed_ranges
from service.imaging import decode_png
from service.settings import argument_type

FORMATS = {"raw": pb.IMAGE_FORMAT_RAW, "png": pb.IMAGE_FORMAT_PNG,
           "grid": pb.IMAGE_FORMAT_PNG_GRID}
METHODS = {"slerp": pb.INTERPOLATION_SLERP, "lerp": pb.INTERPOLATION_LERP}


def images_from_response(response: pb.GenerateResponse) -> np.ndarray:
    """uint8 [N, H, W] from a RAW or PNG response (a PNG_GRID response holds one picture)."""
    if response.format == pb.IMAGE_FORMAT_PNG:
        return np.stack([decode_png(p) for p in response.png])
    if response.format == pb.IMAGE_FORMAT_PNG_GRID:
        return decode_png(response.grid_png)[None]
    return np.frombuffer(response.raw, dtype=np.uint8).reshape(
        response.count, response.height, response.width)


class GeneratorClient:
    """A thin, typed wrapper over the generated stub; `stub` is there for anything else
    (with `metadata=client.metadata` where the server asks for a token)."""

    def __init__(self, address: str = "127.0.0.1:50051", timeout: float | None = 30.0,
                 max_message_bytes: int = 64 << 20, channel: grpc.Channel | None = None,
                 tls_ca: bytes | None = None, tls_cert: bytes | None = None,
                 tls_key: bytes | None = None, tls: bool = False, token: str = ""):
        """`tls` (or any tls_* PEM bytes) connects over TLS; `tls_cert`/`tls_key` present a
        client certificate (mutual TLS); `token` is sent as a bearer token on every call."""
        self.timeout = timeout
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if channel is None and (tls or tls_ca or tls_cert):
            creds = grpc.ssl_channel_credentials(root_certificates=tls_ca, private_key=tls_key,
                                                 certificate_chain=tls_cert)
            channel = grpc.secure_channel(address, creds, options=options)
        self.channel = channel or grpc.insecure_channel(address, options=options)
        self.metadata = [("authorization", f"Bearer {token}")] if token else None
        self.stub = pb_grpc.GeneratorServiceStub(self.channel)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.channel.close()

    def generate_response(self, seeds: Sequence[int], labels: Sequence[int] = (),
                          model: str = "", format: str = "raw", psi: float | None = None,
                          latents: np.ndarray | None = None, version: str = ""
                          ) -> pb.GenerateResponse:
        request = pb.GenerateRequest(seeds=list(seeds), labels=list(labels), model=model,
                                     model_version=version, format=FORMATS[format], psi=psi)
        if latents is not None:
            request.latents = np.ascontiguousarray(latents, "<f4").tobytes()
        return self.stub.Generate(request, timeout=self.timeout, metadata=self.metadata)

    def generate(self, seeds: Sequence[int] = (), labels: Sequence[int] = (), model: str = "",
                 psi: float | None = None, latents: np.ndarray | None = None,
                 version: str = "") -> np.ndarray:
        """uint8 images [N, H, W] for the seeds, or for your own float32 `latents` [N, D]
        (RAW transfer, the fastest); `psi` in (0, 1) truncates, None (unset) is 1; `version`
        picks one of the model's served versions (empty: its default)."""
        return images_from_response(self.generate_response(seeds, labels, model, psi=psi,
                                                           latents=latents, version=version))

    def interpolate_response(self, seed_a: int, seed_b: int, frames: int,
                             method: str = "slerp", labels: Sequence[int] = (),
                             model: str = "", format: str = "raw", psi: float | None = None,
                             version: str = "") -> pb.GenerateResponse:
        return self.stub.Interpolate(pb.InterpolateRequest(
            seed_a=seed_a, seed_b=seed_b, frames=frames, method=METHODS[method],
            labels=list(labels), model=model, model_version=version, format=FORMATS[format],
            psi=psi), timeout=self.timeout, metadata=self.metadata)

    def interpolate(self, seed_a: int, seed_b: int, frames: int, method: str = "slerp",
                    labels: Sequence[int] = (), model: str = "", psi: float | None = None,
                    version: str = "") -> np.ndarray:
        """uint8 frames [frames, H, W] from seed_a's image to seed_b's."""
        return images_from_response(self.interpolate_response(
            seed_a, seed_b, frames, method, labels, model, psi=psi, version=version))

    def generate_stream(self, start: int | None = None, count: int | None = None,
                        seeds: Sequence[int] | None = None, labels: Sequence[int] = (),
                        model: str = "", chunk_size: int = 0, psi: float | None = None,
                        version: str = "") -> Iterator[np.ndarray]:
        """uint8 images [k, H, W] chunk by chunk, for a seed range (start, count) or a seed
        list, in order (RAW transfer)."""
        for response in self.generate_stream_responses(start, count, seeds, labels, model,
                                                       chunk_size, "raw", psi, version):
            yield images_from_response(response)

    def generate_stream_responses(self, start: int | None = None, count: int | None = None,
                                  seeds: Sequence[int] | None = None,
                                  labels: Sequence[int] = (), model: str = "",
                                  chunk_size: int = 0, format: str = "raw",
                                  psi: float | None = None, version: str = ""
                                  ) -> Iterator[pb.GenerateResponse]:
        """The stream's messages themselves (seeds, labels, RAW or PNG images, model version)."""
        request = pb.GenerateStreamRequest(labels=list(labels), model=model,
                                           model_version=version, format=FORMATS[format],
                                           chunk_size=chunk_size, psi=psi)
        if seeds is not None:
            request.list.seeds.extend(seeds)
        else:
            request.range.start, request.range.count = start or 0, count or 0
        # No overall timeout: a 100k-image stream can legitimately take minutes.
        return self.stub.GenerateStream(request, metadata=self.metadata)

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout,
                                         metadata=self.metadata).models)


# --- CLI --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcgan-client",
                                description="Ask a dcgan-serve server for generated images.")
    p.add_argument("--address", default="127.0.0.1:50051",
                   help="server host:port (default 127.0.0.1:50051)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")
    p.add_argument("--tls", action="store_true",
                   help="connect over TLS, trusting the system's CAs (or --tls-ca)")
    p.add_argument("--tls-ca", help="PEM CA bundle to trust for the server's certificate")
    p.add_argument("--tls-cert", help="PEM client certificate (mutual TLS)")
    p.add_argument("--tls-key", help="PEM key of --tls-cert")
    p.add_argument("--token-file",
                   help="file with the bearer token to send (or set DCGAN_AUTH_TOKEN)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    g = sub.add_parser("generate", help="write PNGs for seeds")
    g.add_argument("--seed", action="append", required=True, metavar="SEEDS",
                   help="seed, range or list: 7, 0-15, 3,9,20-22 (repeatable)")
    g.add_argument("--out", default="generated", help="output folder (default generated/)")
    g.add_argument("--grid", action="store_true", help="write one grid.png instead of one per seed")
    g.add_argument("--stream", action="store_true",
                   help="use GenerateStream (for more seeds than one request allows)")
    i = sub.add_parser("interpolate", help="write the frames from one seed's image to "
                                           "another's: frame_*.png, strip.png, "
                                           "interpolation.gif")
    i.add_argument("seed_a", type=int)
    i.add_argument("seed_b", type=int)
    i.add_argument("--frames", type=int, default=16, help="frames, both ends included")
    i.add_argument("--method", choices=sorted(METHODS), default="slerp")
    i.add_argument("--out", default="interpolation", help="output folder")
    for command in (g, i):
        command.add_argument("--label", action="append", type=int, default=[], metavar="N",
                             help="class for conditional models: one for all seeds (every "
                                  "frame) or one per seed")
    d = sub.add_parser("dataset", help="write a labelled synthetic dataset in MNIST's IDX "
                                       "format (gzip), resumable (see service/idx_dataset.py)")
    d.add_argument("--per-class", type=int, required=True, metavar="N",
                   help="train images per class")
    d.add_argument("--test-per-class", type=int, metavar="M",
                   help="test images per class (default N/6, as MNIST's 60,000 / 10,000)")
    d.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    d.add_argument("--chunk-size", type=int, default=0,
                   help="images per streamed message (default: the most that fit)")
    d.add_argument("--out", default="synthetic", help="output folder (default synthetic/)")
    for command in (g, i, d):
        command.add_argument("--psi", type=argument_type(as_psi, "psi"),
                             help="truncation in (0, 1]; unset (default) is 1, none")
        command.add_argument("--model", default="",
                             help="model name (default: the server's default)")
        command.add_argument("--model-version", default="",
                             help="one of the model's served versions (default: its default)")
    sub.add_parser("info", help="list the server's models")
    h = sub.add_parser("health", help="exit 0 if the server (or one model) is SERVING, else 1 "
                                      "(for container HEALTHCHECKs and scripts)")
    h.add_argument("--service", default="",
                   help="health service name: '' (overall), dcgan.v1.GeneratorService, or "
                        "model/<name>")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
        token = (Path(args.token_file).read_text().strip() if args.token_file
                 else os.environ.get("DCGAN_AUTH_TOKEN", ""))
        with GeneratorClient(args.address, timeout=args.timeout, tls=args.tls,
                             tls_ca=read(args.tls_ca), tls_cert=read(args.tls_cert),
                             tls_key=read(args.tls_key), token=token) as client:
            if args.command == "health":
                return _health(client, args.service)
            if args.command == "info":
                for m in client.list_models():
                    classes = f", classes: {', '.join(m.class_names)}" if m.num_classes else ""
                    print(f"{m.name}{' (default)' if m.is_default else ''}: {m.arch} on "
                          f"{m.dataset}, version {m.version}, latent {m.latent_dim}, "
                          f"{m.height}x{m.width}, providers {', '.join(m.execution_providers)}"
                          f"{classes}")
                return 0
            if args.command == "interpolate":
                return _interpolate(client, args)
            if args.command == "dataset":
                from service.idx_dataset import write_dataset
                write_dataset(client, Path(args.out), args.per_class,
                              args.test_per_class or max(1, args.per_class // 6), args.model,
                              args.model_version, args.start, args.psi, args.chunk_size)
                return 0
            return _generate(client, args)
    except grpc.RpcError as err:
        print(f"dcgan-client: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:
        print(f"dcgan-client: {err}", file=sys.stderr)
        return 2


def _health(client: GeneratorClient, service: str) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    status = health_pb2_grpc.HealthStub(client.channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=client.timeout).status
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(name)
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


#: Most seeds `--stream` sends as a list; a single range A-B streams any number.
MAX_LISTED_SEEDS = 1_000_000


def _generate(client: GeneratorClient, args) -> int:
    # Check the count against the server's limit before listing a single seed: a typo such as
    # 0-9999999 must not build and send ten million of them.
    ranges = seed_ranges(args.seed)
    count = len(SeedRanges(ranges))
    # Zero-padded to the widest seed, so the files sort in seed order (seed_02 before seed_10).
    width = len(str(max((last for _, last in ranges), default=0)))
    if args.stream and len(ranges) == 1:
        (first, last), = ranges
        responses = client.generate_stream_responses(start=first, count=count, labels=args.label,
                                                     model=args.model, format="png", psi=args.psi,
                                                     version=args.model_version)
        return _write(responses, Path(args.out), width)
    if args.stream:
        if count > MAX_LISTED_SEEDS:
            raise ValueError(f"{count} seeds in a list: stream at most {MAX_LISTED_SEEDS} that "
                             "way, or give one range A-B")
        responses = client.generate_stream_responses(
            seeds=parse_seeds(args.seed), labels=args.label, model=args.model, format="png",
            psi=args.psi, version=args.model_version)
        return _write(responses, Path(args.out), width)
    limit = client.stub.GetModelInfo(pb.GetModelInfoRequest(
        model=args.model, model_version=args.model_version), timeout=client.timeout,
        metadata=client.metadata).max_batch
    if count > limit:
        raise ValueError(f"{count} seeds: the server takes at most {limit} in one request; "
                         "add --stream" + ("" if args.grid else " to have them in chunks"))
    seeds = parse_seeds(args.seed)
    if args.grid:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        response = client.generate_response(seeds, args.label, args.model, "grid", args.psi,
                                            version=args.model_version)
        (out / "grid.png").write_bytes(response.grid_png)
        print(f"wrote {out / 'grid.png'} ({len(seeds)} images, model {response.model})")
        return 0
    return _write([client.generate_response(seeds, args.label, args.model, "png", args.psi,
                                            version=args.model_version)], Path(args.out), width)


def _interpolate(client: GeneratorClient, args) -> int:
    from service.imaging import save_walk
    frames = client.interpolate(args.seed_a, args.seed_b, args.frames, args.method, args.label,
                                args.model, psi=args.psi, version=args.model_version)
    save_walk(frames[:, None], Path(args.out))
    print(f"wrote {len(frames)} frames, strip.png and interpolation.gif to {args.out}")
    return 0


def _write(responses, out: Path, width: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for response in responses:
        for i, (seed, png) in enumerate(zip(response.seeds, response.png)):
            suffix = f"_label{response.labels[i]}" if response.labels else ""
            (out / f"seed_{seed:0{width}d}{suffix}.png").write_bytes(png)
            written += 1
    print(f"wrote {written} PNGs to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
