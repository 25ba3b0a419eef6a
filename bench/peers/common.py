"""What every peer server shares: the ONNX session, set up as this project's runtime does."""

from __future__ import annotations

import os

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


def announce(port: int) -> None:
    """The line bench/compare_servers.py waits for."""
    print(f"PEER READY port={port} pid={os.getpid()}", flush=True)
