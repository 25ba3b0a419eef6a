# syntax=docker/dockerfile:1
# dcgan-digits images. Targets:
#   serve       (default, the last stage) CPU serving image: onnxruntime, no torch, no compiler, non-root
#   serve-cuda  GPU serving image: onnxruntime-gpu on an NVIDIA CUDA runtime base (--gpus all)
#   train       the training CLI with torch (CUDA build on x86-64 Linux from PyPI)
#
#   docker build -t dcgan-serve .
#   docker run --rm -p 50051:50051 -p 8080:8080 -p 9090:9090 dcgan-serve
#   docker build --target serve-cuda -t dcgan-serve:cuda . && docker run --gpus all ...
#   docker build --target train -t dcgan-train . && docker run --rm -v "$PWD/runs:/runs" dcgan-train train --out /runs/mnist
#
# BASE_IMAGE may be any Debian-like image with python3 and python3-venv (the tests build on a
# local Debian 12 base); nothing below relies on what only the official image has.
ARG BASE_IMAGE=python:3.11-slim
ARG CUDA_BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# --- src: the files every install needs, copied once ------------------------------------------
FROM scratch AS src
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
COPY models ./models

# --- build: install the serving package into a venv that the final stage copies -----------
FROM ${BASE_IMAGE} AS build
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY --from=src /src ./
# The base dependency set is the serving set: onnxruntime, numpy, grpcio, protobuf,
# prometheus-client, pillow. No torch.
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

# --- serve-cuda: onnxruntime-gpu on the CUDA runtime ------------------------------------------
FROM ${CUDA_BASE_IMAGE} AS serve-cuda
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin dcgan
WORKDIR /src
COPY --from=src /src ./
# onnxruntime and onnxruntime-gpu must never share an environment (the CUDA provider would
# silently disappear): install the package, then swap the runtime.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && /opt/venv/bin/pip uninstall --yes onnxruntime \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check "onnxruntime-gpu>=1.18,<2" \
    && rm -rf /src
WORKDIR /
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 DCGAN_HOST=0.0.0.0 DCGAN_PORT=50051 \
    DCGAN_HTTP_PORT=8080 DCGAN_HEALTH_PORT=50052 DCGAN_METRICS_PORT=9090 DCGAN_DEVICE=cuda ORT_DISABLE_TELEMETRY=1
USER 10001
EXPOSE 50051 50052 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "p=${DCGAN_HEALTH_PORT:--1}; [ \"$p\" -gt 0 ] || p=$DCGAN_PORT; dcgan-client --address 127.0.0.1:$p --timeout 2 health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["dcgan-serve"]

# --- train: the training CLI ----------------------------------------------------------------
FROM ${BASE_IMAGE} AS train
RUN useradd --system --uid 10001 --create-home dcgan
WORKDIR /src
COPY --from=src /src ./
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check ".[train,tensorboard]"
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 DCGAN_CACHE_DIR=/home/dcgan/.cache/dcgan-digits
USER 10001
WORKDIR /home/dcgan
ENTRYPOINT ["dcgan-train"]
CMD ["--help"]

# --- serve: the small CPU serving image -----------------------------------------------------
FROM ${BASE_IMAGE} AS serve
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin dcgan
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DCGAN_HOST=0.0.0.0 \
    DCGAN_PORT=50051 \
    DCGAN_HTTP_PORT=8080 \
    DCGAN_HEALTH_PORT=50052 \
    DCGAN_METRICS_PORT=9090 \
    DCGAN_LOG_LEVEL=INFO \
    ORT_DISABLE_TELEMETRY=1
USER 10001
EXPOSE 50051 50052 8080 9090
# The gRPC health service on its plaintext health-only port, as Kubernetes probes see it, so
# a TLS or mutual-TLS server still turns healthy; with DCGAN_HEALTH_PORT=-1, the gRPC port
# (plaintext only: the server refuses TLS without a health port).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/bin/sh", "-c", "p=${DCGAN_HEALTH_PORT:--1}; [ \"$p\" -gt 0 ] || p=$DCGAN_PORT; dcgan-client --address 127.0.0.1:$p --timeout 2 health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["dcgan-serve"]
