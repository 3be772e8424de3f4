"""Writes the Triton model repository files that depend on the trained model.

`config.pbtxt` (CPU instance group, the default) and `configs/gpu.pbtxt` (GPU instance group, selected
with `tritonserver --model-config-name=gpu`) differ only in the instance group and batch limits; both
carry the discoverable parameters of the contract: `model_version_name`, `category_labels` (JSON list),
`embedding_dim`, plus the input limits the model enforces per request.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fusion.network import WEIGHTS_FILE, atomic_write_text
from fusion.preprocess import InputLimits
from fusion.taxonomy import LEAF_NAMES, taxonomy_document

MODEL_NAME = "ecom_fusion"
VERSION = "1"


@dataclass(frozen=True)
class Serving:
    """How Triton runs the model: instances, torch threads each, dynamic batching, max batch."""

    instances: int
    torch_threads: int
    queue_delay_us: int
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    # How the network's towers run (fusion.fast.RUNTIMES); versions whose model.py predates the
    # parameter ignore it and run torch.
    runtime: str = "torch"


# Measured with `python -m benchmarks run` (docs/benchmarks.md, "Tuning"). On the CPU: one instance per
# core with one torch thread each (intra-op threads on a shared 2-core machine cost twice the CPU per
# row); a preferred batch equal to the worker's batch (ECOM_BATCH_MAX_SIZE) stops the dynamic batcher
# from merging the worker's two requests into one execution and leaving the other instance idle.
# OpenVINO on the CPU: the fastest runtime measured for the same outputs (docs/model.md, "Fast CPU
# runtime"); the GPU keeps torch.
CPU_SERVING = Serving(
    instances=2,
    torch_threads=1,
    queue_delay_us=2000,
    max_batch_size=64,
    preferred_batch_sizes=(32,),
    runtime="openvino",
)
GPU_SERVING = Serving(instances=1, torch_threads=2, queue_delay_us=1000, max_batch_size=256)


LABEL_FILE = "category_labels.txt"  # CATEGORY's labels, one per line in index order (write_repository)
# Warm-up data, in Triton's format for TYPE_STRING (each element: a 4-byte little-endian length, then the
# bytes): files under <model>/warmup/ that write_repository writes.
WARMUP_TEXT = b"Soft fabric and a good fit; I would buy it again."
WARMUP_SAMPLES = {"text_only": ("text", "empty"), "text_and_image": ("text", "image")}


def _string_element(data: bytes) -> bytes:
    return len(data).to_bytes(4, "little") + data


def warmup_files() -> dict[str, bytes]:
    """The files that the config's model_warmup names: a text, no image, and a small plain PNG."""
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.new("L", (32, 32), 128).save(png, format="PNG")
    return {
        "text": _string_element(WARMUP_TEXT),
        "empty": _string_element(b""),
        "image": _string_element(png.getvalue()),
    }


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def served_versions(model_dir: Path) -> list[int]:
    """The numbered version folders that hold weights, in order (Triton serves all of them)."""
    return sorted(
        int(d.name) for d in model_dir.iterdir() if d.name.isdigit() and (d / WEIGHTS_FILE).exists()
    )


def version_names(model_dir: Path, versions: Sequence[int]) -> dict[int, str]:
    """Each version's published name, from the `metrics.json` its training wrote beside the weights."""
    names: dict[int, str] = {}
    for number in versions:
        metrics = model_dir / str(number) / "metrics.json"
        if metrics.exists():
            name = json.loads(metrics.read_text()).get("run", {}).get("version_name")
            if name:
                names[number] = str(name)
    return names


def version_policy(versions: Sequence[int]) -> str:
    """Every version with weights is served side by side (a request names the version it wants, the
    latest when it names none, so a rollout can move traffic between them); a folder without weights
    (a training in progress) is never loaded."""
    if not versions:
        return "version_policy: { latest: { num_versions: 1 } }"
    return f"version_policy: {{ specific: {{ versions: [ {', '.join(str(v) for v in versions)} ] }} }}"


def render_config(
    *,
    version_name: str,
    embedding_dim: int,
    kind: str,
    limits: InputLimits,
    serving: Serving,
    versions: Sequence[int] = (),
    version_names: dict[int, str] | None = None,
) -> str:
    """The config text. `version_names` adds `model_version_name@<version>` per version (the shared
    `model_version_name` is the latest's): the service stamps each version's own name on its outputs."""
    labels = json.dumps(list(LEAF_NAMES))
    params = {
        "model_version_name": version_name,
        "category_labels": labels,
        "embedding_dim": str(embedding_dim),
        "sentiment_labels": json.dumps(["negative", "neutral", "positive"]),
        "max_text_bytes": str(limits.max_text_bytes),
        "max_image_bytes": str(limits.max_image_bytes),
        "max_image_pixels": str(limits.max_image_pixels),
        "image_formats": json.dumps(list(limits.formats)),
        "torch_threads": str(serving.torch_threads),
        "runtime": serving.runtime,
    }
    for number, name in sorted((version_names or {}).items()):
        params[f"model_version_name@{number}"] = name
    param_text = "\n".join(
        f'parameters {{ key: "{k}" value {{ string_value: "{_escape(v)}" }} }}' for k, v in params.items()
    )
    preferred = (
        f"\n  preferred_batch_size: [ {', '.join(str(n) for n in serving.preferred_batch_sizes)} ]"
        if serving.preferred_batch_sizes
        else ""
    )
    # Each instance runs these requests before the model is ready (WARMUP_FILES, under warmup/): a
    # review-like row (text only) and a listing-like row (text and image), so readiness means warm.
    samples = []
    for sample, (text_file, image_file) in WARMUP_SAMPLES.items():
        inputs = "\n".join(
            f'    inputs {{ key: "{name}" value: {{ data_type: TYPE_STRING dims: [ 1 ] '
            f'input_data_file: "{file}" }} }}'
            for name, file in (("TEXT", text_file), ("IMAGE", image_file))
        )
        samples.append(f'  {{\n    name: "{sample}"\n    batch_size: 1\n{inputs}\n  }}')
    warmup = "model_warmup [\n" + ",\n".join(samples) + "\n]"
    instance = (
        f"instance_group [ {{ count: {serving.instances}, kind: KIND_GPU, gpus: [ 0 ] }} ]"
        if kind == "gpu"
        else f"instance_group [ {{ count: {serving.instances}, kind: KIND_CPU }} ]"
    )
    return f"""# Generated by fusion.repository (python -m fusion.train --export; serving settings only:
# python -m fusion.repository). Contract: docs/architecture.md; tuning: docs/benchmarks.md.
name: "{MODEL_NAME}"
backend: "python"
max_batch_size: {serving.max_batch_size}
input [
  {{ name: "TEXT", data_type: TYPE_STRING, dims: [ 1 ] }},
  {{ name: "IMAGE", data_type: TYPE_STRING, dims: [ 1 ] }}
]
output [
  {{ name: "SENTIMENT", data_type: TYPE_FP32, dims: [ 3 ] }},
  {{ name: "CATEGORY", data_type: TYPE_FP32, dims: [ {len(LEAF_NAMES)} ], label_filename: "{LABEL_FILE}" }},
  {{ name: "EMBEDDING", data_type: TYPE_FP32, dims: [ {embedding_dim} ] }}
]
dynamic_batching {{{preferred}
  max_queue_delay_microseconds: {serving.queue_delay_us}
}}
{instance}
{version_policy(versions)}
{warmup}
{param_text}
"""


def write_repository(
    model_dir: Path, *, version_name: str, embedding_dim: int, limits: InputLimits | None = None
) -> None:
    """config.pbtxt, configs/gpu.pbtxt, category_labels.txt and taxonomy.json under `model_dir`."""
    limits = limits or InputLimits()
    versions = served_versions(model_dir)
    names = version_names(model_dir, versions) if len(versions) > 1 else {}
    (model_dir / "configs").mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        model_dir / "config.pbtxt",
        render_config(
            version_name=version_name,
            embedding_dim=embedding_dim,
            kind="cpu",
            limits=limits,
            serving=CPU_SERVING,
            versions=versions,
            version_names=names,
        ),
    )
    atomic_write_text(
        model_dir / "configs" / "gpu.pbtxt",
        render_config(
            version_name=version_name,
            embedding_dim=embedding_dim,
            kind="gpu",
            limits=limits,
            serving=GPU_SERVING,
            versions=versions,
            version_names=names,
        ),
    )
    atomic_write_text(model_dir / LABEL_FILE, "\n".join(LEAF_NAMES) + "\n")
    (model_dir / "warmup").mkdir(exist_ok=True)
    for name, data in warmup_files().items():
        (model_dir / "warmup" / name).write_bytes(data)
    atomic_write_text(model_dir / "taxonomy.json", json.dumps(taxonomy_document(), indent=2) + "\n")


def regenerate(model_dir: Path) -> None:
    """Rewrite the repository files from the generator, keeping the served version's name and embedding
    size (read from the current config.pbtxt): serving settings change, the weights are not touched."""
    text = (model_dir / "config.pbtxt").read_text()
    found = {
        key: re.search(rf'key: "{key}" value {{ string_value: "([^"]*)" }}', text)
        for key in ("model_version_name", "embedding_dim")
    }
    missing = [key for key, match in found.items() if match is None]
    if missing:
        raise ValueError(f"{model_dir / 'config.pbtxt'} lacks the parameters {missing}")
    version = found["model_version_name"].group(1)  # type: ignore[union-attr]
    dim = int(found["embedding_dim"].group(1))  # type: ignore[union-attr]
    write_repository(model_dir, version_name=version, embedding_dim=dim)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fusion.repository",
        description="Regenerate config.pbtxt and configs/gpu.pbtxt of an exported model (weights untouched).",
    )
    parser.add_argument("model_dir", type=Path, nargs="?", default=Path("triton_models") / MODEL_NAME)
    args = parser.parse_args(argv)
    regenerate(args.model_dir)
    sys.stdout.write(f"regenerated the configs in {args.model_dir}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
