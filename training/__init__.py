"""Offline training package: data -> models -> training loop -> checkpoints/samples -> ONNX export.

Entry point: `dcgan-train` (training.cli). Torch is needed here, never in `service`.
"""
