"""Triton Python-backend entry point of `ecom_fusion` (contract: docs/architecture.md).

All the work lives in the `fusion` package (installed with the project), shared with training:
`fusion.serving.FusionService` validates each request with `fusion.preprocess` and runs the network
whose fine-tuned weights sit beside this file; the base encoders load from their installed packages.
A bad request gets its own error response; the other requests of the dynamic batch still succeed.

The config parameter `runtime` picks how the network runs on a CPU instance (`fusion.fast`: `torch`,
`openvino`, `onnxruntime-int8`; `torch` when absent); a GPU instance always runs torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

from fusion.errors import FusionError
from fusion.serving import FusionService, as_bytes, config_parameters, limits_from_parameters

try:  # only importable inside tritonserver's Python stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - lets unit tests import this file
    pb_utils = None

OUTPUTS = ("SENTIMENT", "CATEGORY", "EMBEDDING")


def pick_device(kind: str, device_id: str) -> str:
    """`model_instance_kind` GPU -> that CUDA device (when CUDA is there); anything else -> CPU."""
    if kind.upper() == "GPU" and torch.cuda.is_available():
        return f"cuda:{int(device_id or 0)}"
    return "cpu"


def rows_of(text: Any, image: Any) -> list[tuple[bytes, bytes]]:
    """One request's TEXT / IMAGE tensors (shape [n, 1] of bytes) -> n rows."""
    texts = np.asarray(text, dtype=object).reshape(-1)
    images = np.asarray(image, dtype=object).reshape(-1)
    if len(texts) != len(images):
        raise FusionError(f"TEXT has {len(texts)} rows but IMAGE has {len(images)}")
    return [(as_bytes(t), as_bytes(i)) for t, i in zip(texts, images, strict=True)]


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = config_parameters(config)
        threads = int(params.get("torch_threads", "0") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        device = pick_device(
            args.get("model_instance_kind", "CPU"), args.get("model_instance_device_id", "0")
        )
        self.service = FusionService(
            Path(__file__).resolve().parent,
            device,
            limits_from_parameters(params),
            runtime=params.get("runtime", "torch") or "torch",
            threads=max(threads, 1),
        )
        self.dtypes = {
            name: pb_utils.triton_string_to_numpy(
                pb_utils.get_output_config_by_name(config, name)["data_type"]
            )
            for name in OUTPUTS
        }
        self.logger = pb_utils.Logger
        self.logger.log_info(
            f"ecom_fusion version {args.get('model_version', '?')} ready on {device},"
            f" runtime {self.service.runtime}"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        batch: list[list[tuple[bytes, bytes]]] = []
        early: dict[int, str] = {}
        for i, request in enumerate(requests):
            try:
                text = pb_utils.get_input_tensor_by_name(request, "TEXT")
                image = pb_utils.get_input_tensor_by_name(request, "IMAGE")
                if text is None or image is None:
                    raise FusionError("both inputs TEXT and IMAGE must be sent (either may be empty)")
                batch.append(rows_of(text.as_numpy(), image.as_numpy()))
            except FusionError as exc:
                early[i] = str(exc)
                batch.append([])
        outcomes = self.service.run(batch)
        responses = []
        for i, outcome in enumerate(outcomes):
            if i in early or outcome.outputs is None:
                message = early.get(i) or f"{type(outcome.error).__name__}: {outcome.error}"
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)))
                continue
            tensors = [
                pb_utils.Tensor(name, outcome.outputs[name].astype(self.dtypes[name], copy=False))
                for name in OUTPUTS
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.service = None  # type: ignore[assignment]
