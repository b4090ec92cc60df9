"""Contrastive training: caption targets and the multi-positive loss worked by hand, and a short real run."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from shelfsight.train.contrastive import (
    PHOTO_PHRASES,
    Caption,
    TrainConfig,
    add_filler,
    captions_for,
    filler_words,
    multi_positive_loss,
    positive_mask,
    rephrase,
    train,
)


def test_positive_mask_follows_what_each_caption_names():
    attributes = [
        {"category": "shoe", "color": "red"},
        {"category": "bag", "color": "red"},
        {"category": "shoe", "color": "blue"},
    ]
    captions = [Caption("red", ("color",)), Caption("a photo of a bag", ("category",)), Caption("x", ())]
    assert positive_mask(captions, attributes).tolist() == [
        [True, True, False],  # "red" fits both red products
        [False, True, False],
        [False, False, True],  # a caption naming nothing visible matches only its own image
    ]


def test_captions_pin_the_fields_they_name():
    caps = captions_for("Oakline red leather tote", "A tote.", {"category": "bag", "color": "red", "pattern": "plain"})
    pins = {c.text: c.pins for c in caps}
    assert pins["Oakline red leather tote"] == ("category", "color", "pattern")
    assert pins["a red bag"] == ("category", "color")
    assert pins["red"] == ("color",)
    assert pins["bag"] == ("category",)
    assert "tote" not in pins  # no type field: only the category is phrased


def test_type_field_is_phrased_like_the_category():
    fields = {"category": "bag", "type": "tote", "color": "red", "pattern": "plain"}
    pins = {c.text: c.pins for c in captions_for("Oakline red leather tote", "A tote.", fields)}
    assert pins["a red tote"] == pins["a red bag"] == ("category", "color")
    assert pins["tote"] == pins["bag"] == ("category",)
    same = {"category": "bag", "type": "bag", "color": "red"}
    texts = [c.text for c in captions_for("Oakline red bag", "", same)]
    assert texts.count("a red bag") == 1  # a type equal to the category adds nothing


def test_filler_words_leave_out_what_names_a_product():
    vocab = ["any</w>", "red</w>", "shoe</w>", "y</w>", "ing", "Ù</w>", ",</w>"]
    assert filler_words(vocab, {"red", "shoe"}) == ["any", "y"]
    text = add_filler("a red shoe", ["any"], random.Random(0))
    assert text.replace("any", "").split() == ["a", "red", "shoe"] and 1 <= text.split().count("any") <= 2


def test_multi_positive_loss_worked_by_hand():
    logits = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    mask = torch.tensor([[True, True], [False, True]])
    # texts: row 0 has both images positive -> 0; row 1: log(1 + e^2) - 2
    # images: column 0 positive only for text 0: log(e + 1) - 1; column 1 positive for both -> 0
    t2i = (0 + math.log(1 + math.e**2) - 2) / 2
    i2t = (math.log(math.e + 1) - 1 + 0) / 2
    assert multi_positive_loss(logits, mask).item() == pytest.approx((t2i + i2t) / 2, abs=1e-6)


def test_identity_mask_is_clips_loss():
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(0))
    target = torch.arange(5)
    clip = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert multi_positive_loss(logits, torch.eye(5, dtype=torch.bool)).item() == pytest.approx(clip.item(), abs=1e-6)


def test_short_training_run_saves_a_loadable_model(catalog_dir, tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "tuned"
    metrics = train(
        TrainConfig(
            catalog=str(catalog_dir / "catalog.csv"),
            out=str(out),
            init=str(tiny_model_dir),
            epochs=2,
            minutes=None,
            batch_size=16,
        ),
        progress=False,
    )
    assert metrics["steps"] == 2 * (metrics["train_products"] // 16 + (metrics["train_products"] % 16 > 1))
    assert metrics["train_products"] + metrics["val_products"] == 48
    saved = json.loads((out / "training.json").read_text())
    assert saved["steps"] == metrics["steps"] and len(saved["history"]) == 2
    before = SentenceTransformer(str(tiny_model_dir), device="cpu").encode(["a red shoe"])
    after = SentenceTransformer(str(out), device="cpu").encode(["a red shoe"])
    assert after.shape == before.shape and not np.allclose(after, before)


def test_scratch_init_gives_positions_and_local_attention(tiny_model_dir):
    from shelfsight.train.model_init import POSITION_SCALE, sincos_positions
    from transformers import CLIPModel

    pe = sincos_positions(2, 8)
    # rows: class token, then patches (0,0), (1,0), (0,1), (1,1); columns: sin x, cos x, sin y, cos y
    assert pe.shape == (5, 8) and pe[0].abs().sum() == 0
    assert pe[1].tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert pe[2, 0].item() == pytest.approx(math.sin(1.0))

    vision = CLIPModel.from_pretrained(str(tiny_model_dir)).vision_model
    grid = int(vision.embeddings.num_patches**0.5)
    assert torch.allclose(
        vision.embeddings.position_embedding.weight, sincos_positions(grid, vision.config.hidden_size) * POSITION_SCALE
    )
    att = vision.encoder.layers[0].self_attn
    k = att.head_dim
    qk = att.q_proj.weight[:k].T @ att.k_proj.weight[:k]  # one head's W_q^T W_k, d x d
    assert qk.diagonal().mean() > 3 * qk.fill_diagonal_(0).abs().mean()  # identity-like: attends to its own kind
    assert (att.out_proj.weight @ att.v_proj.weight).diagonal().mean().item() == pytest.approx(-0.4, abs=0.05)


def test_rephrase_keeps_what_follows_the_phrase():
    rng = random.Random(0)
    seen = {rephrase("a photo of a red bag", rng) for _ in range(50)}
    assert seen == {f"{p} red bag" for p in PHOTO_PHRASES}
    assert (
        rephrase("red bag", rng) == "red bag" and rephrase("Oakline photo of a tote", rng) == "Oakline photo of a tote"
    )
