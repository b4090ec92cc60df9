"""Contrastive training of a CLIP model on a catalog: symmetric InfoNCE with a learnable temperature.

Images and captions of the same product are positives; everything else in the batch is a
negative, and with ``hard_negatives`` batches are packed with products of the same kind so the
model must learn colour and pattern, not only shape. The output directory loads with
``SentenceTransformer(DIR)`` and ``Embedder(DIR)``.

Example::

    train(TrainConfig(catalog="data/train/catalog.csv", out="models/demo", minutes=4))
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ingest.catalog import read_catalog
from ingest.images import decode_image, read_image_bytes
from search.embedder import pick_device


@dataclass(frozen=True)
class TrainConfig:
    catalog: str
    out: str
    init: str | None = None  # fine-tune this CLIP directory; None: a fresh ``preset`` model
    preset: str = "small"
    minutes: float | None = 4.0
    epochs: int | None = None
    batch_size: int = 64
    lr: float = 5e-4
    hard_negatives: bool = True
    val_share: float = 0.1
    seed: int = 0
    device: str | None = None


def captions_for(title: str, description: str, fields: dict) -> list[str]:
    """Caption templates: the catalog text plus short phrasings from its structured fields."""
    caps = [title, f"{title}. {description}".strip(". ")]
    color, kind, pattern = fields.get("color"), fields.get("category"), fields.get("pattern")
    if color and kind:
        caps += [f"a {color} {kind}", f"a photo of a {color} {kind}", f"{kind} in {color}", f"{color}"]
        if pattern and pattern != "plain":
            caps += [f"a {color} {pattern} {kind}"]
    if kind:
        caps += [f"a photo of a {kind}", f"{kind}"]
    return [c for c in caps if c]


def _group_of(fields: dict, title: str) -> str:
    keys = [str(fields.get(k)) for k in ("category", "color", "pattern") if fields.get(k)]
    return "/".join(keys) or title.lower()


def _load_examples(catalog: str, image_size: int):
    """Decode every product once at a little over the model's size (crops come from it)."""
    from PIL import Image

    cat = read_catalog(catalog)
    seen: set[str] = set()
    examples = []
    pad = int(image_size * 1.15)
    for row in cat.rows:
        p = row.product
        if not p.image:
            continue
        try:
            data = read_image_bytes(p.image, cat.base_dir)
            image = decode_image(data)
        except Exception:  # a broken image just drops out of training, as in ingest
            continue
        key = hashlib.sha256(data + p.text.encode()).hexdigest()
        if key in seen:  # exact duplicates would be their own false negatives
            continue
        seen.add(key)
        pixels = np.array(image.resize((pad, pad), Image.Resampling.BICUBIC), dtype=np.uint8)
        examples.append(
            {
                "pixels": pixels,
                "captions": captions_for(p.title, p.description, p.fields),
                "group": _group_of(p.fields, p.title),
                "kind": str(p.fields.get("category", "")),
                "kind_color": f"{p.fields.get('category')}/{p.fields.get('color')}",
            }
        )
    return examples


def train(config: TrainConfig, progress: bool = True) -> dict:
    """Train and save a model to ``config.out``; returns the run's metrics."""
    import torch
    import torch.nn.functional as F
    from transformers import CLIPModel, CLIPProcessor

    from train.model_init import init_model

    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    out = Path(config.out)
    source = Path(config.init) if config.init else init_model(config.preset, out, seed=config.seed)
    model = CLIPModel.from_pretrained(str(source))
    processor = CLIPProcessor.from_pretrained(str(source))
    size = model.config.vision_config.image_size
    mean = torch.tensor(processor.image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(1, 3, 1, 1)
    device = pick_device(config.device)
    model.to(device).train()

    examples = _load_examples(config.catalog, size)
    if len(examples) < 8:
        raise ValueError(f"only {len(examples)} usable products in {config.catalog}; training needs more")
    groups = sorted({e["group"] for e in examples})
    rng.shuffle(groups)
    val_groups = set(groups[: max(1, int(len(groups) * config.val_share))])
    train_set = [e for e in examples if e["group"] not in val_groups]
    val_set = [e for e in examples if e["group"] in val_groups]

    def images(batch, augment: bool):
        pad = batch[0]["pixels"].shape[0]
        crops = []
        for e in batch:
            x = torch.from_numpy(e["pixels"]).permute(2, 0, 1).float() / 255.0
            if augment:
                i, j = rng.randint(0, pad - size), rng.randint(0, pad - size)
                x = x[:, i : i + size, j : j + size]
                if rng.random() < 0.5:
                    x = x.flip(2)
                x = (x * rng.uniform(0.85, 1.15)).clamp(0, 1)  # brightness only: colour is a label
            else:
                o = (pad - size) // 2
                x = x[:, o : o + size, o : o + size]
            crops.append(x)
        return ((torch.stack(crops) - mean) / std).to(device)

    def texts(captions):
        tok = processor.tokenizer(captions, padding=True, truncation=True, max_length=77, return_tensors="pt")
        return {k: v.to(device) for k, v in tok.items()}

    def batches():
        items = list(train_set)
        rng.shuffle(items)
        if config.hard_negatives:
            # Pack each half-batch with one kind: colour and pattern must tell them apart.
            by_kind: dict[str, list] = {}
            for e in items:
                by_kind.setdefault(e["kind"], []).append(e)
            chunks = []
            half = max(2, config.batch_size // 2)
            for group in by_kind.values():
                chunks += [group[i : i + half] for i in range(0, len(group), half)]
            rng.shuffle(chunks)
            items = [e for chunk in chunks for e in chunk]
        for i in range(0, len(items) - 1, config.batch_size):
            b = items[i : i + config.batch_size]
            # Two products of one group in a batch are not negatives of each other: keep one.
            seen, unique = set(), []
            for e in b:
                if e["group"] not in seen:
                    seen.add(e["group"])
                    unique.append(e)
            if len(unique) >= 2:
                yield unique

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.05)
    deadline = time.monotonic() + config.minutes * 60 if config.minutes else math.inf
    max_epochs = config.epochs or 10_000
    steps_per_epoch = max(1, len(train_set) // config.batch_size)
    total_steps = steps_per_epoch * (config.epochs or max(1, int(9e9)))
    started = time.monotonic()
    history = []
    step = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=int(config.minutes * 60) if config.minutes else max_epochs * steps_per_epoch,
            unit="s" if config.minutes else "step",
            desc="train",
        )
    for epoch in range(max_epochs):
        for batch in batches():
            if time.monotonic() > deadline:
                break
            # Warm up, then cosine decay over the time (or step) budget.
            frac = (
                (time.monotonic() - started) / (config.minutes * 60) if config.minutes else step / max(1, total_steps)
            )
            lr = config.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
            for g in optimizer.param_groups:
                g["lr"] = lr
            pixel = images(batch, augment=True)
            caps = [rng.choice(e["captions"]) for e in batch]
            logits = model(pixel_values=pixel, **texts(caps)).logits_per_image
            target = torch.arange(len(batch), device=device)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            if bar is not None:
                bar.n = int(time.monotonic() - started) if config.minutes else step
                bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch)
        else:
            recall = _val_recall(model, val_set, images, texts)
            history.append({"epoch": epoch, "step": step, "loss": round(loss.item(), 4), "val_recall@1": recall})
            if bar is not None:
                bar.set_postfix(loss=f"{loss.item():.3f}", val_r1=f"{recall:.2f}")
            continue
        break
    if bar is not None:
        bar.close()
    model.eval()
    final = _val_recall(model, val_set, images, texts)
    model.to("cpu").save_pretrained(str(out))
    processor.save_pretrained(str(out))
    metrics = {
        "config": asdict(config),
        "steps": step,
        "seconds": round(time.monotonic() - started, 1),
        "train_products": len(train_set),
        "val_products": len(val_set),
        "val_text_to_image_recall@1": final,
        "history": history,
    }
    (out / "training.json").write_text(json.dumps(metrics, indent=2))
    (out / "shelfsight_model.json").write_text(
        json.dumps({"preset": config.preset, "trained": True, "catalog": config.catalog}, indent=2)
    )
    return metrics


def _val_recall(model, val_set, images, texts) -> float:
    """Text->image recall@1 on held-out groups: does the kind+colour caption find its image?"""
    import torch

    if len(val_set) < 2:
        return float("nan")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        img = torch.cat(
            [
                _features(model.get_image_features(pixel_values=images(val_set[i : i + 64], False)))
                for i in range(0, len(val_set), 64)
            ]
        )
        caps = [e["captions"][2] if len(e["captions"]) > 2 else e["captions"][0] for e in val_set]
        txt = torch.cat(
            [_features(model.get_text_features(**texts(caps[i : i + 64]))) for i in range(0, len(caps), 64)]
        )
    sims = torch.nn.functional.normalize(txt, dim=-1) @ torch.nn.functional.normalize(img, dim=-1).T
    # A hit is any image of the caption's kind and colour (the caption names only those).
    groups = [e["kind_color"] for e in val_set]
    best = sims.argmax(dim=1).tolist()
    model.train(was_training)
    return round(sum(groups[b] == groups[i] for i, b in enumerate(best)) / len(val_set), 4)


def _features(x):
    """Projected embeddings (transformers 5 wraps them in an output object)."""
    return x.pooler_output if hasattr(x, "pooler_output") else x
