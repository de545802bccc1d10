#!/usr/bin/env bash
# The GPU benchmark in one command, on a machine without TensorFlow or a package registry.
#
#   bash bench/gpu_run.sh [bench.gpu flags]     # e.g. --quick for a CPU smoke run
#
# Where Keras is missing, installs the wheels carried in .whl/ (Keras, namex, optree: see bench/gpu.py
# for the download command) into /tmp/site, then runs `python -m bench.gpu` on
# the JAX backend, unbuffered, writing the table and JSON to $OUT when it is
# set (bench/results/ otherwise) with a copy of everything printed in
# gpu-run.log there (there also when --out names another folder for the
# table). PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "import importlib.util as u; assert u.find_spec('keras')" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
out=${OUT:-bench/results}
mkdir -p "$out"
"$PYTHON" -m bench.gpu --out "$out" "$@" 2>&1 | tee "$out/gpu-run.log"
