"""Training pipeline of the fusion model: `python -m fusion.train` (see docs/model.md).

Steps: load the two real data sets and their fixed splits; cache the frozen encoder parts (text hidden
states, image feature maps of a few augmented views); fine-tune the top text layers, the top image
blocks, the wide branch, the fusion module and the heads with AdamW and a linear warm-up/decay schedule,
evaluating on the validation splits every epoch (the best epoch is kept); tune the sentiment class
offsets on the validation split; export the servable version; evaluate that exported model (reloaded
from its fp16 file, through the serving code path) on the held-out test splits beside the baselines;
write the history, plots, metrics.json and model_card.md.

Seeded (`--seed`) and deterministic on one machine; the device is CUDA when present, else the CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from fusion import baselines, report
from fusion.data import (
    FashionMnist,
    Reviews,
    fmnist_splits,
    load_fashion_mnist,
    load_reviews,
    review_splits,
)
from fusion.features import (
    cache_images,
    cache_text,
    pad_hidden,
    sortish_batches,
    wide_rows,
    wide_tensors,
)
from fusion.metrics import (
    accuracy,
    confusion,
    department_predictions,
    fmnist_predictions,
    leaf_to_department,
    macro_f1,
    tune_class_bias,
)
from fusion.network import (
    FusionNet,
    NetConfig,
    Predictor,
    build_net,
    load_tuned,
    save_tuned,
    weights_digest,
)
from fusion.preprocess import prepare_image
from fusion.repository import VERSION, write_repository
from fusion.taxonomy import (
    DEPARTMENTS,
    LEAF_NAMES,
    NUM_LEAVES,
    leaf_department_indices,
    leaf_to_fmnist_class,
)

IntArray = npt.NDArray[np.int64]


@dataclass
class TrainConfig:
    seed: int = 0
    epochs: int = 2
    text_batch: int = 32
    image_batch: int = 192
    image_views: int = 2
    lr_text: float = 2e-4
    lr_image: float = 1e-3
    lr_head: float = 2e-3
    lr_wide: float = 5e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.06
    token_drop: float = 0.1
    span_drop: float = 0.3
    wide_drop: float = 0.1
    # Whole-row dropout of the wide branch, so that the deep part must also predict alone.
    wide_row_drop: float = 0.5
    label_smoothing: float = 0.1
    department_weight: float = 1.0
    pair_weight: float = 0.5
    sentiment_class_weight_power: float = 0.5
    max_train_reviews: int = 0  # 0 = all (subsets are for quick experiments and the smoke run)
    max_train_images: int = 0
    max_eval_reviews: int = 0
    max_eval_images: int = 0
    threads: int = 1
    # A cap on the optimizer steps of the whole run (0 = every step of every epoch); the schedule
    # (warm-up, linear decay to zero) spans the capped run.
    max_steps: int = 0


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cap(idx: IntArray, n: int, rng: np.random.Generator) -> IntArray:
    return np.sort(rng.choice(idx, size=n, replace=False)) if 0 < n < len(idx) else idx


def department_log_probs(category_logits: Tensor) -> Tensor:
    """log P(department) = logsumexp of leaf log-probabilities per department, [B, n_departments]."""
    log_probs = torch.log_softmax(category_logits, -1)
    member = torch.from_numpy(leaf_department_indices()).to(category_logits.device)
    mask = torch.full((len(DEPARTMENTS), NUM_LEAVES), float("-inf"), device=category_logits.device)
    mask[member, torch.arange(NUM_LEAVES, device=category_logits.device)] = 0.0
    return torch.logsumexp(log_probs.unsqueeze(1) + mask.unsqueeze(0), dim=-1)


def make_optimizer(net: FusionNet, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups: dict[str, list[Tensor]] = {}
    for name, param in net.trainable_parameters():
        if name.startswith("text.tuned_layers."):
            key = "text"
        elif name.startswith("image."):
            key = "image"
        elif name.startswith("wide."):
            key = "wide"
        else:
            key = "head"
        decay = param.ndim >= 2 and key != "wide"
        groups.setdefault(f"{key}:{'decay' if decay else 'no_decay'}", []).append(param)
    lrs = {"text": cfg.lr_text, "image": cfg.lr_image, "wide": cfg.lr_wide, "head": cfg.lr_head}
    param_groups = [
        {
            "params": params,
            "lr": lrs[key.split(":")[0]],
            "weight_decay": cfg.weight_decay if key.endswith(":decay") else 0.0,
        }
        for key, params in groups.items()
    ]
    return torch.optim.AdamW(param_groups)


def linear_warmup(
    optimizer: torch.optim.Optimizer, total: int, warmup: int
) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Trainer:
    def __init__(self, cfg: TrainConfig, net: FusionNet, tokenizer: Any, device: torch.device) -> None:
        self.cfg, self.net, self.tokenizer, self.device = cfg, net, tokenizer, device
        self.rng = np.random.default_rng(cfg.seed)

    # -- data preparation ---------------------------------------------------------------------------
    def _cache_key(self, rows: IntArray, fm_rows: IntArray, fm_val: IntArray) -> str:
        """What the caches depend on: a resume reuses them only when this matches."""
        import hashlib

        net_cfg = self.net.config
        parts = [
            self.cfg.seed,
            self.cfg.image_views,
            net_cfg.text_max_length,
            net_cfg.text_tuned_layers,
            net_cfg.image_size,
            net_cfg.image_tune_from_block,
            hashlib.sha256(rows.tobytes() + fm_rows.tobytes() + fm_val.tobytes()).hexdigest(),
        ]
        return json.dumps(parts)

    def prepare(
        self,
        reviews: Reviews,
        split: dict[str, IntArray],
        fm: FashionMnist,
        fm_split: dict[str, IntArray],
        cache_dir: Path | None = None,
    ) -> None:
        """Caches of the frozen parts; with `cache_dir` they are kept on disk and reused by a resume."""
        cfg, net, dev = self.cfg, self.net, self.device
        self.reviews, self.split, self.fm, self.fm_split = reviews, split, fm, fm_split
        rows = np.concatenate([split["train"], split["val"]])
        key = self._cache_key(rows, fm_split["train"], fm_split["val"])
        stored = cache_dir / "frozen_cache.pt" if cache_dir is not None else None
        if stored is not None and stored.exists():
            saved = torch.load(stored, map_location="cpu", weights_only=False)
            if saved["key"] == key:
                self._set_caches(saved, rows)
                self.cache_seconds = saved["seconds"]
                tqdm.write(f"fusion.train: frozen-part caches reused from {stored}")
                return
        t0 = time.perf_counter()
        cached = cache_text(net, self.tokenizer, [reviews.texts[i] for i in rows], dev, desc="text cache")
        t1 = time.perf_counter()
        image_train = cache_images(
            net, fm.images[fm_split["train"]], dev, cfg.image_views, cfg.seed, desc="image cache train"
        )
        image_val = cache_images(net, fm.images[fm_split["val"]], dev, 1, cfg.seed, desc="image cache val")[0]
        t2 = time.perf_counter()
        caches = {
            "key": key,
            "text": cached,
            "image_train": image_train,
            "image_val": image_val,
            "seconds": {"text": t1 - t0, "image": t2 - t1},
        }
        if stored is not None:
            stored.parent.mkdir(parents=True, exist_ok=True)
            partial = stored.with_name(f".{stored.name}.partial")
            torch.save(caches, partial)
            partial.replace(stored)
        self._set_caches(caches, rows)
        self.cache_seconds = caches["seconds"]

    def _set_caches(self, caches: dict[str, Any], rows: IntArray) -> None:
        cfg, net, dev = self.cfg, self.net, self.device
        reviews, split, fm, fm_split = self.reviews, self.split, self.fm, self.fm_split
        self.text_cache = dict(zip(rows.tolist(), caches["text"], strict=True))
        self.text_len = {i: int(t.shape[0]) for i, t in self.text_cache.items()}
        self.wide = dict(
            zip(
                rows.tolist(),
                wide_rows([reviews.texts[i] for i in rows], net.config.wide_buckets),
                strict=True,
            )
        )
        self.image_train, self.image_val = caches["image_train"], caches["image_val"]
        train_labels = fm.labels[fm_split["train"]]
        self.fm_by_class = {c: np.flatnonzero(train_labels == c) for c in range(10)}
        counts = np.bincount(reviews.sentiment[split["train"]], minlength=3).astype(np.float64)
        weights = (counts.sum() / np.maximum(counts, 1)) ** cfg.sentiment_class_weight_power
        self.sentiment_weights = torch.tensor(weights / weights.mean(), dtype=torch.float32, device=dev)

    # -- one step -------------------------------------------------------------------------------------
    def _text(self, rows: IntArray, augment: bool) -> tuple[Tensor, Tensor]:
        rng = self.rng if augment else None
        cfg = self.cfg
        hidden, mask = pad_hidden(
            self.text_cache,
            rows.tolist(),
            self.device,
            rng,
            cfg.token_drop if augment else 0.0,
            cfg.span_drop if augment else 0.0,
        )
        feat = self.net.text.top(hidden, mask)
        wide: Tensor = self.net.wide_logits(
            *wide_tensors([self.wide[i] for i in rows], self.device, rng, cfg.wide_drop if augment else 0.0)
        )
        if rng is not None and cfg.wide_row_drop > 0:
            keep = torch.from_numpy((rng.random(len(rows)) >= cfg.wide_row_drop).astype(np.float32))
            wide = wide * keep.to(self.device).unsqueeze(-1)
        return feat, wide

    def _losses(
        self, out: dict[str, Tensor], sentiment: Tensor | None, leaf: Tensor, department: Tensor | None
    ) -> Tensor:
        cfg = self.cfg
        loss = torch.zeros((), device=self.device)
        if sentiment is not None:
            loss = loss + F.cross_entropy(out["sentiment_logits"], sentiment, weight=self.sentiment_weights)
        known = leaf >= 0
        if known.any():
            logits = out["category_logits"][known]
            loss = loss + F.cross_entropy(logits, leaf[known], label_smoothing=cfg.label_smoothing)
            if department is not None and cfg.department_weight > 0:
                loss = loss + cfg.department_weight * F.nll_loss(
                    department_log_probs(logits), department[known]
                )
        return loss

    def plan_epoch(self) -> dict[str, Any]:
        """The epoch's random order (text batches, image order), drawn up front so a resume can reuse it."""
        cfg, rng = self.cfg, self.rng
        train_rows = self.split["train"]
        lengths = np.array([self.text_len[i] for i in train_rows], dtype=np.int64)
        batches = sortish_batches(lengths, cfg.text_batch, rng)
        n_images = self.image_train.shape[1]
        image_order = rng.permutation(n_images)
        per_step = max(1, math.ceil(n_images / len(batches))) if cfg.image_batch <= 0 else cfg.image_batch
        return {"batches": batches, "image_order": image_order, "per_step": per_step}

    def train_epoch(
        self,
        epoch: int,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        plan: dict[str, Any] | None = None,
        start_step: int = 0,
        totals: dict[str, float] | None = None,
        on_step: Any = None,
    ) -> dict[str, float]:
        """One epoch from `start_step` of `plan`; `on_step(step, plan, totals)` runs after every step."""
        cfg, net, dev, rng = self.cfg, self.net, self.device, self.rng
        net.train()
        train_rows = self.split["train"]
        plan = plan if plan is not None else self.plan_epoch()
        batches, image_order, per_step = plan["batches"], plan["image_order"], int(plan["per_step"])
        n_images = self.image_train.shape[1]
        fm_leaf = torch.from_numpy(self.fm.leaf[self.fm_split["train"]]).to(dev)
        leaf_to_fm = leaf_to_fmnist_class()
        totals = totals if totals is not None else {"loss": 0.0, "text": 0.0, "image": 0.0, "pair": 0.0}
        bar = tqdm(
            range(start_step, len(batches)),
            desc=f"epoch {epoch}",
            unit="step",
            leave=False,
            initial=start_step,
            total=len(batches),
            mininterval=30.0,
        )
        for step in bar:
            local = batches[step]
            rows = train_rows[local]
            text_feat, wide = self._text(rows, augment=True)
            sentiment = torch.from_numpy(self.reviews.sentiment[rows]).to(dev)
            leaf_np = self.reviews.leaf[rows]
            leaf = torch.from_numpy(leaf_np).to(dev)
            department = torch.from_numpy(
                np.where(leaf_np >= 0, leaf_to_department(np.maximum(leaf_np, 0)), -1)
            ).to(dev)
            # Image-only examples, and synthesised pairs: a review + a training image of the same leaf.
            start = (step * per_step) % n_images
            img_rows = image_order[np.arange(start, start + per_step) % n_images]
            fm_class = np.where(leaf_np >= 0, leaf_to_fm[np.maximum(leaf_np, 0)], -1)
            pair_sel = np.flatnonzero(fm_class >= 0)
            pair_imgs = np.array(
                [rng.choice(self.fm_by_class[int(c)]) for c in fm_class[pair_sel]], dtype=np.int64
            )
            all_imgs = np.concatenate([img_rows, pair_imgs])
            views = rng.integers(0, self.image_train.shape[0], size=len(all_imgs))
            mid = self.image_train[torch.from_numpy(views), torch.from_numpy(all_imgs)].to(dev).float()
            image_feat = net.image.top(mid)
            out_text = net.fuse(text_feat, None, wide)
            out_image = net.fuse(None, image_feat[: len(img_rows)])
            loss_text = self._losses(out_text, sentiment, leaf, department)
            loss_image = self._losses(out_image, None, fm_leaf[torch.from_numpy(img_rows).to(dev)], None)
            loss = loss_text + loss_image
            loss_pair = torch.zeros((), device=dev)
            if len(pair_sel):
                sel = torch.from_numpy(pair_sel).to(dev)
                out_pair = net.fuse(text_feat[sel], image_feat[len(img_rows) :], wide[sel])
                loss_pair = self._losses(out_pair, sentiment[sel], leaf[sel], department[sel])
                loss = loss + cfg.pair_weight * loss_pair
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_([p for _, p in net.trainable_parameters()], 5.0)
            optimizer.step()
            scheduler.step()
            totals["loss"] += float(loss.detach())
            totals["text"] += float(loss_text.detach())
            totals["image"] += float(loss_image.detach())
            totals["pair"] += float(loss_pair.detach())
            if step % 20 == 0:
                bar.set_postfix(loss=f"{totals['loss'] / (step + 1):.3f}")
            if on_step is not None:
                on_step(step, plan, totals)
        return {f"train_{k}": v / len(batches) for k, v in totals.items()}

    # -- validation on the cached features --------------------------------------------------------
    @torch.inference_mode()
    def validate(self) -> tuple[dict[str, float], dict[str, npt.NDArray[Any]]]:
        net, dev = self.net, self.device
        net.eval()
        val = self.split["val"]
        lengths = np.array([self.text_len[i] for i in val])
        order = val[np.argsort(lengths, kind="stable")]
        sent_logits, cat_logits = [], []
        for start in range(0, len(order), 128):
            rows = order[start : start + 128]
            feat, wide = self._text(rows, augment=False)
            out = net.fuse(feat, None, wide)
            sent_logits.append(out["sentiment_logits"])
            cat_logits.append(out["category_logits"])
        s_logits = torch.cat(sent_logits)
        c_logits = torch.cat(cat_logits)
        y_sent = torch.from_numpy(self.reviews.sentiment[order]).to(dev)
        leaf = self.reviews.leaf[order]
        known = leaf >= 0
        img_logits = []
        for start in range(0, self.image_val.shape[0], 512):
            feat = net.image.top(self.image_val[start : start + 512].to(dev).float())
            img_logits.append(net.fuse(None, feat)["category_logits"])
        i_logits = torch.cat(img_logits)
        fm_labels = self.fm.labels[self.fm_split["val"]]
        fm_leaf = torch.from_numpy(self.fm.leaf[self.fm_split["val"]]).to(dev)
        s_log_probs = torch.log_softmax(s_logits, -1).cpu().numpy()
        y = y_sent.cpu().numpy()
        bias, tuned = tune_class_bias(s_log_probs, y)
        c_probs = torch.softmax(c_logits, -1).cpu().numpy()
        metrics = {
            "val_sentiment_loss": float(F.cross_entropy(s_logits, y_sent)),
            "val_text_category_loss": float(
                F.cross_entropy(
                    c_logits[torch.from_numpy(known).to(dev)], torch.from_numpy(leaf[known]).to(dev)
                )
            ),
            "val_image_category_loss": float(F.cross_entropy(i_logits, fm_leaf)),
            "val_sentiment_macro_f1": macro_f1(y, s_log_probs.argmax(1), 3),
            "val_sentiment_macro_f1_tuned": tuned,
            "val_department_accuracy": accuracy(
                leaf_to_department(leaf[known]), department_predictions(c_probs[known])
            ),
            "val_leaf_accuracy_reviews": accuracy(leaf[known], c_probs[known].argmax(1)),
            "val_fmnist_accuracy": accuracy(
                fm_labels, fmnist_predictions(torch.softmax(i_logits, -1).cpu().numpy())
            ),
        }
        metrics["val_score"] = (
            metrics["val_sentiment_macro_f1_tuned"]
            + metrics["val_department_accuracy"]
            + metrics["val_fmnist_accuracy"]
        )
        return metrics, {"sentiment_bias": bias, "val_log_probs": s_log_probs, "val_sentiment": y}

    # -- checkpoints --------------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Any]:
        return {
            "numpy": self.rng.bit_generator.state,
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
        }

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["numpy"]
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        random.setstate(state["python"])

    def fit(
        self,
        checkpoint_dir: Path | None = None,
        resume: bool = False,
        checkpoint_every: int = 0,
        finish_early: bool = False,
    ) -> tuple[list[dict[str, float]], npt.NDArray[np.float32]]:
        """Train `cfg.epochs` epochs; keep the best epoch on validation.

        `finish_early` (with `resume`): train no further; the checkpoint's weights, validated as a
        partial epoch, compete with the finished epochs for the kept model.

        With `checkpoint_dir`, the whole training state (tuned weights, optimizer, schedule, random
        states, the epoch's order and position, history, best epoch so far) is written to
        `checkpoint_dir/last.pt` every `checkpoint_every` steps and after every epoch (the epoch ones are
        also kept as `epoch_N.pt`); `resume` continues from `last.pt` where it stopped.
        """
        cfg = self.cfg
        optimizer = make_optimizer(self.net, cfg)
        steps_per_epoch = math.ceil(len(self.split["train"]) / cfg.text_batch)
        total = steps_per_epoch * cfg.epochs
        if cfg.max_steps > 0:
            total = min(total, cfg.max_steps)
        scheduler = linear_warmup(optimizer, total, max(1, int(cfg.warmup_frac * total)))
        history: list[dict[str, float]] = []
        best_score, best_state, best_bias = (
            -1.0,
            copy.deepcopy(self.net.tuned_state_dict()),
            np.zeros(3, np.float32),
        )
        start_epoch, start_step = 1, 0
        plan: dict[str, Any] | None = None
        totals: dict[str, float] | None = None
        epoch_seconds = 0.0
        last = checkpoint_dir / "last.pt" if checkpoint_dir is not None else None
        if resume and last is not None and last.exists():
            state = torch.load(last, map_location="cpu", weights_only=False)
            if state["train_config"] != asdict(cfg) or state["net_config"] != self.net.config.to_json():
                raise SystemExit(f"{last} was written with another configuration; resume with the same flags")
            self.net.load_state_dict(state["tuned"], strict=False)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            self._set_rng_state(state["rng"])
            history, best_score, best_bias = state["history"], state["best_score"], state["best_bias"]
            best_state = state["best_state"]
            start_epoch, start_step = state["epoch"], state["next_step"]
            plan, totals, epoch_seconds = state["plan"], state["totals"], state["epoch_seconds"]
            if plan is not None and start_step >= len(plan["batches"]):  # saved after a finished epoch
                start_epoch, start_step, plan, totals, epoch_seconds = start_epoch + 1, 0, None, None, 0.0
            tqdm.write(f"fusion.train: resumed from {last} at epoch {start_epoch}, step {start_step}")

        def save(epoch: int, next_step: int, plan: dict[str, Any] | None, totals: Any, spent: float) -> None:
            if checkpoint_dir is None:
                return
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            state = {
                "train_config": asdict(cfg),
                "net_config": self.net.config.to_json(),
                "tuned": self.net.tuned_state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": self._rng_state(),
                "history": history,
                "best_score": best_score,
                "best_state": best_state,
                "best_bias": best_bias,
                "epoch": epoch,
                "next_step": next_step,
                "plan": plan,
                "totals": totals,
                "epoch_seconds": spent,
            }
            partial = checkpoint_dir / ".last.pt.partial"
            torch.save(state, partial)
            partial.replace(checkpoint_dir / "last.pt")

        if finish_early and plan is not None and start_step > 0:
            val, extra = self.validate()
            steps = len(plan["batches"])
            partial_epoch = {"epoch": start_epoch - 1 + start_step / steps, "seconds": epoch_seconds}
            partial_epoch.update({f"train_{k}": v / start_step for k, v in (totals or {}).items()})
            partial_epoch.update(val)
            history.append(partial_epoch)
            tqdm.write(
                f"fusion.train: finished early at epoch {start_epoch}, step {start_step}/{steps}:"
                f" val sentiment macro-F1 {val['val_sentiment_macro_f1']:.3f}"
                f" | department {val['val_department_accuracy']:.3f}"
                f" | Fashion-MNIST {val['val_fmnist_accuracy']:.3f}"
            )
            if val["val_score"] > best_score:
                best_score, best_bias = val["val_score"], extra["sentiment_bias"]
                best_state = copy.deepcopy(self.net.tuned_state_dict())
        if finish_early:
            start_epoch = cfg.epochs + 1
        for epoch in range(start_epoch, cfg.epochs + 1):
            t0 = time.perf_counter() - epoch_seconds
            if plan is None:
                plan = self.plan_epoch()
                if cfg.max_steps > 0:  # the last epoch of a capped run stops early
                    remaining = cfg.max_steps - (epoch - 1) * steps_per_epoch
                    if remaining <= 0:
                        break
                    plan["batches"] = plan["batches"][:remaining]

            def on_step(
                step: int, plan: dict[str, Any], totals: dict[str, float], epoch: int = epoch, t0: float = t0
            ) -> None:
                done = step + 1
                if checkpoint_every > 0 and done % checkpoint_every == 0 and done < len(plan["batches"]):
                    save(epoch, done, plan, totals, time.perf_counter() - t0)
                    tqdm.write(
                        f"fusion.train: epoch {epoch} step {done}/{len(plan['batches'])}"
                        f" loss {totals['loss'] / done:.3f}"
                        f" {(time.perf_counter() - t0) / done:.2f} s/step (checkpoint saved)"
                    )

            record: dict[str, float] = {"epoch": float(epoch)}
            record.update(self.train_epoch(epoch, optimizer, scheduler, plan, start_step, totals, on_step))
            val, extra = self.validate()
            record.update(val)
            record["seconds"] = time.perf_counter() - t0
            history.append(record)
            tqdm.write(
                f"epoch {epoch}: loss {record['train_loss']:.3f}"
                f" | val sentiment macro-F1 {val['val_sentiment_macro_f1']:.3f}"
                f" (tuned {val['val_sentiment_macro_f1_tuned']:.3f})"
                f" | department {val['val_department_accuracy']:.3f}"
                f" | Fashion-MNIST {val['val_fmnist_accuracy']:.3f} | {record['seconds']:.0f}s"
            )
            if val["val_score"] > best_score:
                best_score = val["val_score"]
                best_state = copy.deepcopy(self.net.tuned_state_dict())
                best_bias = extra["sentiment_bias"]
            save(epoch, len(plan["batches"]), plan, None, record["seconds"])
            if checkpoint_dir is not None:  # kept beside: last.pt is replaced (renamed over), not rewritten
                kept = checkpoint_dir / f"epoch_{epoch}.pt"
                kept.unlink(missing_ok=True)
                os.link(checkpoint_dir / "last.pt", kept)
            plan, totals, start_step = None, None, 0
        self.net.load_state_dict(best_state, strict=False)
        return history, best_bias


# -- evaluation of the exported model on the test splits (the serving code path) ---------------------
def evaluate_exported(
    predictor: Predictor,
    reviews: Reviews,
    test_rows: IntArray,
    fm_test: FashionMnist,
    rng: np.random.Generator,
) -> tuple[dict[str, Any], dict[str, Any]]:
    size = predictor.net.config.image_size
    texts = [reviews.texts[i] for i in test_rows]
    t_feat, wide = predictor.text_features(texts)
    images = [prepare_image(img, size) for img in fm_test.images]
    v_feat = predictor.image_features(images)
    text_out = predictor.heads(t_feat, wide, None)
    image_out = predictor.heads(None, None, v_feat)
    y_sent = reviews.sentiment[test_rows]
    leaf = reviews.leaf[test_rows]
    known = leaf >= 0
    y_dept = leaf_to_department(leaf[known])
    sent_pred = text_out["sentiment"].argmax(1)
    fm_pred = fmnist_predictions(image_out["category"])
    dept_pred = department_predictions(text_out["category"][known])
    # Synthesised pairs: each test review of a leaf that Fashion-MNIST has + a test image of that leaf.
    leaf_to_fm = leaf_to_fmnist_class()
    fm_class = np.where(known, leaf_to_fm[np.maximum(leaf, 0)], -1)
    pair_rows = np.flatnonzero(fm_class >= 0)
    by_class = {c: np.flatnonzero(fm_test.labels == c) for c in range(10)}
    pair_imgs = np.array([rng.choice(by_class[int(c)]) for c in fm_class[pair_rows]], dtype=np.int64)
    sel_t, sel_i = torch.from_numpy(pair_rows), torch.from_numpy(pair_imgs)
    both = predictor.heads(t_feat[sel_t], wide[sel_t], v_feat[sel_i])
    pair_leaf = leaf[pair_rows]
    pair_modes = {
        "both": both["category"],
        "text_only": text_out["category"][pair_rows],
        "image_only": image_out["category"][pair_imgs],
    }
    pairs = {mode: accuracy(pair_leaf, probs.argmax(1)) for mode, probs in pair_modes.items()}
    pairs_sent = {
        "both": macro_f1(y_sent[pair_rows], both["sentiment"].argmax(1), 3),
        "text_only": macro_f1(y_sent[pair_rows], sent_pred[pair_rows], 3),
    }
    # Embedding neighbourhoods: how often the nearest other test image shares the class.
    emb = image_out["embedding"]
    sample = rng.choice(len(emb), size=min(2000, len(emb)), replace=False)
    sims = emb[sample] @ emb[sample].T
    np.fill_diagonal(sims, -2.0)
    nn_same = float(np.mean(fm_test.labels[sample][sims.argmax(1)] == fm_test.labels[sample]))
    metrics = {
        "reviews_test": {
            "n": len(test_rows),
            "sentiment_macro_f1": macro_f1(y_sent, sent_pred, 3),
            "sentiment_accuracy": accuracy(y_sent, sent_pred),
            "department_accuracy": accuracy(y_dept, dept_pred),
            "leaf_accuracy": accuracy(leaf[known], text_out["category"][known].argmax(1)),
        },
        "fmnist_test": {
            "n": len(fm_test),
            "accuracy": accuracy(fm_test.labels, fm_pred),
            "embedding_nearest_neighbour_same_class": nn_same,
        },
        "pairs_test": {
            "n": len(pair_rows),
            "leaf_accuracy": pairs,
            "sentiment_macro_f1": pairs_sent,
        },
    }
    details = {
        "sentiment_confusion": confusion(y_sent, sent_pred, 3).tolist(),
        "fmnist_confusion": confusion(fm_test.labels[fm_pred >= 0], fm_pred[fm_pred >= 0], 10).tolist(),
        "fmnist_other_leaf": int(np.sum(fm_pred < 0)),
        "department_confusion": confusion(y_dept, dept_pred, len(DEPARTMENTS)).tolist(),
    }
    return metrics, details


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fusion.train", description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, default=Path("runs/full"), help="history, plots, card of this run")
    p.add_argument(
        "--export",
        type=Path,
        default=None,
        help="model repository folder to write (triton_models/ecom_fusion); its version folder"
        " --model-version is replaced, other versions are left as they are",
    )
    p.add_argument("--model-version", default=VERSION, help="Triton version folder to write (a number)")
    p.add_argument("--version-name", default=None, help="default ecom_fusion-<model version>.0")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output from its last checkpoint (same flags), reusing its caches",
    )
    p.add_argument(
        "--finish-early",
        action="store_true",
        help="with --resume: train no further, export the best of the checkpoint and the finished epochs",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=100,
        help="steps between checkpoints (0: after each epoch only); in --output/checkpoints",
    )
    p.add_argument(
        "--smoke", action="store_true", help="a few hundred examples, one epoch: checks the pipeline"
    )
    p.add_argument(
        "--preliminary", action="store_true", help="label the exported card as a preliminary version"
    )
    p.add_argument("--skip-baselines", action="store_true")
    for field_name, value in asdict(TrainConfig()).items():
        p.add_argument(f"--{field_name.replace('_', '-')}", type=type(value), default=None)
    for field_name, value in asdict(NetConfig()).items():
        if isinstance(value, int | float) and field_name != "num_leaves":
            p.add_argument(
                f"--{field_name.replace('_', '-')}", type=type(value), default=None, dest=f"net_{field_name}"
            )
    return p.parse_args(argv)


def configs_from_args(args: argparse.Namespace) -> tuple[TrainConfig, NetConfig]:
    cfg = TrainConfig()
    net_cfg = NetConfig()
    if args.smoke:
        cfg = TrainConfig(
            epochs=1,
            image_views=1,
            image_batch=32,
            max_train_reviews=96,
            max_train_images=128,
            max_eval_reviews=48,
            max_eval_images=64,
        )
        net_cfg = NetConfig(wide_buckets=1 << 12)
    for name in asdict(cfg):
        value = getattr(args, name, None)
        if value is not None:
            setattr(cfg, name, value)
    for name in asdict(net_cfg):
        value = getattr(args, f"net_{name}", None)
        if value is not None:
            setattr(net_cfg, name, value)
    return cfg, net_cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg, net_cfg = configs_from_args(args)
    wall0 = time.perf_counter()
    set_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    device = pick_device()
    rng = np.random.default_rng(cfg.seed)
    out_dir: Path = args.output
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"fusion.train: device {device}, {cfg.threads} torch thread(s), output {out_dir}")

    reviews = load_reviews()
    split = review_splits(reviews, cfg.seed)
    fm_train, fm_test = load_fashion_mnist("train"), load_fashion_mnist("test")
    fm_split = fmnist_splits(fm_train, cfg.seed)
    split["train"] = _cap(split["train"], cfg.max_train_reviews, rng)
    split["val"] = _cap(split["val"], cfg.max_eval_reviews, rng)
    split["test"] = _cap(split["test"], cfg.max_eval_reviews, rng)
    fm_split["train"] = _cap(fm_split["train"], cfg.max_train_images, rng)
    fm_split["val"] = _cap(fm_split["val"], cfg.max_eval_images, rng)
    if cfg.max_eval_images:
        fm_test = fm_test.subset(_cap(np.arange(len(fm_test)), cfg.max_eval_images, rng))
    sizes = {
        "reviews_train": len(split["train"]),
        "reviews_val": len(split["val"]),
        "reviews_test": len(split["test"]),
        "fmnist_train": len(fm_split["train"]),
        "fmnist_val": len(fm_split["val"]),
        "fmnist_test": len(fm_test),
    }
    print("fusion.train: sizes " + json.dumps(sizes))

    tokenizer, net = build_net(net_cfg)
    net.to(device)
    trainer = Trainer(cfg, net, tokenizer, device)
    if not args.model_version.isdigit():
        raise SystemExit("--model-version must be a number (a Triton version folder)")
    version_label = args.version_name or f"ecom_fusion-{args.model_version}.0"
    trainer.prepare(reviews, split, fm_train, fm_split, cache_dir=out_dir / "checkpoints")
    train0 = time.perf_counter()
    history, bias = trainer.fit(
        out_dir / "checkpoints", args.resume, args.checkpoint_every, args.resume and args.finish_early
    )
    train_seconds = time.perf_counter() - train0
    net.sentiment_bias.copy_(torch.from_numpy(bias).to(device))

    # Export, then evaluate what was exported (fp16 weights reloaded) through the serving code path.
    version = args.model_version
    version_dir = (args.export / version) if args.export else (out_dir / "export" / version)
    save_tuned(net, version_dir)
    # Two trainings never publish the same name: the weights' digest is part of it.
    version_name = f"{version_label}+{weights_digest(version_dir)}"
    eval0 = time.perf_counter()
    tok2, served = load_tuned(version_dir, device)
    predictor = Predictor(tok2, served, device)
    metrics, details = evaluate_exported(
        predictor, reviews, split["test"], fm_test, np.random.default_rng(cfg.seed + 1)
    )
    eval_seconds = time.perf_counter() - eval0

    base: dict[str, Any] = {}
    if not args.skip_baselines:
        base0 = time.perf_counter()
        train_all = np.concatenate([split["train"], split["val"]])
        base["tfidf_logreg"] = baselines.tfidf_logreg(reviews, train_all, split["test"], cfg.seed)
        base["image_linear_probe"] = baselines.image_linear_probe(
            trainer.image_train[0], fm_train.labels[fm_split["train"]], fm_test, net_cfg, device, cfg.seed
        )
        base["seconds"] = time.perf_counter() - base0

    wall = time.perf_counter() - wall0
    run_info = {
        "version_name": version_name,
        "model_version": version,
        "preliminary": bool(args.preliminary or args.smoke),
        "smoke": bool(args.smoke),
        "command": "python -m fusion.train "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "device": str(device),
        "torch_threads": cfg.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seconds": {
            "wall_total": wall,
            "text_cache": trainer.cache_seconds["text"],
            "image_cache": trainer.cache_seconds["image"],
            "training": train_seconds,
            "test_evaluation": eval_seconds,
            "baselines": base.get("seconds", 0.0),
        },
        "sizes": sizes,
        "train_config": asdict(cfg),
        "net_config": json.loads(net_cfg.to_json()),
        "sentiment_bias": [float(b) for b in bias],
    }
    all_metrics = {
        "model": metrics,
        "baselines": base,
        "run": run_info,
        "categories": list(LEAF_NAMES),
        "details": details,
    }
    (out_dir / "history.json").write_text(json.dumps({"epochs": history, "run": run_info}, indent=2) + "\n")
    previous = report.previous_metrics(version_dir)
    for target in {out_dir, version_dir}:
        (target / "metrics.json").write_text(json.dumps(all_metrics, indent=2) + "\n")
        report.write_model_card(target, all_metrics, history, details, previous)
    if args.export:
        write_repository(args.export, version_name=version_name, embedding_dim=net_cfg.embedding_dim)
    print(report.summary_line(all_metrics))
    print(f"fusion.train: done in {wall:.0f}s; exported to {version_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
