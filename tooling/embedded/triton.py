"""The real `tritonserver` (2.51, Python backend only) shipped in the `nvidia-pytriton` wheel.

What it takes to run a `model.py` that imports torch from this virtual environment:
a backend directory holding the Python backend plus the stub for the running interpreter; the
interpreter's LIBDIR first on LD_LIBRARY_PATH (else the stub loads the system libpython); the
environment's `bin/` first on PATH so the stub sees this environment's site-packages; numpy < 2.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from tooling.embedded.process import ManagedProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "triton_models"


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
    """`tritonserver` on free loopback ports, serving `model_repository` (explicit model control)."""

    def __init__(
        self,
        model_repository: Path = DEFAULT_MODEL_REPOSITORY,
        models: Sequence[str] = ("ecom_fusion",),
        *,
        model_config_name: str | None = None,
        log_dir: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.model_repository = model_repository
        self.models = list(models)
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
