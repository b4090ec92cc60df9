"""Secrets never reach a client or a log: URL credentials and the keys we are given are masked."""

from __future__ import annotations

from shelfsight.search.redaction import redact

from shelfsight.cli import main


def test_url_credentials_and_keys_are_masked(monkeypatch):
    monkeypatch.setenv("SHELFSIGHT_API_KEY", "k-123456")
    text = "cannot reach https://user:pa55@db.example:6333/x with key k-123456 or http://tok@h/"
    assert redact(text) == "cannot reach https://***@db.example:6333/x with key *** or http://***@h/"
    assert redact("plain https://db.example/x") == "plain https://db.example/x"


def test_the_cli_masks_credentials_in_its_error_line(monkeypatch, capsys):
    monkeypatch.setenv("QDRANT_URL", "http://shopper:hunter2@127.0.0.1:9")
    assert main(["stats"]) != 0
    err = capsys.readouterr().err
    assert "127.0.0.1:9" in err and "hunter2" not in err and "shopper" not in err, err
