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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
from shelfsight.search.errors import BadInputError, ModelUnavailableError
from shelfsight.search.pixels import PixelSpec, normalize_pixels
from shelfsight.search.precision import MIN_COSINE, inference, resolve_precision, torch_dtype
from shelfsight.search.settings import DEFAULT_MODEL, MODELS_ROOT_ENV
from shelfsight.search.settings import models_root as env_models_root

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from sentence_transformers import SentenceTransformer
    from shelfsight.search.towers import ClipTowers

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


def _looks_local(model: str) -> bool:
    return Path(model).expanduser().exists() or model.startswith((".", "/", "~"))


def resolve_model(model: str, root: Path | None) -> str:
    """Where ``model`` loads from: a directory as given, else under the models ``root``, else a hub name.

    A directory recorded on another machine (``/home/me/models/demo``) is also looked for as
    ``root/demo``, so a container that mounts the models root finds what the host ingested with.
    Raises ModelUnavailableError, naming every path tried, when a local model is in none of them.
    """
    given = Path(model).expanduser()
    if given.is_dir():
        return str(given)
    tried = [given]
    if root is not None:
        under_root = root / (given.name if given.is_absolute() else given)
        if under_root.is_dir():
            return str(under_root)
        tried.append(under_root)
    if not _looks_local(model):
        return model  # a hub name
    looked = " nor ".join(str(p) for p in tried)
    where_root = f"{MODELS_ROOT_ENV}={root}" if root is not None else f"{MODELS_ROOT_ENV} is not set"
    raise ModelUnavailableError(
        f"model {model!r} not found: neither {looked} is a directory with a config.json; {where_root}. Put the model "
        f"directory under the models root (compose mounts MODELS_DIR there), set {MODELS_ROOT_ENV} to "
        "the folder that holds it, or pass --model DIR."
    )


def _root_hint(model: str, root: Path | None) -> str:
    """For a bare name that failed on the hub: where a local directory of that name was looked for."""
    if _looks_local(model):
        return ""
    if root is None:
        return f" (nor is it a local directory: {MODELS_ROOT_ENV}, the folder of model directories, is not set)"
    return f" (nor is {root / model} a directory)"


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
    """A CLIP model that embeds images and texts into one space. Loads lazily, thread-safe.

    ``precision`` ('auto', 'fp32', 'fp16', 'bf16'; see search/precision.py) is the number format
    both towers run in; 'auto' is settled when the model loads and kept only if it matches fp32."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str | None = None,
        batch_size: int = 32,
        models_root: str | os.PathLike[str] | None = None,
        precision: str = "auto",
    ):
        self.model_name = str(model)
        self.models_root = Path(models_root) if models_root is not None else env_models_root()
        self.device = device
        self.batch_size = batch_size
        self.requested_precision = precision
        resolve_precision(precision, "cuda")  # an unknown name fails here, before any loading
        self._precision = "fp32"
        self._pixel_spec: PixelSpec | None = None
        self._model: SentenceTransformer | None = None
        self._towers: ClipTowers | None = None
        # What each tower's products run on, once it has run on a CPU (search/packed_towers.py).
        self.tower_kernels: dict[str, str] = {}
        self._pack_lock = threading.Lock()
        self._lock = threading.Lock()
        self._model_id: str | None = None

    @property
    def model_id(self) -> str:
        """What produced the vectors: recorded in the collection and in each content hash."""
        if self._model_id is None:
            try:
                path = self.model_path
            except ModelUnavailableError:
                if self.models_root is not None:
                    raise  # with a models root, a missing model is named with every path tried
                path = self.model_name  # without one the name is the id, as before; loading names the paths
            self._model_id = model_fingerprint(path)
        return self._model_id

    @property
    def model_path(self) -> str:
        """The directory or hub name the model loads from (``resolve_model`` over the models root)."""
        return resolve_model(self.model_name, self.models_root)

    @property
    def model_source(self) -> str:
        """What a collection records so the model can be found again: a hub name, a directory
        relative to the models root when it lies under it, else an absolute directory."""
        path = Path(self.model_path)
        if not path.is_dir():
            return self.model_path
        path = path.resolve()
        if self.models_root is not None and path.is_relative_to(self.models_root.resolve()):
            return path.relative_to(self.models_root.resolve()).as_posix()
        return str(path)

    @property
    def model(self) -> SentenceTransformer:
        from shelfsight.search.towers import ClipTowers  # imports torch: only once a model is wanted

        with self._lock:
            if self._model is None:
                self._precision, model = self._settle_precision(self._load())
                self._pixel_spec = _pixel_spec_of(model)
                self._towers = ClipTowers.of(model)
                self._model = model
            return self._model

    def tower(self, kind: str) -> Any | None:
        """The ``kind`` tower ('vision' or 'text') that ``queue_pixels``, ``queue_token_ids`` and
        ``encode_texts`` run (search/towers.py), or None for a model these towers do not support.
        On a CPU it is packed on its first use (search/packed_towers.py; ``tower_kernels`` says
        what each tower runs on), so a process that embeds only texts never packs the images'."""
        model, towers = self.model, self._towers
        if towers is None or str(model.device) != "cpu" or kind in self.tower_kernels:
            return getattr(towers, kind) if towers is not None else None
        from shelfsight.search.packed_towers import packed_if_faithful

        with self._pack_lock:
            if kind not in self.tower_kernels:
                tower, described = packed_if_faithful(model, kind, getattr(towers, kind), self._precision)
                self._towers = replace(towers, vision=tower) if kind == "vision" else replace(towers, text=tower)
                self.tower_kernels[kind] = described
        return getattr(self._towers, kind)

    @property
    def precision(self) -> str:
        """The precision the towers run in ('fp32', 'fp16' or 'bf16'); loads the model."""
        _ = self.model
        return self._precision

    @property
    def torch_device(self) -> str:
        """Where the model runs: 'cpu', 'cuda', 'cuda:1'..."""
        return str(self.model.device)

    def _settle_precision(self, model: SentenceTransformer) -> tuple[str, SentenceTransformer]:
        """The requested precision for this device and the model with its weights stored in it.

        Half weights spare autocast from casting every weight on every pass: the ViT-B/32-shape
        vision tower ran 71-72 images/s with bf16 weights against 64-68 with fp32 weights under
        bf16 autocast (2 AVX-512 BF16 cores, batches of 32, best of 4 in each of two runs).
        Autocast stays around each pass for the fp32 inputs and the norms. What 'auto' picks below
        fp32 must match fp32 on probe images and texts, or the model is loaded again in fp32 (with a
        warning)."""
        device = str(model.device)
        chosen = resolve_precision(self.requested_precision, device)
        if chosen == "fp32":
            return chosen, model
        reference = _probe_vectors(model, "fp32", device) if self.requested_precision == "auto" else None
        model.to(torch_dtype(chosen))
        if reference is None:
            return chosen, model
        cosine = least_cosine(reference, _probe_vectors(model, chosen, device))
        if cosine < MIN_COSINE:
            log.warning("%s on %s matches fp32 only to cosine %.4f; running fp32", chosen, device, cosine)
            return "fp32", self._load()
        log.info("running the model in %s on %s (probe cosine to fp32 %.4f)", chosen, device, cosine)
        return chosen, model

    @property
    def pixel_spec(self) -> PixelSpec | None:
        """The model's preprocessing as plain numbers, for ``encode_pixels``; None when the model's
        processor does something ``PixelSpec`` cannot express (then use ``encode_images``). Read
        once, when the model loads."""
        _ = self.model
        return self._pixel_spec

    def _load(self) -> SentenceTransformer:
        name = self.model_path
        path = Path(name)
        looks_local = _looks_local(name)
        if looks_local and not (path / "config.json").is_file():
            raise ModelUnavailableError(
                f"model directory {name!r} has no config.json. "
                "Point --model at a CLIP directory written by `shelfsight model init` or "
                "`shelfsight train`, or run `shelfsight demo` to build the demo model."
            )
        # Unreachable hub: look in the local cache only, so the answer comes in seconds rather
        # than after the hub client's retries (about 40 s measured here).
        cache_only = not looks_local and (_hub_offline_by_env() or not hub_reachable())
        try:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(name, device=pick_device(self.device), local_files_only=cache_only)
        except Exception as exc:  # the hub client raises many kinds; all mean the same to a user
            if looks_local:
                where = "from its directory"
            elif cache_only:
                where = "(the Hugging Face hub is unreachable and it is not in the local cache)"
            else:
                where = "from the Hugging Face hub"
            raise ModelUnavailableError(
                f"cannot load model {name!r} {where}{_root_hint(name, self.models_root)}: {type(exc).__name__}: "
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
        """Embed texts (truncated to the model's token limit): (n, d) float32, unit rows. A CLIP
        text tower gets them as ``encode_token_ids`` does (the towers, sorted by length): 256 made-up
        queries (calibration's) took 0.64-0.68 s this way against 1.70-1.87 s through sentence-transformers'
        ``encode`` in fp32, 0.42 s against 0.66 s in bf16 (ViT-B/32 shape, 2 AVX-512 BF16 cores)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        if self.causal_text:
            tokens = self.model.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]
            return self.encode_token_ids([np.asarray(t, dtype=np.int64) for t in tokens])
        return self._encode(texts)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB PIL images: (n, d) float32, unit rows."""
        images = list(images)
        if not images:
            return np.zeros((0, 0), dtype=np.float32)
        return self._encode(images)

    def encode_pixels(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        """Embed prepared pixels: (n, h, w, 3) uint8 from ``search.pixels.prepare_pixels``, on any
        device (pinned CPU memory copies without blocking). Normalization runs on the model's device,
        the vision tower in ``precision``. Returns (n, d) float32 unit rows."""
        return self.queue_pixels(pixels)()

    def queue_pixels(self, pixels: np.ndarray | torch.Tensor) -> Callable[[], np.ndarray]:
        """``encode_pixels`` in two steps, as ``queue_token_ids``: the vision tower's passes are
        queued on the model's device now, and the function returned waits for them. A CLIP model's
        vision tower runs as ``towers.VisionTower``."""
        import torch

        spec = self.pixel_spec
        if spec is None:
            raise BadInputError(f"model {self.model_name!r} needs its own image processor; use encode_images")
        inner: Any = self.model[0].model
        vision = self.tower("vision")
        if vision is None:
            vision = lambda v: _features(inner.get_image_features(pixel_values=v))  # noqa: E731
        batch = torch.as_tensor(pixels)
        if len(batch) == 0:
            return lambda: np.zeros((0, 0), dtype=np.float32)
        batch = batch.to(self.torch_device, non_blocking=True)
        parts = []
        with inference(self.precision, self.torch_device):
            for start in range(0, len(batch), self.batch_size):
                values = normalize_pixels(batch[start : start + self.batch_size], spec, torch.float32)
                parts.append(vision(values).float())
        return lambda: self._awaited(parts)

    @property
    def tokenizer_json(self) -> str | None:
        """The text tokenizer as JSON (Hugging Face ``tokenizers``), so worker processes can tokenize
        without loading the model; None when the model's tokenizer is not a fast one."""
        backend = getattr(self.model.tokenizer, "backend_tokenizer", None)
        return backend.to_str() if backend is not None else None

    def encode_token_ids(self, token_ids: Sequence[np.ndarray]) -> np.ndarray:
        """Embed texts tokenized elsewhere (``tokenizer_json``, with start and end markers, at most
        ``max_tokens``): sorted by length and run in batches of ``batch_size``, the text tower in
        ``precision``. (n, d) float32 unit rows, in the given order."""
        return self.queue_token_ids(token_ids)()

    def queue_token_ids(self, token_ids: Sequence[np.ndarray]) -> Callable[[], np.ndarray]:
        """``encode_token_ids`` in two steps: the text tower's passes are queued on the model's
        device now, and the function returned waits for them and gives the vectors. On a GPU the
        caller can queue more work (the images, the next batch's reading) before waiting; on a CPU
        the passes run now. A CLIP text tower runs as ``towers.TextTower``, on the texts' tokens
        without padding, and nothing here waits for the device: the rows cross from pinned memory,
        and the tower needs no padding mask. Another tower gets padded ids and its mask, whose copy
        waits."""
        if not token_ids:
            return lambda: np.zeros((0, 0), dtype=np.float32)
        text_tower = self.tower("text") if self.causal_text else None
        batches = LengthBatches(token_ids, self.batch_size, self.model.tokenizer.pad_token_id or 0)
        with inference(self.precision, self.torch_device):
            if text_tower is not None:
                parts = [text_tower(text_tower.rows(texts).to(self.torch_device)).float() for texts in batches.groups()]
            else:
                parts = [self._text_features(ids, mask) for ids, mask in batches]
        return lambda: batches.in_given_order(self._awaited(parts))

    def _text_features(self, ids: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        """One padded pass through transformers' own text tower (a model ``towers`` does not run)."""
        import torch

        inner: Any = self.model[0].model
        ids_t, mask_t = (torch.from_numpy(a).to(self.torch_device) for a in (ids, mask))
        return _features(inner.get_text_features(input_ids=ids_t, attention_mask=mask_t)).float()

    @property
    def causal_text(self) -> bool:
        """Whether texts run through ``towers.TextTower``: the model is a CLIP model the towers run,
        whose text attention is causal, so a text's vector, read at its end-of-text token, is the
        same without the padding and mask transformers' own tower needs."""
        _ = self.model  # loads the model, and with it ``_towers``
        return self._towers is not None

    def _awaited(self, parts: list[torch.Tensor]) -> np.ndarray:
        """The queued passes' outputs on the host as unit rows (this waits for the device)."""
        import torch

        with torch.inference_mode():
            rows = torch.nn.functional.normalize(torch.cat(parts), dim=-1).cpu().numpy()
        return self._checked(rows)

    def _encode(self, items: list[Any]) -> np.ndarray:
        model = self.model
        # Texts beyond the position table would crash the text tower; truncate like CLIP does.
        if model.max_seq_length is None or model.max_seq_length > CLIP_MAX_TOKENS:
            model.max_seq_length = CLIP_MAX_TOKENS
        with inference(self.precision, self.torch_device):
            vectors = model.encode(
                items,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            )
        return self._checked(normalize_rows(vectors))

    @staticmethod
    def _checked(vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if not np.isfinite(vectors).all():
            raise BadInputError("the model produced non-finite vectors; check the model weights")
        return vectors

    def logit_scale(self) -> float:
        """CLIP's learned softmax temperature (exp of the stored log scale), for zero-shot tags."""
        inner = getattr(self.model[0], "model", None)
        scale = getattr(inner, "logit_scale", None)
        return float(scale.exp().item()) if scale is not None else 100.0


def _pixel_spec_of(model: SentenceTransformer) -> PixelSpec | None:
    processor = getattr(model[0], "processor", None)
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None or not hasattr(model[0].model, "get_image_features"):
        return None
    return PixelSpec.from_processor(image_processor)


class LengthBatches:
    """Token id rows in batches of similar length (``groups``), or each batch padded to its longest
    with ``pad``: (ids, attention mask), both (n, longest) int64. ``in_given_order`` puts the
    batches' output rows back in the order the rows were given."""

    def __init__(self, token_ids: Sequence[np.ndarray], batch_size: int, pad: int = 0):
        self.token_ids, self.batch_size, self.pad = token_ids, batch_size, pad
        self.order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))

    def groups(self) -> Iterator[list[np.ndarray]]:
        for start in range(0, len(self.order), self.batch_size):
            yield [self.token_ids[i] for i in self.order[start : start + self.batch_size]]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for chunk in self.groups():
            width = max(len(t) for t in chunk)
            ids = np.full((len(chunk), width), self.pad, dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for row, tokens in enumerate(chunk):
                ids[row, : len(tokens)] = tokens
                mask[row, : len(tokens)] = 1
            yield ids, mask

    def in_given_order(self, rows: np.ndarray) -> np.ndarray:
        restored = np.empty_like(rows)
        restored[self.order] = rows
        return restored


def _features(out: Any) -> torch.Tensor:
    """transformers returns projected features as a tensor or as an output's ``pooler_output``."""
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _probe_vectors(model: SentenceTransformer, precision: str, device: str) -> list[np.ndarray]:
    """Unit vectors of a few synthetic images and texts, the model run in ``precision``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 160, dtype=np.float32)
    images = [
        Image.fromarray(np.clip(ramp[None, :, None] * w + rng.normal(0, 40, (160, 160, 3)), 0, 255).astype(np.uint8))
        for w in (0.3, 0.7, 1.0)
    ]
    texts = ["red leather bag", "a photo of a blue striped shirt", "wooden kitchen chair"]
    vectors = []
    for items in (images, texts):
        with inference(precision, device):
            vectors.append(normalize_rows(model.encode(items, convert_to_numpy=True)))
    return vectors


def least_cosine(reference: list[np.ndarray], lower: list[np.ndarray]) -> float:
    """The least cosine between paired unit rows of ``reference`` and ``lower``, over every pair."""
    return min(float((a * b).sum(axis=1).min()) for a, b in zip(reference, lower, strict=True))
