# syntax=docker/dockerfile:1
# The stream worker: `python -m streams worker` (and `create-topics`, the one-shot that runs first).
# Build from the repository root:  docker build -f deploy/docker/worker.Dockerfile -t ecom-enrichment/worker .
# Pinned by digest beside the tag: the multi-platform index that docker-library/repo-info records for
# this tag (docs/security.md, "Images"). A rebuilt tag does not change what is built here.
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, so a source change reuses this layer: exactly the hashed lock (the versions the
# tests ran with; deploy/docker/lock.py), every file checked against its hash. The worker never runs the
# model, so no torch, transformers, pandas, scikit-learn or matplotlib (tests/unit/test_dependencies.py).
COPY deploy/docker/requirements.lock deploy/docker/requirements.lock
# hnswlib (the content index, docs/recommendations.md) ships only a source distribution: a compiler to
# build it here, and portable code (its build would otherwise target this machine's CPU: -march=native).
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*
ENV HNSWLIB_NO_NATIVE=1
RUN pip install --require-hashes -r deploy/docker/requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY streams streams
COPY fusion fusion
# --no-deps: everything is installed above; --no-build-isolation: setuptools is in the lock.
RUN pip install --no-deps --no-build-isolation . \
 && python -c "import streams.app, streams.worker, fusion.preprocess, faust, tritonclient.grpc, rocksdict, hnswlib" \
 && python -c "import importlib.util as u; bad = [m for m in ('torch', 'transformers', 'pandas', 'sklearn', 'matplotlib') if u.find_spec(m)]; assert not bad, bad"

FROM ${PYTHON_IMAGE} AS runtime
# A fixed numeric uid, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid 10001 ecom \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/ecom --shell /usr/sbin/nologin ecom \
 && mkdir -p /var/lib/ecom \
 && chown 10001:10001 /var/lib/ecom
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    ECOM_WEB_PORT=6066
# Faust keeps its data directory (table state, `<app id>-data`) under the working directory; with a
# read-only root file system this is the one writable place (an emptyDir / tmpfs in k8s and compose).
WORKDIR /var/lib/ecom
USER 10001:10001
EXPOSE 6066
ENTRYPOINT ["python", "-m", "streams"]
CMD ["worker"]
