"""Triton runs the model's warm-up samples before it reports the model ready.

The committed samples load (the session's Triton serves the repository's own config, model_warmup
included, for every other integration test); this shows that the samples really run: a copy of the
repository whose text sample is empty, so the model rejects it (no text and no image), does not load.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fusion.repository import MODEL_NAME
from tooling.embedded import TritonServer
from tooling.embedded.process import ProcessStartError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPOSITORY = Path(__file__).resolve().parents[2] / "triton_models"


def test_a_warmup_sample_the_model_rejects_fails_the_load(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    shutil.copytree(
        REPOSITORY / MODEL_NAME, repository / MODEL_NAME, ignore=shutil.ignore_patterns("__pycache__")
    )
    (repository / MODEL_NAME / "warmup" / "text").write_bytes((0).to_bytes(4, "little"))
    logs = tmp_path / "logs"
    with pytest.raises(ProcessStartError):
        # Verbose: Triton names each warm-up sample it runs, and the one that failed.
        TritonServer(repository, [MODEL_NAME], log_dir=logs, extra_args=["--log-verbose=1"]).start(
            timeout=300
        )
    log = "".join(p.read_text(errors="replace") for p in logs.glob("*.log"))
    assert "failed to run warmup sample 'text_only'" in log, log[-2000:]
    assert "successfully loaded" not in log
