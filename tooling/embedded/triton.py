"""The real `tritonserver` (2.51, Python backend only) shipped in the `nvidia-pytriton` wheel.

What it takes to run a `model.py` that imports torch from this virtual environment:
a backend directory holding the Python backend plus the stub for the running interpreter; the
interpreter's LIBDIR first on LD_LIBRARY_PATH (else the stub loads the system libpython); the
environment's `bin/` first on PATH so the stub sees this environment's site-packages; numpy < 2.

Triton's control plane is closed as in the deployments (docs/security.md): the server runs in explicit
model-control mode, and the APIs that change what it runs or where it writes (`RESTRICTED_APIS`) answer
only requests that carry the admin key, on HTTP and on gRPC. The key is random per start unless one is
given, and exposed as `TritonServer.admin_key` (`admin_headers()` for either protocol).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
import sysconfig
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

from tooling.embedded.process import ManagedProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "triton_models"

# Triton's API groups that only an admin may call, the same in docker-compose.yml and k8s/ (tests/deploy
# checks it): model-repository loads (with client-supplied config and files: code that then runs inside
# Triton) and unloads models; shared-memory maps shared-memory regions by name; trace and logging set
# the paths Triton writes its trace and log files to. Health, metadata, model-config, statistics and
# inference stay open: the workers and the probes use them.
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
# The header that carries the key. Over gRPC Triton expects the metadata key with this prefix.
ADMIN_HEADER = "admin-key"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
# What a key may contain: Triton splits the flag's value on `,`, `:` and `=`.
_KEY = re.compile(r"[A-Za-z0-9._~-]{16,}")


def restricted_api_args(admin_key: str) -> list[str]:
    """The `tritonserver` flags that restrict `RESTRICTED_APIS` to requests carrying `admin_key`."""
    if not _KEY.fullmatch(admin_key):
        raise ValueError(
            "the Triton admin key must be at least 16 characters of A-Z a-z 0-9 . _ ~ - "
            "(e.g. `openssl rand -hex 32`)"
        )
    rule = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={admin_key}"
    return [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]


def _pytriton_root() -> Path:
    import pytriton  # imported here: only the embedded default needs it

    return Path(pytriton.__file__).resolve().parent


def tritonserver_binary() -> Path:
    return _pytriton_root() / "tritonserver" / "bin" / "tritonserver"


def build_backend_dir(target: Path) -> Path:
    """`<target>/python/` = the Python backend + the stub for this interpreter's version."""
    server = _pytriton_root() / "tritonserver"
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for item in (server / "backends" / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, python_dir / item.name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise FileNotFoundError(f"nvidia-pytriton ships no Python backend stub for Python {version}")
    shutil.copy2(stub, python_dir / stub.name)
    return target


def server_environment() -> dict[str, str]:
    env = dict(os.environ)
    site_packages = Path(sysconfig.get_paths()["purelib"])
    libdirs = [str(sysconfig.get_config_var("LIBDIR")), str(site_packages / "nvidia_pytriton.libs")]
    if env.get("LD_LIBRARY_PATH"):
        libdirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libdirs)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = sys.prefix
    # Weights come from installed packages and the model repository; never from a hub.
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    return env


class TritonServer:
    """`tritonserver` on free loopback ports, serving `model_repository` (explicit model control: the
    `models` are loaded at start; loading or unloading later takes the admin key)."""

    def __init__(
        self,
        model_repository: Path = DEFAULT_MODEL_REPOSITORY,
        models: Sequence[str] = ("ecom_fusion",),
        *,
        model_config_name: str | None = None,
        log_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        admin_key: str | None = None,
    ) -> None:
        self.model_repository = model_repository
        self.models = list(models)
        self.admin_key = admin_key if admin_key is not None else secrets.token_hex(32)
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="ecom-triton-"))
        log_dir = log_dir or self.workdir
        argv = [
            str(tritonserver_binary()),
            f"--model-repository={model_repository}",
            f"--backend-directory={self.workdir / 'backends'}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--model-control-mode=explicit",
            *(f"--load-model={name}" for name in self.models),
            "--exit-on-error=true",
            "--log-verbose=0",
            *restricted_api_args(self.admin_key),
            *extra_args,
        ]
        if model_config_name:
            argv.append(f"--model-config-name={model_config_name}")
        self.process = ManagedProcess(
            "tritonserver", argv, log_path=log_dir / "triton.log", env=server_environment()
        )

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def admin_headers(self, protocol: Literal["http", "grpc"] = "http") -> dict[str, str]:
        """Headers (HTTP) or metadata (gRPC, `protocol="grpc"`) that authorise the restricted APIs."""
        name = ADMIN_HEADER if protocol == "http" else GRPC_HEADER_PREFIX + ADMIN_HEADER
        return {name: self.admin_key}

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except urllib.error.URLError:
            return False

    def start(self, timeout: float = 180.0) -> TritonServer:
        build_backend_dir(self.workdir / "backends")
        self.process.start(self.ready, timeout)
        return self

    def stop(self) -> None:
        self.process.stop()
        shutil.rmtree(self.workdir / "backends", ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
