"""Contrastive training of a CLIP model on a catalog: symmetric InfoNCE with a learnable temperature.

A caption is a positive for every image in the batch that agrees on the visible fields it names
("red" for every red product); the rest of the batch are negatives. With ``hard_negatives``
half-batches hold one kind, so colour and pattern must tell them apart.

Two stages, because from scratch the towers otherwise settle on colour, the easy signal, and
never learn shape: each needs the other to tell kinds apart first. In the first
``single_attribute_share`` of the budget the text tower is frozen at its random init (fixed,
distinct targets per word, as in a classifier) and captions name one attribute; then both towers
train on full captions. Grayscale images with colour-free captions keep pressure on shape.
The output directory loads with ``SentenceTransformer(DIR)`` and ``Embedder(DIR)``.

Example::

    train(TrainConfig(catalog="data/train/catalog.csv", out="models/demo", minutes=4))
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from shelfsight.ingest.catalog import read_catalog
from shelfsight.search.embedder import pick_device
from shelfsight.search.images import decode_image, read_image_bytes

SHORT_CAPTION = 16  # tokens; captions up to this long are embedded in one padded batch, longer ones in another
CHECKPOINT_SECONDS = 120  # at most one checkpoint per this many seconds, at the end of an epoch


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
    hard_negatives: bool = False
    val_share: float = 0.1
    seed: int = 0
    device: str | None = None
    precision: str = "auto"  # auto | bf16 | fp32
    gray_share: float = 0.3  # share of images shown in grayscale with a caption that names no colour
    single_attribute_share: float = 0.3  # first share of the budget trained on one-attribute captions
    rephrase: bool = True  # second stage: "a photo of a" captions get a random phrasing of the same
    filler_share: float = 0.3  # share of captions given one or two words that name nothing visible


# The product fields a picture shows; a caption pins down some of them ("red" pins only colour).
VISIBLE_FIELDS = ("category", "color", "pattern")


@dataclass(frozen=True)
class Caption:
    text: str
    pins: tuple[str, ...]  # the visible fields this text names; any image agreeing on them matches it


def captions_for(title: str, description: str, fields: dict) -> list[Caption]:
    """Caption templates: the catalog text plus short phrasings from its structured fields.

    A ``type`` field (the shop's word for the kind: "handbag" for a bag) is phrased like the
    category, so the text tower learns both words for the same picture.
    """
    every = tuple(f for f in VISIBLE_FIELDS if fields.get(f))
    caps = [Caption(title, every), Caption(f"{title}. {description}".strip(". "), every)]
    color, kind, pattern = fields.get("color"), fields.get("category"), fields.get("pattern")
    nouns = [str(n) for n in dict.fromkeys((kind, fields.get("type"))) if n] if kind else []
    if color and kind:
        pair = ("category", "color")
        for noun in nouns:
            caps += [
                Caption(t, pair) for t in (f"a {color} {noun}", f"a photo of a {color} {noun}", f"{noun} in {color}")
            ]
        caps.append(Caption(str(color), ("color",)))
        if pattern:  # "plain" too: it is a value shoppers and templates use ("a plain bag")
            caps.append(Caption(f"a {color} {pattern} {kind}", every))
            caps.append(Caption(f"a {pattern} {kind}", ("category", "pattern")))
    for noun in nouns:
        caps += [Caption(f"a photo of a {noun}", ("category",)), Caption(noun, ("category",))]
    return [c for c in caps if c.text]


# Ways to say "a photo of"; second-stage captions draw one at random, so the kind word carries
# the match and no single phrasing is special to the model.
PHOTO_PHRASES = ("a photo of a", "a picture of a", "an image of a", "a shot of a", "a snapshot of a")


def rephrase(text: str, rng: random.Random) -> str:
    """Swap a leading "a photo of a" for a random phrasing of the same."""
    head = PHOTO_PHRASES[0] + " "
    return f"{rng.choice(PHOTO_PHRASES)} {text[len(head) :]}" if text.startswith(head) else text


def positive_mask(captions: list[Caption], attributes: list[dict]) -> np.ndarray:
    """(texts, images) bool: caption i matches image j when j agrees on every field i names.

    The diagonal is always positive; a caption that names no visible field matches only its own
    image. Multi-positive targets keep "red" from pushing away every other red product in a batch.
    """
    n = len(captions)
    mask = np.eye(n, dtype=bool)
    for i, cap in enumerate(captions):
        if cap.pins:
            want = attributes[i]
            mask[i] = [all(a.get(f) == want.get(f) for f in cap.pins) for a in attributes]
            mask[i, i] = True
    return mask


def multi_positive_loss(logits_per_text, mask):
    """Symmetric InfoNCE where each row (and column) may have several positives.

    For text i: log-sum-exp over all images minus log-sum-exp over its positive images; the same
    for each image over texts; the mean of both directions. With an identity mask this is CLIP's loss.
    """
    import torch

    neg_inf = torch.finfo(logits_per_text.dtype).min
    t2i = torch.logsumexp(logits_per_text, 1) - torch.logsumexp(logits_per_text.masked_fill(~mask, neg_inf), 1)
    per_image, mask_t = logits_per_text.T, mask.T
    i2t = torch.logsumexp(per_image, 1) - torch.logsumexp(per_image.masked_fill(~mask_t, neg_inf), 1)
    return (t2i.mean() + i2t.mean()) / 2


def filler_words(vocabulary, informative: set[str]) -> list[str]:
    """Whole words the tokenizer knows that say nothing about a product in this catalog."""
    words = {t[: -len("</w>")] for t in vocabulary if t.endswith("</w>")}
    return sorted(w for w in words if w.isascii() and w.isalpha() and w.lower() not in informative)


def add_filler(text: str, fillers: list[str], rng: random.Random) -> str:
    """Insert one or two filler words at random places (random insertion, as in EDA text augmentation).

    Shoppers type words a catalog never uses ("any", "looking for"); the text tower learns that
    such words do not change what a caption asks for.
    """
    words = text.split()
    for _ in range(rng.choice((1, 2))):
        words.insert(rng.randint(0, len(words)), rng.choice(fillers))
    return " ".join(words)


def _without_type(fields: dict) -> dict:
    return {k: v for k, v in fields.items() if k != "type"}


def _group_of(fields: dict, title: str) -> str:
    keys = [str(fields.get(k)) for k in VISIBLE_FIELDS if fields.get(k)]
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
                "captions": (caps := captions_for(p.title, p.description, p.fields)),
                "colourless": [c for c in caps if c.pins and "color" not in c.pins],
                # First-stage targets are the frozen random text tower's: one word per kind, so a
                # type ("tote") does not pull bag images towards a second, unrelated target.
                "single": [
                    c for c in captions_for(p.title, p.description, _without_type(p.fields)) if len(c.pins) == 1
                ],
                "attributes": {f: str(p.fields[f]) for f in VISIBLE_FIELDS if p.fields.get(f)},
                "group": _group_of(p.fields, p.title),
                "kind": str(p.fields.get("category", "")),
            }
        )
    return examples


def use_bf16(device: str, precision: str) -> bool:
    """bf16 autocast when asked, or on 'auto' where the hardware runs it natively (CPU AMX/AVX512-BF16, CUDA)."""
    import torch

    if precision in ("bf16", "fp32"):
        return precision == "bf16"
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def train(config: TrainConfig, progress: bool = True) -> dict:
    """Train and save a model to ``config.out``; returns the run's metrics."""
    # oneDNN keeps a kernel per tensor shape, and caption batches come in many shapes: with its
    # default 1,024 entries a 90-second run peaked at 3.0 GB RSS; with 64, 1.8 GB at the same
    # speed (8 was 22% slower). Read when oneDNN first runs, so set before any tensor work.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    import torch
    from shelfsight.train.model_init import init_model
    from transformers import CLIPModel, CLIPProcessor

    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    out = Path(config.out)
    source = Path(config.init) if config.init else init_model(config.preset, out, seed=config.seed)
    model = CLIPModel.from_pretrained(str(source))
    processor = CLIPProcessor.from_pretrained(str(source))
    size = model.config.vision_config.image_size
    mean = torch.tensor(processor.image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(1, 3, 1, 1)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    device = pick_device(config.device)
    bf16 = use_bf16(device, config.precision)
    model.to(device).train()

    examples = _load_examples(config.catalog, size)
    if len(examples) < 8:
        raise ValueError(f"only {len(examples)} usable products in {config.catalog}; training needs more")
    groups = sorted({e["group"] for e in examples})
    rng.shuffle(groups)
    val_groups = set(groups[: max(1, int(len(groups) * config.val_share))])
    train_set = [e for e in examples if e["group"] not in val_groups]
    val_set = [e for e in examples if e["group"] in val_groups]
    informative = {w.lower() for e in examples for w in e["captions"][0].text.split()}
    informative |= {v.lower() for e in examples for v in e["attributes"].values()}
    fillers = filler_words(processor.tokenizer.get_vocab(), informative)

    def images(batch, augment: bool, gray: list[bool] | None = None):
        pad = batch[0]["pixels"].shape[0]
        crops = []
        for n, e in enumerate(batch):
            x = torch.from_numpy(e["pixels"]).permute(2, 0, 1).float() / 255.0
            if gray and gray[n]:
                x = (x * luma).sum(0, keepdim=True).expand(3, -1, -1)
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

    def texts(captions: list[str]):
        tok = processor.tokenizer(captions, padding=True, truncation=True, max_length=77, return_tensors="pt")
        return {k: v.to(device) for k, v in tok.items()}

    def text_embeddings(captions: list[str]):
        """Unit text embeddings, short and long captions run apart: padding every caption to the
        longest (title + description, ~50 tokens) made a step 1.45x slower (measured at batch 64)."""
        encoded = processor.tokenizer(captions, truncation=True, max_length=77)  # tokenized once, padded per bucket
        lengths = [len(ids) for ids in encoded["input_ids"]]
        out = None
        for bucket in (
            [i for i, n in enumerate(lengths) if n <= SHORT_CAPTION],
            [i for i, n in enumerate(lengths) if n > SHORT_CAPTION],
        ):
            if not bucket:
                continue
            padded = processor.tokenizer.pad(
                {k: [v[i] for i in bucket] for k, v in encoded.items()}, return_tensors="pt"
            )
            feats = _features(model.get_text_features(**{k: v.to(device) for k, v in padded.items()})).float()
            if out is None:
                out = feats.new_zeros(len(captions), feats.shape[1])
            out = out.index_copy(0, torch.tensor(bucket, device=feats.device), feats)
        return torch.nn.functional.normalize(out, dim=-1)

    def batches():
        items = list(train_set)
        rng.shuffle(items)
        if config.hard_negatives and spent() >= config.single_attribute_share:
            # Pack each half-batch with one kind: colour and pattern must tell them apart. Not in
            # the first stage: with two kinds a batch, kind never gets learned (measured: tagging
            # accuracy 0.18 with packing from the start, 0.85 without).
            by_kind: dict[str, list] = {}
            for e in items:
                by_kind.setdefault(e["kind"], []).append(e)
            half = max(2, config.batch_size // 2)
            chunks = [group[i : i + half] for group in by_kind.values() for i in range(0, len(group), half)]
            rng.shuffle(chunks)
            items = [e for chunk in chunks for e in chunk]
        for i in range(0, len(items) - 1, config.batch_size):
            yield items[i : i + config.batch_size]

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.05)
    budget_s = config.minutes * 60 if config.minutes else None
    max_epochs = config.epochs or 10_000
    total_steps = max(1, len(range(0, len(train_set) - 1, config.batch_size))) * max_epochs
    started = time.monotonic()
    history = []
    step, epoch, loss_value = 0, 0, float("nan")
    text_frozen = False
    last_recall = float("nan")
    last_save = started
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=int(budget_s) if budget_s else total_steps, unit="s" if budget_s else "step", desc="train")

    def spent() -> float:
        return (time.monotonic() - started) / budget_s if budget_s else step / total_steps

    while epoch < max_epochs and spent() < 1.0:
        for batch in batches():
            if spent() >= 1.0:
                break
            # Warm up, then cosine decay over the time (or step) budget.
            lr = config.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(1.0, spent())))
            for g in optimizer.param_groups:
                g["lr"] = lr
            # Some images lose their colour, and their captions with it: shape must then carry the match.
            gray = [rng.random() < config.gray_share and bool(e["colourless"]) for e in batch]
            # Curriculum: one-attribute captions ("red", "a photo of a shoe") first, so each word
            # gets its own direction before full titles mix them.
            first_stage = spent() < config.single_attribute_share
            pool = "single" if first_stage else "captions"
            if first_stage != text_frozen:
                text_frozen = _freeze(model.text_model, first_stage)
            chosen = [rng.choice(e["colourless"] if g else (e[pool] or e["captions"])) for e, g in zip(batch, gray)]
            if not first_stage and config.rephrase:
                chosen = [Caption(rephrase(c.text, rng), c.pins) for c in chosen]
            if fillers and config.filler_share > 0:
                chosen = [
                    Caption(add_filler(c.text, fillers, rng), c.pins) if rng.random() < config.filler_share else c
                    for c in chosen
                ]
            mask = torch.from_numpy(positive_mask(chosen, [e["attributes"] for e in batch])).to(device)
            with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
                image_embeds = _features(model.get_image_features(pixel_values=images(batch, True, gray))).float()
                text_embeds = text_embeddings([c.text for c in chosen])
            image_embeds = torch.nn.functional.normalize(image_embeds, dim=-1)
            logits = model.logit_scale.exp() * text_embeds @ image_embeds.T  # as CLIPModel's logits_per_text
            loss = multi_positive_loss(logits, mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            loss_value = loss.item()
            if bar is not None:
                bar.n = int(time.monotonic() - started) if budget_s else step
                bar.set_postfix(loss=f"{loss_value:.3f}", epoch=epoch, val_r1=f"{last_recall:.2f}")
        else:
            recall = last_recall = _val_recall(model, val_set, images, texts)
            history.append({"epoch": epoch, "step": step, "loss": round(loss_value, 4), "val_recall@1": recall})
            if bar is not None:
                bar.set_postfix(loss=f"{loss_value:.3f}", val_r1=f"{recall:.2f}")
            if time.monotonic() - last_save > CHECKPOINT_SECONDS:
                # A loadable checkpoint, so a long run that is stopped still leaves a model.
                _save(model, processor, out)
                last_save = time.monotonic()
        epoch += 1
    if bar is not None:
        bar.close()
    model.eval()
    final = _val_recall(model, val_set, images, texts)
    _save(model, processor, out)
    metrics = {
        "config": asdict(config),
        "bf16": bf16,
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
    """Text->image recall@1 on held-out groups: does "a {color} {kind}" rank an image of both first?"""
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
        pair_pins = ("category", "color")
        caps = [next((c.text for c in e["captions"] if c.pins == pair_pins), e["captions"][0].text) for e in val_set]
        txt = torch.cat(
            [_features(model.get_text_features(**texts(caps[i : i + 64]))) for i in range(0, len(caps), 64)]
        )
    sims = torch.nn.functional.normalize(txt, dim=-1) @ torch.nn.functional.normalize(img, dim=-1).T
    pair = [(e["attributes"].get("category"), e["attributes"].get("color")) for e in val_set]
    best = sims.argmax(dim=1).tolist()
    model.train(was_training)
    return round(sum(pair[b] == pair[i] for i, b in enumerate(best)) / len(val_set), 4)


def _save(model, processor, out: Path) -> None:
    model.save_pretrained(str(out))  # safetensors from any device
    processor.save_pretrained(str(out))


def _freeze(module, frozen: bool) -> bool:
    for param in module.parameters():
        param.requires_grad_(not frozen)
    return frozen


def _features(x):
    """Projected embeddings (transformers 5 wraps them in an output object)."""
    return x.pooler_output if hasattr(x, "pooler_output") else x
