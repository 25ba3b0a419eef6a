#!/usr/bin/env bash
# The peers' own virtual environments for bench/compare_servers.py, pinned:
#   bash bench/peers/setup.sh .bench-venvs
# Fixes these machines need (../shared/notes/peer-servers.md): MLServer wants uvloop < 0.22;
# PyTriton wants LD_LIBRARY_PATH at the interpreter's LIBDIR (compare_servers.py sets it).
set -euo pipefail
DIR=${1:-.bench-venvs}
ORT="onnxruntime==1.32.0"  # the same runtime as the service
mkvenv() { [ -x "$DIR/$1/bin/python" ] || python3 -m venv "$DIR/$1"; }
mkvenv kserve && "$DIR/kserve/bin/pip" install -q "kserve==0.21.0" "$ORT"
mkvenv mlserver && "$DIR/mlserver/bin/pip" install -q "mlserver==1.7.1" "uvloop<0.22" "$ORT"
mkvenv pytriton && "$DIR/pytriton/bin/pip" install -q "nvidia-pytriton==0.7.0" "$ORT"
echo "peers installed in $DIR"
