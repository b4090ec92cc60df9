"""Model loading: what a user sees when the model cannot be had."""

from __future__ import annotations

import socket

import pytest
from shelfsight.search.embedder import Embedder, hub_reachable
from shelfsight.search.errors import ModelUnavailableError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket closes


def test_hub_reachable_follows_hf_endpoint(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_reachable(timeout=2)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert not hub_reachable(timeout=2)


def test_unreachable_hub_is_named_and_only_the_cache_is_tried(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(ModelUnavailableError) as err:
        Embedder("clip-ViT-B-32").encode_texts(["red shoe"])
    message = str(err.value)
    assert "'clip-ViT-B-32'" in message and "unreachable" in message
    assert "--model DIR" in message and "shelfsight demo" in message


def test_local_directory_without_config_names_the_fix(tmp_path):
    with pytest.raises(ModelUnavailableError, match="no config.json.*shelfsight model init"):
        Embedder(str(tmp_path)).encode_texts(["red shoe"])
