"""Build random-weight CLIP directories offline (Hugging Face architecture, sentence-transformers loadable).

No pretrained weights can be fetched here, so tests, benchmarks and the demo model start from a
directory this module writes: a ``CLIPModel`` with random weights, a CLIP-format byte-level BPE
tokenizer trained on a built-in corpus, and a PIL image processor.

Example::

    from shelfsight.train.model_init import init_model
    init_model("tiny", "models/tiny", seed=0)
    SentenceTransformer("models/tiny").encode(["a red shoe"])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# CLIP's word splitting pattern (letters runs, single digits, punctuation runs, contractions).
CLIP_WORD_PATTERN = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@dataclass(frozen=True)
class Preset:
    """The shape of a CLIP model: a text and a vision transformer joined by projections."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch: int
    projection: int
    vocab_size: int
    max_positions: int = 77


PRESETS: dict[str, Preset] = {
    # ~1M parameters, a few MB: unit and end-to-end tests.
    "tiny": Preset(128, 256, 3, 4, 128, 256, 3, 4, 64, 8, 64, 1000),
    # Small enough to train from scratch on 2 CPU cores in minutes: the demo model. A vision width
    # of 192 rather than 256 takes more steps in the same time and scored better (tagging 0.96 vs 0.91).
    "small": Preset(256, 1024, 4, 4, 192, 768, 4, 4, 96, 12, 256, 2000),
    # The real ViT-B/32 shape (151M parameters): honest compute benchmarks.
    "vit-b-32": Preset(512, 2048, 12, 8, 768, 3072, 12, 12, 224, 32, 512, 49408),
}

# Words the tokenizer learns merges for; unseen words still encode byte by byte.
_CORPUS_WORDS = """
a an the of with and or for in on at to from by photo picture image product shot close up
shoe shoes sneaker boot bag handbag backpack hat cap mug cup lamp shirt tshirt dress sock watch
bottle chair table vase sofa jacket coat skirt scarf glove umbrella clock phone book plant
red orange yellow green blue purple pink brown black white gray grey navy teal beige gold silver
striped dotted polka dots plain checked checkered zigzag floral solid pattern patterned stripes
leather cotton wool canvas ceramic metal wooden glass plastic denim linen silk
small large big tiny classic modern vintage sporty elegant casual cozy bright dark light soft
men women kids unisex everyday travel office kitchen home garden outdoor summer winter
brand price cheap expensive sale new best premium quality comfortable durable lightweight
looking something like this that similar not without but more less very
""".split()


def _tokenizer_corpus() -> list[str]:
    lines = [" ".join(_CORPUS_WORDS[i : i + 12]) for i in range(0, len(_CORPUS_WORDS), 12)]
    lines += [f"a photo of a {w}" for w in _CORPUS_WORDS]
    return lines * 3


def build_tokenizer(out: Path, vocab_size: int) -> None:
    """Train a CLIP-format byte-level BPE (vocab.json + merges.txt) and save it as CLIPTokenizerFast."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizerFast

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=EOS))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_WORD_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(), trainer)

    model_state = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(model_state["vocab"])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model_state["merges"]]
    # Every byte symbol and its end-of-word form must exist, or unseen words fall back to <unk>.
    for symbol in sorted(alphabet):
        for form in (symbol, symbol + "</w>"):
            vocab.setdefault(form, len(vocab))

    raw = out / "_bpe"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (raw / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    clip_tok = CLIPTokenizerFast.from_pretrained(str(raw), model_max_length=77)
    clip_tok.save_pretrained(str(out))
    for f in raw.iterdir():
        f.unlink()
    raw.rmdir()


# How strongly position shapes attention at the start. Measured: 3 learns shape fastest but
# starves colour (colour accuracy 0.34); 1 keeps both.
POSITION_SCALE = 1.0


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """2-D sine-cosine position embeddings for a grid x grid of patches, with a zero row for the class token."""
    import torch

    if dim % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, got {dim}")
    y, x = torch.meshgrid(
        torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij"
    )
    freq = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    px, py = x.flatten()[:, None] * freq, y.flatten()[:, None] * freq
    grid_pe = torch.cat([px.sin(), px.cos(), py.sin(), py.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim), grid_pe])


def init_vision_for_scratch_training(vision_model, seed: int = 0) -> None:
    """Give a from-scratch ViT a convolution-like start, so it learns shapes in minutes, not hours.

    From random init on a few thousand images a ViT learns colour at once and shape very slowly
    (a supervised probe: kind accuracy 0.16 after 240 steps). Two initializations, architecture
    unchanged, fix most of that:
    - 2-D sin-cos position embeddings (as in MAE and MoCo v3) instead of near-zero random ones;
    - mimetic attention (Trockman & Kolter, 2023): per head W_q W_k^T ~ 0.7 Z + 0.7 I, so tokens
      attend to similar positions, i.e. locally; and W_o W_v ~ 0.4 Z - 0.4 I, with Z ~ N(0, 1/d).
    Four-minute demo trainings, zero-shot kind tagging on unseen products: 0.70 with sin-cos
    positions alone, 0.85 with both.
    """
    import torch

    emb = vision_model.embeddings
    grid = int(round(emb.num_patches**0.5))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb.position_embedding.weight.copy_(sincos_positions(grid, emb.embed_dim) * POSITION_SCALE)
        for layer in vision_model.encoder.layers:
            att = layer.self_attn
            d, k = att.embed_dim, att.head_dim
            for head in range(att.num_heads):
                u, s, vh = torch.linalg.svd(_noisy(d, 0.7, 0.7, g))
                rows = slice(head * k, (head + 1) * k)
                att.q_proj.weight[rows] = (u[:, :k] * s[:k].sqrt()).T
                att.k_proj.weight[rows] = (vh[:k].T * s[:k].sqrt()).T
            u, s, vh = torch.linalg.svd(_noisy(d, 0.4, -0.4, g))
            att.out_proj.weight.copy_(u * s.sqrt())
            att.v_proj.weight.copy_(s.sqrt()[:, None] * vh)
            for lin in (att.q_proj, att.k_proj, att.v_proj, att.out_proj):
                lin.bias.zero_()


def _noisy(d: int, noise: float, identity: float, generator) -> torch.Tensor:
    import torch

    return noise * torch.randn(d, d, generator=generator) / d**0.5 + identity * torch.eye(d)


def init_model(preset: str, out: str | Path, seed: int = 0) -> Path:
    """Write a random-weight CLIP directory of the given preset to ``out`` and return its path."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizerFast

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out, p.vocab_size)
    tokenizer = CLIPTokenizerFast.from_pretrained(str(out))
    bos, eos = tokenizer.convert_tokens_to_ids([BOS, EOS])

    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=p.hidden,
            intermediate_size=p.intermediate,
            num_hidden_layers=p.layers,
            num_attention_heads=p.heads,
            max_position_embeddings=p.max_positions,
            # The text tower pools at the end-of-text token: it must be our tokenizer's id.
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        vision_config=dict(
            hidden_size=p.vision_hidden,
            intermediate_size=p.vision_intermediate,
            num_hidden_layers=p.vision_layers,
            num_attention_heads=p.vision_heads,
            image_size=p.image_size,
            patch_size=p.patch,
        ),
        projection_dim=p.projection,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    init_vision_for_scratch_training(model.vision_model, seed)
    model.save_pretrained(str(out))
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": p.image_size},
        crop_size={"height": p.image_size, "width": p.image_size},
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(out))
    (out / "shelfsight_model.json").write_text(json.dumps({"preset": preset, "seed": seed, "trained": False}, indent=2))
    return out
