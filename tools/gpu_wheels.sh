#!/usr/bin/env bash
# What the GPU machine lacks for bench/cuda.py, fetched here (it reaches no registry) into the
# ignored folder .whl/, the CUDA build of onnxruntime cut into pieces that fit one device call
# beside the working tree (64 MiB in all), plus fp16 copies of the bundled models.
#
#   bash tools/gpu_wheels.sh          # then, on the device, in quick succession (warm 30 s):
#   call k (one per piece):  carry [".whl/ort/part-XX"]   command: mkdir -p /tmp/ort && cp .whl/ort/part-* /tmp/ort/ && ls -l /tmp/ort
#   last call: carry [".whl/small"]   command:
#     cat /tmp/ort/part-* > /tmp/ort/$(cat .whl/small/ORT_WHEEL) && sha256sum -c .whl/small/SHA256 &&
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/ort/*.whl .whl/small/*.whl &&
#     PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 bench/cuda.py --out $OUT/cuda.json
set -euo pipefail
cd "$(dirname "$0")/.."
ORT=onnxruntime-gpu==1.31.1  # built for CUDA 13, which the lent machines' libraries match
PIECE=40M                    # the working tree is about 15 MB
rm -rf .whl/ort .whl/small && mkdir -p .whl/ort .whl/small
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
get() {  # a cp312 manylinux wheel, no dependencies (the machine has numpy, protobuf, ...)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$1" "$2"
}
get .whl/tmp "$ORT"
wheel=$(ls .whl/tmp/onnxruntime_gpu-*.whl)
basename "$wheel" > .whl/small/ORT_WHEEL
(cd .whl/tmp && sha256sum "$(basename "$wheel")" | sed 's#  #  /tmp/ort/#') > .whl/small/SHA256
split -b "$PIECE" -d "$wheel" .whl/ort/part-
for pin in grpcio==1.78.2 grpcio-health-checking==1.78.2 grpcio-reflection==1.78.2 \
           onnx2torch==1.5.15; do
  get .whl/small "$pin"
done
for model in models/*.onnx; do
  .venv-test/bin/python tools/quantize_model.py --precision fp16 "$model" \
    ".whl/small/$(basename "$model" .onnx)-fp16.onnx"
done
rm -rf .whl/tmp
ls -l .whl/ort .whl/small
