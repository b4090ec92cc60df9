"""The towers on oneDNN's packed products (search/packed_towers.py) against the plain towers."""

from __future__ import annotations

import numpy as np
import pytest
from shelfsight.search.embedder import Embedder

torch = pytest.importorskip("torch")

from shelfsight.search import packed_towers  # noqa: E402
from shelfsight.search.packed_towers import PackedLinear, pack_tower, packed_if_faithful  # noqa: E402
from shelfsight.search.pixels import normalize_pixels  # noqa: E402
from shelfsight.search.precision import cpu_runs_bf16, inference  # noqa: E402
from shelfsight.search.towers import ClipTowers, clip_model  # noqa: E402


def _inputs(clip):
    generator = torch.Generator().manual_seed(3)
    size = clip.config.vision_config.image_size
    pixels = torch.randn(3, 3, size, size, generator=generator)
    ids = torch.randint(2, 60, (3, 9), generator=generator).numpy()
    texts = [ids[0], ids[1, :5], ids[2, :7]]  # three lengths, each ending in the end-of-text token
    for text in texts:
        text[-1] = clip.text_model.eos_token_id
    return pixels, texts


def _vectors(towers, pixels, texts):
    with torch.inference_mode():
        return towers.vision(pixels), towers.text(towers.text.rows(texts))


@pytest.mark.parametrize(
    "activation",
    [None, "GELUActivation", "PytorchGELUTanh", torch.nn.Tanh],
    ids=["quick-gelu folded", "gelu fused", "gelu tanh fused", "tanh apart"],
)
def test_packed_towers_give_the_plain_towers_vectors(tiny_model_dir, activation):
    """fp32: every layer's products packed, q/k/v as one, the MLP's activation fused in (CLIP's
    quick-GELU folded into swish by scaling the weights) or left as a pass of its own."""
    import transformers.activations

    clip = clip_model(Embedder(str(tiny_model_dir), device="cpu", precision="fp32").model)
    if activation is not None:
        make = getattr(transformers.activations, activation) if isinstance(activation, str) else activation
        for layer in [*clip.vision_model.encoder.layers, *clip.text_model.encoder.layers]:
            layer.mlp.activation_fn = make()
    plain, packed = ClipTowers.of(clip_holder(clip)), ClipTowers.of(clip_holder(clip))
    pack_tower(packed.vision, torch.float32)
    pack_tower(packed.text, torch.float32)
    layer = packed.vision.layers[0]
    assert isinstance(layer.qkv, PackedLinear) and isinstance(layer.fc2, PackedLinear)
    assert (layer.fc1.activation != "none") == (activation is not torch.nn.Tanh)
    inputs = _inputs(clip)
    for want, got in zip(_vectors(plain, *inputs), _vectors(packed, *inputs), strict=True):
        assert torch.allclose(got, want, atol=1e-4)
    assert isinstance(plain.vision.layers[0].fc1, torch.nn.Linear)  # the model's own are untouched


def clip_holder(clip):
    """A module holding ``clip``, as a sentence-transformers model does."""
    return torch.nn.Sequential(clip)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_cpu_embedder_packs_each_tower_on_first_use_and_keeps_its_vectors(tiny_model_dir, precision):
    """Packed only once used (a process that embeds texts alone never packs the vision tower),
    and giving sentence-transformers' own vectors. bf16 packs only where the CPU runs bf16."""
    if precision == "bf16" and not cpu_runs_bf16():
        pytest.skip("oneDNN packs bf16 only on a CPU with AVX-512 or AVX-NE-CONVERT")
    embedder = Embedder(str(tiny_model_dir), device="cpu", precision=precision)
    pixels = np.random.default_rng(0).integers(0, 255, (4, *embedder.pixel_spec.crop, 3), dtype=np.uint8)  # type: ignore[union-attr]
    texts = ["red bag", "blue canvas sneaker", "", "striped " * 120]
    assert embedder.tower_kernels == {}
    got_texts = embedder.encode_texts(texts)
    assert list(embedder.tower_kernels) == ["text"] and embedder.tower_kernels["text"].startswith("oneDNN, packed")
    got_images = embedder.encode_pixels(pixels)
    assert embedder.tower_kernels["vision"].startswith("oneDNN, packed")
    assert isinstance(embedder.tower("vision").layers[0].fc1, PackedLinear)  # type: ignore[union-attr]
    least = 0.99999 if precision == "fp32" else 0.995
    reference = embedder._encode(texts)  # sentence-transformers' path: the model's own modules
    assert np.min(np.sum(got_texts * reference, axis=1)) >= least  # an empty text, and one cut at 77 tokens
    plain = ClipTowers.of(embedder.model).vision  # type: ignore[union-attr]
    with inference(precision, "cpu"):
        values = normalize_pixels(torch.as_tensor(pixels), embedder.pixel_spec, torch.float32)
        want_images = torch.nn.functional.normalize(plain(values).float(), dim=-1).numpy()
    assert np.min(np.sum(got_images * want_images, axis=1)) >= least


def test_a_tower_that_packs_wrong_or_not_at_all_runs_plain_with_the_reason(tiny_model_dir, monkeypatch):
    embedder = Embedder(str(tiny_model_dir), device="cpu", precision="fp32")
    model, plain = embedder.model, ClipTowers.of(embedder.model).vision
    monkeypatch.setattr(PackedLinear, "forward", lambda self, x: torch.zeros(*x.shape[:-1], self.bias.shape[0]) + 1)
    tower, kernels = packed_if_faithful(model, "vision", plain, "fp32")
    assert tower is plain and kernels.startswith("torch (packed tower kept only cosine")
    monkeypatch.setattr(packed_towers, "pack_tower", lambda *a: (_ for _ in ()).throw(RuntimeError("no kernel")))
    tower, kernels = packed_if_faithful(model, "vision", plain, "fp32")
    assert tower is plain and "packing failed" in kernels and "no kernel" in kernels
    monkeypatch.setattr(packed_towers, "unavailable", lambda: "this torch has no oneDNN")
    assert packed_if_faithful(model, "vision", plain, "fp32") == (plain, "torch (this torch has no oneDNN)")
