"""pyproject.toml's dependency split, checked against what the code imports.

The worker image installs the project's dependencies and its `worker` extra and nothing else
(deploy/docker/requirements.lock), so those must be what the worker imports, and the worker must not
import the model's stack (torch, transformers) or the training and reporting one (pandas, scikit-learn,
matplotlib), which the development environment has installed anyway.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
HEAVY = ("torch", "transformers", "pandas", "sklearn", "matplotlib")
EXTRAS = {"worker", "train", "bench", "embedded", "dev"}

# Every module of the service, and what it imports lazily on the worker's paths (the gRPC client, the
# admin client, the web server): then the names of the top-level packages loaded.
WORKER_IMPORTS = """
import importlib, pkgutil, sys
import streams
for module in pkgutil.walk_packages(streams.__path__, "streams."):
    importlib.import_module(module.name)
import aiohttp.web, aiokafka.admin, tritonclient.grpc.aio, tritonclient.utils
from streams.__main__ import build_parser
build_parser().parse_args(["worker"])
print(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
"""


def requirements(*groups: str) -> list[Requirement]:
    raw = list(PROJECT["dependencies"])
    for group in groups:
        raw += PROJECT["optional-dependencies"][group]
    return [Requirement(r) for r in raw]


def declared(*groups: str) -> set[str]:
    return {canonicalize_name(r.name) for r in requirements(*groups)}


def test_the_worker_imports_no_model_or_training_package() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WORKER_IMPORTS], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    assert "streams" in loaded and "faust" in loaded, "the probe imported the worker"
    assert not loaded & set(HEAVY), f"the worker imports {sorted(loaded & set(HEAVY))}"
    assert "tooling" not in loaded and "benchmarks" not in loaded


def third_party_imports(root: Path) -> dict[str, set[str]]:
    """Distribution -> the files of `root` that import one of its modules."""
    owners = metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("streams", "fusion", "tooling"):
                    continue
                for dist in owners.get(top, [top]):
                    found.setdefault(canonicalize_name(dist), set()).add(str(path.relative_to(REPO_ROOT)))
    return found


def test_every_package_the_service_imports_is_a_worker_dependency() -> None:
    """streams/ (and fusion.preprocess and fusion.errors, which it shares with the model) import only
    what the project's dependencies and its `worker` extra declare, by name, not by luck of a
    transitive dependency."""
    imports = third_party_imports(REPO_ROOT / "streams")
    for shared in ("preprocess.py", "errors.py", "__init__.py"):
        for dist, files in third_party_imports(REPO_ROOT / "fusion" / shared).items():
            imports.setdefault(dist, set()).update(files)
    undeclared = {d: sorted(f) for d, f in imports.items() if d not in declared("worker")}
    assert not undeclared, f"imported but not declared in pyproject's dependencies or `worker`: {undeclared}"


def test_the_worker_dependencies_hold_nothing_heavy() -> None:
    heavy = {canonicalize_name(n) for n in ("torch", "transformers", "pandas", "scikit-learn", "matplotlib")}
    assert not heavy & declared("worker")
    assert {"torch", "transformers", "pandas", "scikit-learn", "matplotlib"} <= declared("train")
    assert set(PROJECT["optional-dependencies"]) == EXTRAS


def test_numpy_is_capped_below_2_only_for_the_triton_stub() -> None:
    """The cap is in `embedded` (the embedded Triton's stub shares the environment's numpy) and in the
    Triton image's lock; the worker takes any numpy it was tested with."""
    capped = set()
    for group in ("", *EXTRAS):
        reqs = requirements(group) if group else requirements()
        if any(r.name == "numpy" and not r.specifier.contains("2.0.0") for r in reqs):
            capped.add(group)
    core_numpy = [r for r in requirements() if r.name == "numpy"]
    assert core_numpy and core_numpy[0].specifier.contains("2.1.0")
    assert "embedded" in capped
    assert metadata.version("numpy").startswith("1."), "this environment serves the embedded Triton"


def test_requires_python_is_the_interpreter_that_is_tested() -> None:
    allowed = SpecifierSet(PROJECT["requires-python"])
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert allowed.contains(f"{here}.0"), f"the tests run on {here}, outside {allowed}"
    worker = (REPO_ROOT / "deploy" / "docker" / "worker.Dockerfile").read_text()
    assert f"python:{here}." in worker, "the worker image runs the interpreter the tests run on"


def test_the_licence_is_apache_2_in_full() -> None:
    text = (REPO_ROOT / "LICENSE").read_text()
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 150
