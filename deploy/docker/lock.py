"""Write the images' hashed locks, pinned to the versions the tests ran with.

    .venv/bin/python deploy/docker/lock.py

Run after changing dependencies in pyproject.toml (needs PyPI, for the hashes). Two files:

- `requirements.lock`: the worker image. The project's dependencies and its `worker` extra (and the
  setuptools that builds the project), for Python 3.11 on Linux. No torch: the worker never runs
  the model (tests/unit/test_dependencies.py checks its imports).
- `triton-requirements.lock`: what the Triton image adds for model.py, for that image's Python 3.12:
  numpy < 2 (the Python backend stub garbles BYTES tensors with numpy 2), transformers, tokenizers,
  safetensors, pillow, and the fast CPU runtimes (openvino, onnxruntime). torch is not in it: its
  build depends on the index the Dockerfile names (CUDA from PyPI or the CPU index), and it is pinned
  by version there.

Both are resolved by `uv pip compile --generate-hashes`, constrained to the versions installed in this
environment, so the images get what CI tested, and `pip install --require-hashes` refuses any file
whose hash differs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name

DOCKER = Path(__file__).resolve().parent
REPO_ROOT = DOCKER.parents[1]
WORKER_LOCK = DOCKER / "requirements.lock"
TRITON_LOCK = DOCKER / "triton-requirements.lock"
BUILD_REQUIREMENTS = ["setuptools>=77"]  # pyproject.toml [build-system]; the image builds without isolation
# model.py's imports besides torch; openvino and onnxruntime are the fast CPU runtimes the configs'
# `runtime` parameter selects (fusion.fast; without them the model serves torch, slower).
TRITON_REQUIREMENTS = [
    "numpy>=1.26,<2", "transformers", "tokenizers", "safetensors", "pillow", "openvino", "onnxruntime",
]  # fmt: skip
COMMAND = "python deploy/docker/lock.py"


def installed_versions() -> list[str]:
    """`name==version` for every distribution in this environment (local labels such as torch's
    "+cpu" name an index, not a release), the project itself left out."""
    pins = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name != "ecom-enrichment":
            pins[name] = re.sub(r"\+.*$", "", dist.version)
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(found).exists():
        raise SystemExit("uv is not installed: pip install -e '.[dev]'")
    return found


def compile_lock(
    inputs: list[str], requirements: list[str], python: str, out: Path, extras: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("\n".join(installed_versions()) + "\n")
        extra_in = Path(tmp) / "requirements.in"
        extra_in.write_text("\n".join(requirements) + "\n")
        argv = [
            uv(), "pip", "compile", *inputs, str(extra_in),
            *(f"--extra={extra}" for extra in extras),
            "--constraint", str(constraints),
            # Resolved for the images' interpreter on Linux; every file of each pinned release is
            # hashed, so the lock serves amd64 and arm64 builds alike.
            "--generate-hashes", "--python-version", python, "--python-platform", "x86_64-manylinux_2_28",
            "--index-url", "https://pypi.org/simple",
            "--custom-compile-command", COMMAND,
            "--no-annotate", "--quiet", "--output-file", str(out),
        ]  # fmt: skip
        subprocess.run(argv, cwd=REPO_ROOT, check=True)
        # The lock starts with a comment naming its command (--custom-compile-command), and nothing
        # of the temporary files.
        assert tmp not in out.read_text(), "a temporary path is in the lock"


def main() -> None:
    compile_lock(["pyproject.toml"], BUILD_REQUIREMENTS, "3.11", WORKER_LOCK, extras=["worker"])
    compile_lock([], TRITON_REQUIREMENTS, "3.12", TRITON_LOCK, extras=[])
    for lock in (WORKER_LOCK, TRITON_LOCK):
        pins = sum(1 for line in lock.read_text().splitlines() if re.match(r"^[A-Za-z0-9]", line))
        print(f"wrote {pins} pins with hashes to {lock.relative_to(REPO_ROOT)}")  # noqa: T201


if __name__ == "__main__":
    main()
