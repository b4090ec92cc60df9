"""One Settings object: where the store lives, which collection and model, fusion defaults.

Environment variables carry locations and secrets only: ``QDRANT_URL`` and ``QDRANT_API_KEY``
(a Qdrant server), ``SHELFSIGHT_DB`` and ``SHELFSIGHT_COLLECTION`` (how ``shelfsight ui`` hands its
store to the Streamlit process it starts), ``SHELFSIGHT_MODELS`` (the folder holding local model
directories). Flags and arguments win over them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "clip-ViT-B-32"
DEFAULT_COLLECTION = "products"

# Late fusion when a caller names none. DBSF rescales each ranked list by its own score spread,
# so text->text and text->image cosines (different ranges in CLIP) add up fairly; on the demo
# catalog it beat RRF in each of five runs (kind+colour recall@10 0.965 vs 0.943, text+image
# 0.596 vs 0.510 in the last).
DEFAULT_FUSION = "dbsf"

# Largest query image an upload may carry, in the HTTP API and the storefront alike.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024

# The folder holding local model directories (in a container, the mounted models volume). A
# collection records a model under it by its path relative to the root, so a machine that mounts
# the root elsewhere still finds the model (search/embedder.py, ``resolve_model``).
MODELS_ROOT_ENV = "SHELFSIGHT_MODELS"


def models_root() -> Path | None:
    """The models root from ``SHELFSIGHT_MODELS``, or None when it is not set."""
    value = os.environ.get(MODELS_ROOT_ENV)
    return Path(value).expanduser() if value else None


_ENVIRONMENT = {
    "qdrant_url": "QDRANT_URL",
    "qdrant_api_key": "QDRANT_API_KEY",
    "db": "SHELFSIGHT_DB",
    "collection": "SHELFSIGHT_COLLECTION",
}


@dataclass(frozen=True)
class Settings:
    """Where and how to search.

    ``db`` is a directory for the embedded store; ``qdrant_url`` (or env ``QDRANT_URL``) selects a
    Qdrant server instead, with ``qdrant_api_key`` (or env ``QDRANT_API_KEY``).
    """

    db: str | None = None
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    collection: str = DEFAULT_COLLECTION
    model: str | None = None  # None: the model the collection was built with
    device: str | None = None
    fusion: str = DEFAULT_FUSION
    text_weight: float = 1.0
    image_weight: float = 1.0
    limit: int = 10

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings from the environment's locations and secrets; ``overrides`` that are not None win."""
        values: dict[str, Any] = {
            field: os.environ[name] for field, name in _ENVIRONMENT.items() if os.environ.get(name)
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def environment(self) -> dict[str, str]:
        """The environment variables that make ``from_env`` in a child process give these locations."""
        values = {"db": self.db, "qdrant_url": self.qdrant_url, "qdrant_api_key": self.qdrant_api_key}
        env = {_ENVIRONMENT[k]: v for k, v in values.items() if v}
        env[_ENVIRONMENT["collection"]] = self.collection
        return env
