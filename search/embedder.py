"""CLIP through sentence-transformers: images and texts into one L2-normalized float32 space.

Example::

    emb = Embedder("models/demo")            # nothing is loaded yet
    vecs = emb.encode_texts(["red shoe"])    # loads the model on first use
    emb.encode_images([PIL.Image.open("shoe.jpg")])
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
from shelfsight.search.errors import BadInputError, ModelUnavailableError
from shelfsight.search.settings import DEFAULT_MODEL

if TYPE_CHECKING:
    from PIL import Image
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

# CLIP's text tower has 77 positions; models that say nothing sensible fall back to this.
CLIP_MAX_TOKENS = 77
# Fingerprint reads at most this much of a weights file at each end (fast even for 600 MB files).
_FINGERPRINT_BYTES = 1 << 20


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalize each row; zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def model_fingerprint(model: str) -> str:
    """A stable id for a model: its name, or for a local directory its name plus a weights digest.

    Retraining a local model changes the id, so a collection never mixes two embedding spaces.
    """
    path = Path(model)
    if not path.is_dir():
        return model
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        f = path / name
        if not f.is_file():
            continue
        size = f.stat().st_size
        digest.update(f"{name}:{size}".encode())
        with f.open("rb") as fh:
            digest.update(fh.read(_FINGERPRINT_BYTES))
            if size > 2 * _FINGERPRINT_BYTES:
                fh.seek(-_FINGERPRINT_BYTES, 2)
                digest.update(fh.read())
    return f"{path.resolve().name}@{digest.hexdigest()[:12]}"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT`` if set) accepts a connection within ``timeout`` s."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_offline_by_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def pick_device(device: str | None = None) -> str:
    """``device`` if given ('auto' counts as not given), else CUDA when present, else CPU."""
    if device and device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Embedder:
    """A CLIP model that embeds images and texts into one space. Loads lazily, thread-safe."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str | None = None, batch_size: int = 32):
        self.model_name = str(model)
        self.device = device
        self.batch_size = batch_size
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()
        self._model_id: str | None = None

    @property
    def model_id(self) -> str:
        """What produced the vectors: recorded in the collection and in each content hash."""
        if self._model_id is None:
            self._model_id = model_fingerprint(self.model_name)
        return self._model_id

    @property
    def model_source(self) -> str:
        """Where the model loads from: an absolute directory, or a hub name."""
        path = Path(self.model_name).expanduser()
        return str(path.resolve()) if path.is_dir() else self.model_name

    @property
    def model(self) -> SentenceTransformer:
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self) -> SentenceTransformer:
        path = Path(self.model_name)
        looks_local = path.exists() or self.model_name.startswith((".", "/", "~"))
        if looks_local and not (path / "config.json").is_file():
            raise ModelUnavailableError(
                f"model directory {self.model_name!r} has no config.json. "
                "Point --model at a CLIP directory written by `shelfsight model init` or "
                "`shelfsight train`, or run `shelfsight demo` to build the demo model."
            )
        # Unreachable hub: look in the local cache only, so the answer comes in seconds rather
        # than after the hub client's retries (about 40 s measured here).
        cache_only = not looks_local and (_hub_offline_by_env() or not hub_reachable())
        try:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(self.model_name, device=pick_device(self.device), local_files_only=cache_only)
        except Exception as exc:  # the hub client raises many kinds; all mean the same to a user
            if looks_local:
                where = "from its directory"
            elif cache_only:
                where = "(the Hugging Face hub is unreachable and it is not in the local cache)"
            else:
                where = "from the Hugging Face hub"
            raise ModelUnavailableError(
                f"cannot load model {self.model_name!r} {where}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}. If this machine is offline, pass "
                "--model DIR with a local CLIP directory (`shelfsight model init` or "
                "`shelfsight train` make one), or run `shelfsight demo`, which trains and uses "
                "an offline demo model."
            ) from exc
        model.eval()
        return model

    @property
    def dimension(self) -> int:
        dim = self.model.get_embedding_dimension()
        if dim is None:
            dim = int(self.encode_texts(["x"]).shape[1])
        return int(dim)

    @property
    def max_tokens(self) -> int:
        limit = self.model.max_seq_length or CLIP_MAX_TOKENS
        return int(min(limit, CLIP_MAX_TOKENS))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text with start and end markers, before truncation."""
        tokenizer = self.model.tokenizer
        return [len(ids) for ids in tokenizer(list(texts), truncation=False)["input_ids"]]

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (truncated to the model's token limit): (n, d) float32, unit rows."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return self._encode(texts)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB PIL images: (n, d) float32, unit rows."""
        images = list(images)
        if not images:
            return np.zeros((0, 0), dtype=np.float32)
        return self._encode(images)

    def _encode(self, items: list[Any]) -> np.ndarray:
        import torch

        model = self.model
        # Texts beyond the position table would crash the text tower; truncate like CLIP does.
        if model.max_seq_length is None or model.max_seq_length > CLIP_MAX_TOKENS:
            model.max_seq_length = CLIP_MAX_TOKENS
        with torch.inference_mode():
            vectors = model.encode(
                items,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            )
        vectors = normalize_rows(vectors)
        if not np.isfinite(vectors).all():
            raise BadInputError("the model produced non-finite vectors; check the model weights")
        return vectors

    def logit_scale(self) -> float:
        """CLIP's learned softmax temperature (exp of the stored log scale), for zero-shot tags."""
        inner = getattr(self.model[0], "model", None)
        scale = getattr(inner, "logit_scale", None)
        return float(scale.exp().item()) if scale is not None else 100.0
