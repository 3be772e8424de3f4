"""Where time goes: py-spy samples of the worker and of the Triton model's Python stub under load.

`Sampler` starts `py-spy record --format raw` on a PID we started (collapsed stacks: `frame;frame;... n`)
for a fixed time; `summarise` turns such a file into the functions with the most samples on top of the
stack (self) and anywhere on it (inclusive), plus coarse buckets that name where the worker's time goes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Coarse buckets by the file a frame comes from (first match, leaf to root).
BUCKETS: tuple[tuple[str, str], ...] = (
    ("tritonclient", "triton client (request/response)"),
    ("grpc", "gRPC"),
    ("aiokafka", "Kafka client"),
    ("kafka", "Kafka client"),
    ("pydantic", "pydantic (schemas)"),
    ("orjson", "JSON"),
    ("json", "JSON"),
    ("PIL", "image decode (PIL)"),
    ("streams/validation", "validation"),
    ("fusion/preprocess", "validation"),
    ("prometheus_client", "metrics"),
    ("streams/", "service code"),
    ("faust", "Faust"),
    ("mode/", "Faust"),
    ("asyncio", "asyncio"),
    ("torch", "torch"),
    ("transformers", "tokenizer/transformers"),
    ("tokenizers", "tokenizer/transformers"),
    ("numpy", "numpy"),
)

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    import sys

    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else None


@dataclass
class Sampler:
    pid: int
    out: Path
    seconds: float
    rate: int = 100
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> bool:
        binary = py_spy()
        if binary is None:
            return False
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(self.pid),
                "--duration",
                str(int(self.seconds)),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(self.out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.out.with_suffix(".log")).open("wb"),
        )
        return True

    def wait(self, timeout: float = 60.0) -> bool:
        if self.proc is None:
            return False
        try:
            self.proc.wait(timeout=self.seconds + timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        return self.out.exists()


def parse_frame(frame: str) -> tuple[str, str]:
    """`func (path/file.py:123)` -> (func, path/file.py)."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match.group("func"), match.group("file")


def short(file: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return file


def bucket_of(stack: list[tuple[str, str]]) -> str:
    for func, file in reversed(stack):  # leaf first
        for needle, name in BUCKETS:
            if needle in file or needle in func:
                return name
    return "other"


def read_collapsed(lines: Iterable[str]) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in lines:
        line = line.rstrip("\n")
        if not line or " " not in line:
            continue
        frames, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        stack = [parse_frame(f) for f in frames.split(";") if f]
        # py-spy puts the thread name first ("process 123:..." / "thread (0x...)"); drop non-frames.
        stack = [(f, p) for f, p in stack if p]
        stacks.append((stack, int(count)))
    return stacks


def summarise(path: Path, top: int = 15) -> dict[str, Any]:
    stacks = read_collapsed(path.read_text(errors="replace").splitlines())
    total = sum(n for _, n in stacks)
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    for stack, n in stacks:
        if not stack:
            continue
        func, file = stack[-1]
        self_time[f"{func} ({short(file)})"] += n
        for name in {f"{f} ({short(p)})" for f, p in stack}:
            inclusive[name] += n
        buckets[bucket_of(stack)] += n

    def table(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": k, "share": v / total} for k, v in counter.most_common(top)] if total else []

    return {
        "samples": total,
        "buckets": [{"bucket": k, "share": v / total} for k, v in buckets.most_common()] if total else [],
        "self": table(self_time),
        "inclusive": table(inclusive),
    }
