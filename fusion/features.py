"""Caches of what stays frozen, and the augmentations applied to (or before) them.

Text: the frozen bottom MiniLM layers run once per review; their hidden states are kept per review in
fp16 (no padding). Augmentation happens on the cached states by dropping tokens from the attention mask
(random token dropout and one random span deletion), and on the wide branch by dropping n-grams.

Images: each training image is augmented into a few *views* (view 0 = the original; the others a random
horizontal flip and a random shift of up to 3 px at 28 px), each passed through `prepare_image` (the
serving preprocessing) and the frozen EfficientNet stages once; the feature maps are kept in fp16.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from tqdm import tqdm

from fusion.network import FusionNet
from fusion.preprocess import prepare_image, wide_ids


def token_lengths(tokenizer: Any, texts: Sequence[str], max_length: int) -> npt.NDArray[np.int64]:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    return np.array([len(ids) for ids in enc["input_ids"]], dtype=np.int64)


@torch.inference_mode()
def cache_text(
    net: FusionNet,
    tokenizer: Any,
    texts: Sequence[str],
    device: torch.device,
    batch_size: int = 64,
    desc: str = "text cache",
) -> list[Tensor]:
    """Frozen-bottom hidden states per text, fp16 on the CPU, each [len_i, 384]."""
    net.eval()  # the cache must hold exactly what inference computes
    max_length = net.config.text_max_length
    lengths = token_lengths(tokenizer, texts, max_length)
    order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding
    out: list[Tensor | None] = [None] * len(texts)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        rows = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in rows],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        hidden = net.text.bottom(ids, mask).to(torch.float16).cpu()
        for j, i in enumerate(rows):
            out[i] = hidden[j, : int(lengths[i])].clone()
    return [t for t in out if t is not None]


def sortish_batches(
    lengths: npt.NDArray[np.int64], batch_size: int, rng: np.random.Generator, chunk: int = 50
) -> list[npt.NDArray[np.int64]]:
    """Shuffled batches of indices with similar lengths (less padding, still random)."""
    perm = rng.permutation(len(lengths))
    batches: list[npt.NDArray[np.int64]] = []
    size = batch_size * chunk
    for start in range(0, len(perm), size):
        block = perm[start : start + size]
        block = block[np.argsort(lengths[block], kind="stable")]
        batches.extend(block[i : i + batch_size] for i in range(0, len(block), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def pad_hidden(
    cache: Mapping[int, Tensor] | Sequence[Tensor],
    rows: Sequence[int],
    device: torch.device,
    rng: np.random.Generator | None = None,
    token_drop: float = 0.0,
    span_drop: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Stack cached states of `rows` into [B, T, H] float32 + mask; with `rng`, drop tokens as augmentation.

    Token dropout removes each inner token (never [CLS] / [SEP]) with probability `token_drop`; with
    probability `span_drop` one random contiguous span of up to 20% of the tokens is removed too.
    """
    seqs = [cache[i] for i in rows]
    longest = max(int(s.shape[0]) for s in seqs)
    hidden = torch.zeros(len(seqs), longest, seqs[0].shape[1], dtype=torch.float32)
    mask = torch.zeros(len(seqs), longest, dtype=torch.long)
    for j, s in enumerate(seqs):
        n = int(s.shape[0])
        hidden[j, :n] = s.float()
        mask[j, :n] = 1
        if rng is not None and n > 4:
            inner = np.arange(1, n - 1)
            drop = inner[rng.random(len(inner)) < token_drop]
            if rng.random() < span_drop:
                span = int(rng.integers(1, max(2, int(0.2 * n))))
                begin = int(rng.integers(1, max(2, n - 1 - span)))
                drop = np.concatenate([drop, np.arange(begin, min(begin + span, n - 1))])
            if len(drop) < n - 2:  # keep at least one inner token
                mask[j, torch.from_numpy(drop.astype(np.int64))] = 0
    return hidden.to(device), mask.to(device)


def wide_rows(texts: Sequence[str], buckets: int) -> list[npt.NDArray[np.int64]]:
    return [np.array(wide_ids(t, buckets), dtype=np.int64) for t in texts]


def wide_tensors(
    rows: Sequence[npt.NDArray[np.int64]],
    device: torch.device,
    rng: np.random.Generator | None = None,
    drop: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """EmbeddingBag inputs as `network.wide_batch` builds them, optionally dropping n-grams."""
    ids: list[npt.NDArray[np.int64]] = []
    offsets: list[int] = []
    weights: list[npt.NDArray[np.float32]] = []
    total = 0
    for row in rows:
        if rng is not None and drop > 0 and len(row) > 1:
            row = row[rng.random(len(row)) >= drop]
        offsets.append(total)
        ids.append(row)
        weights.append(np.full(len(row), 1.0 / max(len(row), 1) ** 0.5, dtype=np.float32))
        total += len(row)
    return (
        torch.from_numpy(np.concatenate(ids) if ids else np.zeros(0, np.int64)).to(device),
        torch.tensor(offsets, dtype=torch.long, device=device),
        torch.from_numpy(np.concatenate(weights) if weights else np.zeros(0, np.float32)).to(device),
    )


def augment_28(
    image: npt.NDArray[np.uint8], rng: np.random.Generator, max_shift: int = 3
) -> npt.NDArray[np.uint8]:
    """A random horizontal flip and a random shift (zero fill) of a small grey image."""
    out = image[:, ::-1] if rng.random() < 0.5 else image
    dy, dx = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))
    shifted = np.zeros_like(out)
    h, w = out.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    shifted[yd, xd] = out[ys, xs]
    return shifted


def iter_views(
    images: npt.NDArray[np.uint8], n_views: int, seed: int
) -> Iterator[tuple[int, Callable[[int], npt.NDArray[np.uint8]]]]:
    rng = np.random.default_rng(seed)
    for view in range(n_views):
        if view == 0:
            yield view, lambda i: images[i]
        else:
            augmented = np.stack([augment_28(img, rng) for img in images])
            yield view, lambda i, a=augmented: a[i]  # type: ignore[misc]


@torch.inference_mode()
def cache_images(
    net: FusionNet,
    images: npt.NDArray[np.uint8],
    device: torch.device,
    n_views: int = 1,
    seed: int = 0,
    batch_size: int = 256,
    desc: str = "image cache",
) -> Tensor:
    """Frozen-stage feature maps, fp16 on the CPU: [n_views, N, C, h, w]."""
    net.eval()  # frozen BatchNorm statistics, exactly as at inference
    size = net.config.image_size
    views: list[Tensor] = []
    for view, get in iter_views(images, n_views, seed):
        chunks: list[Tensor] = []
        for start in tqdm(
            range(0, len(images), batch_size), desc=f"{desc} v{view}", unit="batch", leave=False
        ):
            batch = np.stack(
                [prepare_image(get(i), size) for i in range(start, min(start + batch_size, len(images)))]
            )
            chunks.append(net.image.bottom(torch.from_numpy(batch).to(device)).to(torch.float16).cpu())
        views.append(torch.cat(chunks))
    return torch.stack(views)
