"""Fast CPU runtimes of the fusion network: its two towers (the costly part) outside torch.

`runtime` names how the towers run; tokenisation, batching, the wide branch, the fusion and the heads
stay the torch predictor's own, so the outputs differ only by what the runtime changes:

- `torch`: the fp32 torch network (the reference; the only path on a GPU).
- `openvino`: both towers converted from the torch modules with OpenVINO's `convert_model` and compiled
  for the CPU at the runtime's default inference precision (bf16 on a CPU with AMX / AVX-512 BF16, as
  the development machine has; f32 elsewhere), or at `precision` when given (`f32`, `bf16`).
- `onnxruntime-int8`: the text tower exported to ONNX and quantized with ONNX Runtime's dynamic
  quantization (int8 weights per output channel, activations quantized per batch), the image tower in
  ONNX Runtime fp32 (its convolutions quantized the same way were slower than fp32 and inaccurate).

The graphs are built when the model loads, from the same weights (base packages plus the version's
fine-tuned tensors): nothing is added to the repository. A built graph is kept under the system's
temporary folder, keyed by the weights' digest, the runtime and the library versions, so a second
instance or a restart reads it instead of converting again. `python -m fusion.bench_model --runtimes`
measures them against each other (docs/model.md has the figures and the choice).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fusion.network import WEIGHTS_FILE, FusionNet, Predictor

RUNTIMES = ("torch", "openvino", "onnxruntime-int8")
OPSET = 17


class _TextTower(nn.Module):
    """(input ids, attention mask) -> mean-pooled text feature, the whole tower in one graph."""

    def __init__(self, net: FusionNet) -> None:
        super().__init__()
        self.text = net.text

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        out: Tensor = self.text.top(self.text.bottom(input_ids, attention_mask), attention_mask)
        return out


class _ImageTower(nn.Module):
    def __init__(self, net: FusionNet) -> None:
        super().__init__()
        self.image = net.image

    def forward(self, images: Tensor) -> Tensor:
        out: Tensor = self.image.top(self.image.bottom(images))
        return out


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer warnings of the exporters
        yield


def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, names: list[str], axes: Any) -> None:
    module.eval()
    # The exporters trace with torch.jit.trace, which torch deprecates (a warning, an error under
    # `-W error`); the traced graphs are checked against torch by tests/unit/test_fusion_fast.py.
    with torch.inference_mode(False), torch.no_grad(), _quiet_tracing():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names,
            output_names=["feature"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def build_onnx(net: FusionNet, folder: Path) -> tuple[Path, Path]:
    """Export the two towers of `net` (CPU, eval mode) to ONNX in `folder`; quantize the text tower."""
    folder.mkdir(parents=True, exist_ok=True)
    text_fp32, text_path, image_path = folder / "text_fp32.onnx", folder / "text.onnx", folder / "image.onnx"
    ids = torch.ones(2, 16, dtype=torch.long)
    mask = torch.ones(2, 16, dtype=torch.long)
    _export(
        _TextTower(net),
        (ids, mask),
        text_fp32,
        ["input_ids", "attention_mask"],
        {
            "input_ids": {0: "batch", 1: "tokens"},
            "attention_mask": {0: "batch", 1: "tokens"},
            "feature": {0: "batch"},
        },
    )
    size = net.config.image_size
    _export(
        _ImageTower(net),
        (torch.zeros(2, 3, size, size),),
        image_path,
        ["images"],
        {"images": {0: "batch"}, "feature": {0: "batch"}},
    )
    from onnxruntime.quantization import QuantType, quantize_dynamic  # type: ignore[import-untyped]

    # Per output channel: per-tensor scales moved the pooled text features far more (cosine to the
    # torch features down to 0.89 against 0.98 on held-out reviews).
    quantize_dynamic(str(text_fp32), str(text_path), weight_type=QuantType.QInt8, per_channel=True)
    text_fp32.unlink()
    return text_path, image_path


def build_openvino(net: FusionNet, folder: Path) -> tuple[Path, Path]:
    """Convert the two towers of `net` to OpenVINO IR in `folder` (straight from torch, no ONNX)."""
    import openvino as ov  # type: ignore[import-untyped]

    folder.mkdir(parents=True, exist_ok=True)
    size = net.config.image_size
    ids = torch.ones(2, 16, dtype=torch.long)
    with torch.inference_mode(False), torch.no_grad(), _quiet_tracing():
        text = ov.convert_model(
            _TextTower(net).eval(),
            example_input=(ids, ids.clone()),
            input=[ov.PartialShape([-1, -1]), ov.PartialShape([-1, -1])],
        )
        image = ov.convert_model(
            _ImageTower(net).eval(),
            example_input=(torch.zeros(2, 3, size, size),),
            input=[ov.PartialShape([-1, 3, size, size])],
        )
    text_path, image_path = folder / "text.xml", folder / "image.xml"
    ov.save_model(text, str(text_path), compress_to_fp16=False)
    ov.save_model(image, str(image_path), compress_to_fp16=False)
    return text_path, image_path


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort  # type: ignore[import-untyped]

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _weights_digest(version_dir: Path) -> str:
    return hashlib.sha256((version_dir / WEIGHTS_FILE).read_bytes()).hexdigest()[:16]


def graph_folder(version_dir: Path, runtime: str) -> Path:
    """Where the built graphs of this version's weights and this runtime are kept."""
    if runtime == "openvino":
        import openvino as ov

        library = f"ov{ov.get_version().split('-')[0]}"
    else:
        import onnxruntime as ort

        library = f"ort{ort.__version__}"
    key = f"{_weights_digest(version_dir)}-{runtime}-{library}-torch{torch.__version__}"
    return Path(tempfile.gettempdir()) / "ecom_fusion_graphs" / key


def _built(net: FusionNet, runtime: str, folder: Path | None) -> tuple[Path, Path]:
    """The graphs of `runtime` in `folder`, built there first unless an earlier build left them."""
    names = ("text.xml", "image.xml") if runtime == "openvino" else ("text.onnx", "image.onnx")
    build = build_openvino if runtime == "openvino" else build_onnx
    if folder is None:
        return build(net, Path(tempfile.mkdtemp(prefix="ecom_fusion_graphs-")))
    text_path, image_path = folder / names[0], folder / names[1]
    if text_path.exists() and image_path.exists():
        return text_path, image_path
    # Built in a scratch folder, then renamed into place whole: a concurrent instance either finds
    # the complete folder or builds its own.
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    build(net, scratch)
    try:
        os.rename(scratch, folder)
    except OSError:  # another instance finished first: use its folder
        shutil.rmtree(scratch, ignore_errors=True)
    return text_path, image_path


class OpenVinoPredictor(Predictor):
    """`Predictor` whose two towers run in OpenVINO on the CPU."""

    def __init__(
        self,
        tokenizer: Any,
        net: FusionNet,
        folder: Path | None = None,
        threads: int = 1,
        precision: str = "",
    ) -> None:
        import openvino as ov

        super().__init__(tokenizer, net, "cpu")
        self.runtime = "openvino"
        text_path, image_path = _built(net, "openvino", folder)
        core = ov.Core()
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": max(1, threads),
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        }
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.text_model = core.compile_model(core.read_model(str(text_path)), "CPU", config)
        self.image_model = core.compile_model(core.read_model(str(image_path)), "CPU", config)
        self.precision = str(self.text_model.get_property("INFERENCE_PRECISION_HINT"))
        self.text_request = self.text_model.create_infer_request()
        self.image_request = self.image_model.create_infer_request()

    def text_tower(self, ids: Tensor, mask: Tensor) -> Tensor:
        out = self.text_request.infer([ids.cpu().numpy(), mask.cpu().numpy()])
        return torch.from_numpy(np.array(out[0], dtype=np.float32))

    def image_tower(self, images: Tensor) -> Tensor:
        out = self.image_request.infer([images.cpu().numpy()])
        return torch.from_numpy(np.array(out[0], dtype=np.float32))


class OrtPredictor(Predictor):
    """`Predictor` whose two towers run in ONNX Runtime (text int8, image fp32)."""

    def __init__(self, tokenizer: Any, net: FusionNet, folder: Path | None = None, threads: int = 1) -> None:
        super().__init__(tokenizer, net, "cpu")
        self.runtime = "onnxruntime-int8"
        text_path, image_path = _built(net, "onnxruntime-int8", folder)
        self.text_session = _session(text_path, threads)
        self.image_session = _session(image_path, threads)

    def text_tower(self, ids: Tensor, mask: Tensor) -> Tensor:
        (out,) = self.text_session.run(
            None, {"input_ids": ids.cpu().numpy(), "attention_mask": mask.cpu().numpy()}
        )
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def image_tower(self, images: Tensor) -> Tensor:
        (out,) = self.image_session.run(None, {"images": images.cpu().numpy()})
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def make_predictor(
    tokenizer: Any,
    net: FusionNet,
    device: torch.device | str,
    runtime: str = "torch",
    version_dir: Path | None = None,
    threads: int = 1,
    precision: str = "",
) -> Predictor:
    """The predictor for `runtime`; the fast runtimes only on the CPU (a GPU keeps the torch path)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; one of {RUNTIMES}")
    if runtime == "torch" or torch.device(device).type != "cpu":
        return Predictor(tokenizer, net, device)
    folder = graph_folder(version_dir, runtime) if version_dir is not None else None
    if runtime == "openvino":
        return OpenVinoPredictor(tokenizer, net, folder, threads, precision)
    return OrtPredictor(tokenizer, net, folder, threads)
