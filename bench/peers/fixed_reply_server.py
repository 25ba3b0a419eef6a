"""A gRPC server that answers every Generate call with the same 800 bytes: what gRPC itself costs.

    python bench/peers/fixed_reply_server.py aio PORT
    python bench/peers/fixed_reply_server.py sync PORT     # grpc.server, 8 threads

No model, no validation, no metrics: the floor under any Python gRPC service on this machine,
for bench/call_cost.py. It answers /dcgan.v1.GeneratorService/Generate and ignores the request.
"""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc

REPLY = b"\x00" * 800  # about a raw 28x28 image and its message fields


def _handlers(handler):
    same = lambda data: data  # noqa: E731 - bytes in, bytes out: no (de)serialisation
    return (grpc.method_handlers_generic_handler("dcgan.v1.GeneratorService", {
        "Generate": grpc.unary_unary_rpc_method_handler(handler, same, same)}),)


async def _serve_aio(port: int) -> None:
    async def generate(request, context):
        return REPLY
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(_handlers(generate))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening on {port}", flush=True)
    await server.wait_for_termination()


def _serve_sync(port: int) -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers(_handlers(lambda request, context: REPLY))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"listening on {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "aio":
        asyncio.run(_serve_aio(port))
    elif mode == "sync":
        _serve_sync(port)
    else:
        raise SystemExit(f"mode must be aio or sync, not {mode!r}")
