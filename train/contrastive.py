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

This module runs the loop; each concern has its own module: ``captions`` (caption text),
``examples`` (the ``Example`` record), ``batches`` (what a step draws), ``encode`` (image and
text tensors), ``loss``, ``schedule`` (budget and learning rate) and ``precision`` (autocast).

Example::

    train(TrainConfig(catalog="data/train/catalog.csv", out="models/demo", steps=650))
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shelfsight.search.embedder import pick_device
from shelfsight.train.batches import CaptionVariety, batch_starts, choose_captions, choose_gray, order_batches
from shelfsight.train.captions import (
    PHOTO_PHRASES,
    VISIBLE_FIELDS,
    Caption,
    add_filler,
    captions_for,
    filler_words,
    rephrase,
)
from shelfsight.train.encode import SHORT_CAPTION, ImageView, features, image_batch, text_embeddings, tokenize
from shelfsight.train.examples import Example, informative_words, load_examples, split_by_group
from shelfsight.train.loss import multi_positive_loss, positive_mask
from shelfsight.train.precision import autocast, use_bf16
from shelfsight.train.schedule import MAX_EPOCHS, Budget, cosine_lr, set_lr
from shelfsight.train.threads import ThreadTuner

if TYPE_CHECKING:
    import torch
    from tqdm import tqdm
    from transformers import CLIPModel, CLIPProcessor

# Re-exported: callers and tests import these from here.
__all__ = [
    "PHOTO_PHRASES",
    "SHORT_CAPTION",
    "VISIBLE_FIELDS",
    "Caption",
    "Example",
    "TrainConfig",
    "add_filler",
    "captions_for",
    "filler_words",
    "multi_positive_loss",
    "positive_mask",
    "rephrase",
    "train",
    "use_bf16",
    "val_recall",
]

CHECKPOINT_SECONDS = 120  # at most one checkpoint per this many seconds, at the end of an epoch
VAL_BATCH = 64


@dataclass(frozen=True)
class TrainConfig:
    catalog: str
    out: str
    init: str | None = None  # fine-tune this CLIP directory; None: a fresh ``preset`` model
    preset: str = "small"
    minutes: float | None = None  # a wall-clock budget: the model then depends on the machine's load
    epochs: int | None = None
    steps: int | None = None  # the budget in optimizer steps; wins over minutes and epochs
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


@dataclass(frozen=True)
class Run:
    """What every step of one training run reads (the model and optimizer change in place)."""

    config: TrainConfig
    model: CLIPModel
    processor: CLIPProcessor
    view: ImageView
    bf16: bool
    rng: random.Random  # the run's one random stream: split, batch order, captions, crops
    train_set: list[Example]
    val_set: list[Example]
    fillers: list[str]
    optimizer: torch.optim.Optimizer
    budget: Budget
    threads: ThreadTuner  # torch's thread count, by measured step time (the one mutable part)


@dataclass(frozen=True)
class LoopState:
    """Where the epoch loop stands; each step and epoch returns a new one."""

    last_save: float  # time.monotonic() of the last checkpoint (the start, before the first)
    step: int = 0
    epoch: int = 0
    loss: float = float("nan")
    text_frozen: bool = False
    last_recall: float = float("nan")
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)


def train(config: TrainConfig, progress: bool = True) -> dict:
    """Train and save a model to ``config.out``; returns the run's metrics."""
    # oneDNN keeps a kernel per tensor shape, and caption batches come in many shapes: with its
    # default 1,024 entries a 90-second run peaked at 3.0 GB RSS; with 64, 1.8 GB at the same
    # speed (8 was 22% slower). Read when oneDNN first runs, so set before any tensor work.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    run = _start_run(config)
    bar = _open_bar(run.budget) if progress else None
    state = _train_epochs(run, bar)
    if bar is not None:
        bar.close()
    run.model.eval()
    final = val_recall(run.model, run.val_set, run.view, run.processor)
    out = Path(config.out)
    _save(run.model, run.processor, out)
    metrics = {
        "config": asdict(config),
        "bf16": run.bf16,
        "steps": state.step,
        "seconds": round(run.budget.elapsed(), 1),
        "train_products": len(run.train_set),
        "val_products": len(run.val_set),
        "val_text_to_image_recall@1": final,
        "history": list(state.history),
    }
    (out / "training.json").write_text(json.dumps(metrics, indent=2))
    (out / "shelfsight_model.json").write_text(
        json.dumps({"preset": config.preset, "trained": True, "catalog": config.catalog}, indent=2)
    )
    return metrics


def _load_model(config: TrainConfig) -> tuple[CLIPModel, CLIPProcessor]:
    """The model to train: ``config.init``, or a fresh ``config.preset`` model written to ``config.out``."""
    import torch
    from shelfsight.train.model_init import init_model
    from transformers import CLIPModel, CLIPProcessor

    torch.manual_seed(config.seed)
    source = Path(config.init) if config.init else init_model(config.preset, Path(config.out), seed=config.seed)
    return CLIPModel.from_pretrained(str(source)), CLIPProcessor.from_pretrained(str(source))


def _start_run(config: TrainConfig) -> Run:
    """Seed, load the model and the catalog, hold out validation groups, and start the budget clock."""
    import torch

    rng = random.Random(config.seed)
    model, processor = _load_model(config)
    device = pick_device(config.device)
    view = ImageView.for_model(model, processor, device)
    bf16 = use_bf16(device, config.precision)
    model.to(device).train()

    examples = load_examples(config.catalog, view.size)
    if len(examples) < 8:
        raise ValueError(f"only {len(examples)} usable products in {config.catalog}; training needs more")
    train_set, val_set = split_by_group(examples, config.val_share, rng)
    fillers = filler_words(processor.tokenizer.get_vocab(), informative_words(examples))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.05)
    steps_per_epoch = len(batch_starts(len(train_set), config.batch_size))
    budget = Budget.start(config.minutes, config.epochs, steps_per_epoch, config.steps)
    threads = ThreadTuner.for_machine()
    return Run(config, model, processor, view, bf16, rng, train_set, val_set, fillers, optimizer, budget, threads)


def _train_epochs(run: Run, bar: tqdm | None) -> LoopState:
    """Epochs until ``config.epochs`` or the budget runs out; each full epoch ends with a validation."""
    state = LoopState(last_save=run.budget.started)
    epochs = run.config.epochs if run.config.epochs and not run.config.steps else MAX_EPOCHS  # steps end a step budget
    while state.epoch < epochs and run.budget.spent(state.step) < 1.0:
        state, finished = _train_epoch(run, state, bar)
        if finished:
            state = _end_epoch(run, state, bar)
        state = replace(state, epoch=state.epoch + 1)
    return state


def _train_epoch(run: Run, state: LoopState, bar: tqdm | None) -> tuple[LoopState, bool]:
    """One pass over the training set; False when the budget ran out part-way."""
    config = run.config
    pack_kinds = config.hard_negatives and run.budget.spent(state.step) >= config.single_attribute_share
    for batch in order_batches(run.train_set, config.batch_size, pack_kinds, run.rng):
        spent = run.budget.spent(state.step)
        if spent >= 1.0:
            return state, False
        run.threads.before(state.step)
        started = time.perf_counter()
        state = _train_step(run, batch, state, spent)
        run.threads.after(state.step - 1, time.perf_counter() - started)
        if bar is not None:
            bar.n = int(run.budget.elapsed()) if run.budget.seconds else state.step
            bar.set_postfix(
                loss=f"{state.loss:.3f}",
                epoch=state.epoch,
                val_r1=f"{state.last_recall:.2f}",
                threads=run.threads.chosen,
            )
    return state, True


def _train_step(run: Run, batch: list[Example], state: LoopState, spent: float) -> LoopState:
    """One optimizer step at ``spent`` of the budget: draw the views and captions, then descend."""
    import torch

    config = run.config
    set_lr(run.optimizer, cosine_lr(config.lr, state.step, spent))
    gray = choose_gray(batch, config.gray_share, run.rng)
    first_stage = spent < config.single_attribute_share
    text_frozen = state.text_frozen
    if first_stage != text_frozen:
        text_frozen = _freeze(run.model.text_model, first_stage)
    variety = CaptionVariety(config.rephrase and not first_stage, run.fillers, config.filler_share)
    captions = choose_captions(batch, gray, first_stage, variety, run.rng)
    loss = _batch_loss(run, batch, gray, captions)
    run.optimizer.zero_grad()
    loss.backward()
    run.optimizer.step()
    with torch.no_grad():
        run.model.logit_scale.clamp_(0, math.log(100))
    return replace(state, step=state.step + 1, loss=loss.item(), text_frozen=text_frozen)


def _batch_loss(run: Run, batch: list[Example], gray: list[bool], captions: list[Caption]) -> torch.Tensor:
    """The multi-positive loss of a batch's (augmented) images against its chosen captions."""
    import torch

    model, device = run.model, run.view.device
    mask = torch.from_numpy(positive_mask(captions, [e.attributes for e in batch])).to(device)
    with autocast(device, run.bf16):
        pixels = image_batch(batch, run.view, rng=run.rng, gray=gray)
        image_embeds = features(model.get_image_features(pixel_values=pixels)).float()
        text_embeds = text_embeddings([c.text for c in captions], model, run.processor.tokenizer, device)
    image_embeds = torch.nn.functional.normalize(image_embeds, dim=-1)
    logits = model.logit_scale.exp() * text_embeds @ image_embeds.T  # as CLIPModel's logits_per_text
    return multi_positive_loss(logits, mask)


def _end_epoch(run: Run, state: LoopState, bar: tqdm | None) -> LoopState:
    """Validate, record the epoch, and checkpoint when the last one is old enough."""
    recall = val_recall(run.model, run.val_set, run.view, run.processor)
    entry = {"epoch": state.epoch, "step": state.step, "loss": round(state.loss, 4), "val_recall@1": recall}
    if bar is not None:
        bar.set_postfix(loss=f"{state.loss:.3f}", val_r1=f"{recall:.2f}")
    last_save = state.last_save
    if time.monotonic() - last_save > CHECKPOINT_SECONDS:
        # A loadable checkpoint, so a long run that is stopped still leaves a model.
        _save(run.model, run.processor, Path(run.config.out))
        last_save = time.monotonic()
    return replace(state, history=(*state.history, entry), last_recall=recall, last_save=last_save)


def val_recall(model: CLIPModel, val_set: list[Example], view: ImageView, processor: CLIPProcessor) -> float:
    """Text->image recall@1 on held-out groups: does "a {color} {kind}" rank an image of both first?"""
    import torch

    if len(val_set) < 2:
        return float("nan")
    was_training = model.training
    model.eval()
    pair_pins = ("category", "color")
    caps = [next((c.text for c in e.captions if c.pins == pair_pins), e.captions[0].text) for e in val_set]
    with torch.no_grad():
        img = torch.cat(
            [
                features(model.get_image_features(pixel_values=image_batch(val_set[i : i + VAL_BATCH], view)))
                for i in range(0, len(val_set), VAL_BATCH)
            ]
        )
        txt = torch.cat(
            [
                features(model.get_text_features(**tokenize(caps[i : i + VAL_BATCH], processor.tokenizer, view.device)))
                for i in range(0, len(caps), VAL_BATCH)
            ]
        )
    sims = torch.nn.functional.normalize(txt, dim=-1) @ torch.nn.functional.normalize(img, dim=-1).T
    pair = [(e.attributes.get("category"), e.attributes.get("color")) for e in val_set]
    best = sims.argmax(dim=1).tolist()
    model.train(was_training)
    return round(sum(pair[b] == pair[i] for i, b in enumerate(best)) / len(val_set), 4)


def _open_bar(budget: Budget) -> tqdm:
    from tqdm import tqdm

    if budget.seconds:
        return tqdm(total=int(budget.seconds), unit="s", desc="train")
    return tqdm(total=budget.total_steps, unit="step", desc="train")


def _save(model: CLIPModel, processor: CLIPProcessor, out: Path) -> None:
    model.save_pretrained(str(out))  # safetensors from any device
    processor.save_pretrained(str(out))


def _freeze(module: torch.nn.Module, frozen: bool) -> bool:
    for param in module.parameters():
        param.requires_grad_(not frozen)
    return frozen
