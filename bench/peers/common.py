"""What every peer server shares: the ONNX session, set up as this project's runtime does."""

from __future__ import annotations

import os
import socket

import numpy as np
import onnxruntime as ort


def open_session(path: str, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: one per core, onnxruntime's default
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run(session: ort.InferenceSession, latents: np.ndarray, labels: np.ndarray | None):
    feeds = {session.get_inputs()[0].name: np.ascontiguousarray(latents, np.float32)}
    if labels is not None and len(session.get_inputs()) > 1:
        feeds[session.get_inputs()[1].name] = np.ascontiguousarray(labels, np.int64).reshape(-1)
    return session.run(None, feeds)[0]


def raw_v2_inputs(request) -> tuple[np.ndarray, np.ndarray | None]:
    """Latents and (if sent) labels from a V2 ModelInferRequest's raw_input_contents."""
    latents = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(
        request.inputs[0].shape)
    labels = (np.frombuffer(request.raw_input_contents[1], np.int64)
              if len(request.raw_input_contents) > 1 else None)
    return latents, labels


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def announce(port: int) -> None:
    """The line bench/compare_servers.py waits for."""
    print(f"PEER READY port={port} pid={os.getpid()}", flush=True)
