"""Micro-batching of query texts (search/batching.py): concurrent callers share passes, each gets
its own rows, a lone caller runs at once, errors reach every caller of their pass, no thread stays.

The fake encoder records each pass; a gate holds the first pass open so that the other callers
queue behind it, which makes every batch's composition certain without timing anything.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from shelfsight.search.batching import TextBatcher, batch_query_texts, in_process_encoder, limit_torch_threads
from shelfsight.search.embedder import Embedder
from shelfsight.search.http import create_app
from shelfsight.search.text_int8 import MIN_COSINE


class FakeEncoder:
    """Rows that name their text ([len, first char code]); records each pass and its thread."""

    def __init__(self, hold_first: bool = False, fail_on: str | None = None):
        self.passes: list[list[str]] = []
        self.threads: list[int] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.hold_first = hold_first
        self.fail_on = fail_on

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.passes.append(list(texts))
        self.threads.append(threading.get_ident())
        if self.hold_first and len(self.passes) == 1:
            self.entered.set()
            self.gate.wait()
        if self.fail_on is not None and self.fail_on in texts:
            raise ValueError(f"cannot encode {self.fail_on!r}")
        return np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float32)


def _expected(texts: list[str]) -> list[list[float]]:
    return [[len(t), ord(t[0])] for t in texts]


def _wait_until(condition, what: str) -> None:
    """Synchronisation, not a timed assertion: the deadline only keeps a broken batcher from hanging."""
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.001)


def _call_in_threads(batcher: TextBatcher, encoder: FakeEncoder, work: dict[str, list[str]], queued: int):
    """The first caller's pass is held until the other ``queued`` callers wait behind it."""
    results: dict[str, object] = {}

    def call(name: str) -> None:
        try:
            results[name] = batcher.encode_texts(work[name])
        except Exception as exc:
            results[name] = exc

    names = list(work)
    first = threading.Thread(target=call, args=(names[0],))
    first.start()
    encoder.entered.wait(30)
    others = []
    for name in names[1:]:  # one at a time, so the queue (and the batches) keep this order
        before = batcher.queued
        thread = threading.Thread(target=call, args=(name,))
        others.append(thread)
        thread.start()
        _wait_until(lambda t=thread, b=before: batcher.queued > b or not t.is_alive(), f"{name} queued or refused")
    assert batcher.queued == queued
    encoder.gate.set()
    for t in [first, *others]:
        t.join(30)
    return results


def test_callers_that_arrive_during_a_pass_share_the_next_and_get_their_own_rows():
    encoder = FakeEncoder(hold_first=True)
    batcher = TextBatcher(encoder, max_texts=32)
    work = {"lead": ["a"], "one": ["bb"], "two": ["ccc", "dddd"], "three": ["eeeee"]}
    results = _call_in_threads(batcher, encoder, work, queued=3)
    assert encoder.passes == [["a"], ["bb", "ccc", "dddd", "eeeee"]]
    for name, texts in work.items():
        assert np.asarray(results[name]).tolist() == _expected(texts), name


def test_a_pass_takes_at_most_max_texts_and_an_oversized_caller_runs_alone():
    encoder = FakeEncoder(hold_first=True)
    batcher = TextBatcher(encoder, max_texts=3)
    work = {"lead": ["a"], "p": ["b1", "b2"], "q": ["c1"], "r": ["d1", "d2"], "big": ["e1", "e2", "e3", "e4"]}
    results = _call_in_threads(batcher, encoder, work, queued=4)
    assert encoder.passes == [["a"], ["b1", "b2", "c1"], ["d1", "d2"], ["e1", "e2", "e3", "e4"]]
    assert np.asarray(results["big"]).tolist() == _expected(work["big"])


class CountingCondition(threading.Condition):
    """Counts the times a caller blocks: a lone caller must never block, for no window at all."""

    waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return super().wait(timeout)


def test_a_lone_caller_runs_its_own_pass_at_once_in_its_own_thread():
    encoder = FakeEncoder()
    batcher = TextBatcher(encoder)
    batcher._changed = condition = CountingCondition()
    for texts in (["a", "bb"], ["c"], ["ddd", "e", "f"]):
        assert batcher.encode_texts(texts).tolist() == _expected(texts)
    # Each call was its own pass, run by the caller itself: no worker to hand over to, no window.
    assert encoder.passes == [["a", "bb"], ["c"], ["ddd", "e", "f"]]
    assert set(encoder.threads) == {threading.get_ident()}
    assert condition.waits == 0 and batcher.queued == 0


def test_an_error_reaches_every_caller_of_its_pass_and_no_one_else():
    encoder = FakeEncoder(hold_first=True, fail_on="bad")
    batcher = TextBatcher(encoder, max_texts=3)
    work = {"lead": ["a"], "p": ["b"], "q": ["bad"], "r": ["c"], "s": ["d", "e"]}
    results = _call_in_threads(batcher, encoder, work, queued=4)
    assert encoder.passes == [["a"], ["b", "bad", "c"], ["d", "e"]]
    errors = [results[name] for name in ("p", "q", "r")]
    assert isinstance(errors[0], ValueError) and all(e is errors[0] for e in errors)
    assert np.asarray(results["lead"]).tolist() == _expected(["a"])
    assert np.asarray(results["s"]).tolist() == _expected(["d", "e"])
    assert batcher.encode_texts(["after"]).tolist() == _expected(["after"])  # the batcher still works


def test_a_callers_bad_input_fails_only_that_caller_and_never_reaches_a_pass():
    encoder = FakeEncoder(hold_first=True)
    batcher = TextBatcher(encoder)
    work = {"lead": ["a"], "p": ["b"], "q": ["c", 7], "r": ["d"]}  # type: ignore[list-item]
    results = _call_in_threads(batcher, encoder, work, queued=2)  # "q" is refused before it queues
    assert isinstance(results["q"], TypeError)
    assert encoder.passes == [["a"], ["b", "d"]]
    assert np.asarray(results["r"]).tolist() == _expected(["d"])


def test_the_encoder_returning_the_wrong_row_count_is_an_error_for_the_pass():
    batcher = TextBatcher(lambda texts: np.zeros((len(texts) + 1, 2), dtype=np.float32))
    with pytest.raises(RuntimeError, match="2 rows for 1 texts"):
        batcher.encode_texts(["a"])


def test_no_thread_is_started_or_left_behind():
    before = set(threading.enumerate())
    encoder = FakeEncoder(hold_first=True)
    batcher = TextBatcher(encoder)
    _call_in_threads(batcher, encoder, {"lead": ["a"], "p": ["b"], "q": ["c"]}, queued=2)
    assert set(threading.enumerate()) == before


def _concurrently(encode, texts: list[str]) -> np.ndarray:
    rows: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: rows.update({i: encode([texts[i]])})) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return np.concatenate([rows[i] for i in range(len(texts))])


TEXTS = [f"{colour} leather bag number {i}" for i, colour in enumerate(["red", "blue", "green"] * 4)]


def test_serve_engines_share_passes_of_an_int8_tower_that_keeps_fp32_vectors(embedder):
    engine = SimpleNamespace(embedder=embedder, encode_query_texts=embedder.encode_texts, collection="products")
    create_app(engine=engine)  # type: ignore[arg-type]
    assert engine.embedder is embedder  # product texts (the write routes) keep the fp32 tower
    direct = embedder._encode(TEXTS)  # sentence-transformers' path, not the towers
    got = _concurrently(engine.encode_query_texts, TEXTS)
    assert np.min(np.sum(got * direct, axis=1)) >= MIN_COSINE
    assert not np.allclose(got, direct, atol=1e-6)  # the int8 tower answered, not fp32


def test_lean_text_tower_gives_the_models_own_text_features_without_padding(tiny_model_dir):
    """The plain-torch tower (fp32 here, its tokens laid end to end, its last layer run for
    end-of-text tokens alone) against CLIPModel.get_text_features on padded ids and their mask:
    texts of three lengths in one batch, one text alone, and texts with tokens after their
    end-of-text token (which the model never reads: its attention is causal) give the same vectors."""
    import torch
    from shelfsight.search.towers import TextTower, clip_model

    embedder = Embedder(str(tiny_model_dir), device="cpu", precision="fp32")
    clip = clip_model(embedder.model)
    with torch.no_grad():  # the tiny model's text biases are zero: give the MLP's some, for the fold below
        for layer in clip.text_model.encoder.layers:
            layer.mlp.fc1.bias.normal_(0, 0.5)
            layer.mlp.fc2.bias.normal_(0, 0.5)
    tower = TextTower.from_clip(clip).eval()
    texts = ["red bag", "a much longer description of a blue canvas sneaker with white laces", "mug"]
    tokenizer = embedder.model.tokenizer
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    assert len(set(tokens["attention_mask"].sum(dim=1).tolist())) == 3  # three lengths
    ids = [row[mask.bool()].numpy() for row, mask in zip(tokens["input_ids"], tokens["attention_mask"])]
    trailing = [np.concatenate([t, t[1:3]]) for t in ids]  # tokens after the end-of-text token
    with torch.inference_mode():
        expected = clip.get_text_features(**tokens)
        expected = getattr(expected, "pooler_output", expected)
        got, after = tower(tower.rows(ids)), tower(tower.rows(trailing))
        alone = [tower(tower.rows([text]))[0] for text in ids]
    assert torch.allclose(got, expected, atol=1e-4) and torch.allclose(after, expected, atol=1e-4)
    assert all(torch.allclose(vector, want, atol=1e-4) for vector, want in zip(alone, expected, strict=True))
    tower.fuse_qkv()  # as the int8 copy runs it, its quick-GELU as SiLU
    own_fc1 = tower.layers[0].fc1
    tower.quick_gelu_as_silu()
    assert isinstance(tower.layers[0].act, torch.nn.SiLU) and tower.layers[0].fc1 is not own_fc1
    with torch.inference_mode():
        assert torch.allclose(tower(tower.rows(ids)), expected, atol=1e-4)
    assert own_fc1 is clip.text_model.encoder.layers[0].mlp.fc1  # the model's own modules are left
    assert type(clip.text_model.encoder.layers[0].mlp.activation_fn).__name__ == "QuickGELUActivation"


def test_token_rows_lay_texts_end_to_end_with_their_grid_rows():
    """Three texts of 1, 3 and 2 tokens: each token's position in its text, its row in the
    (texts, longest) grid attention runs over, each text's last row, and what it attends to."""
    from shelfsight.search.towers import TokenRows

    rows = TokenRows.of([np.array([7]), np.array([1, 2, 3]), np.array([4, 5])])
    assert rows.ids.tolist() == [7, 1, 2, 3, 4, 5] and rows.longest == 3
    assert rows.positions.tolist() == [0, 0, 1, 2, 0, 1]
    assert rows.grid.tolist() == [0, 3, 4, 5, 6, 7]
    assert rows.ends.tolist() == [0, 3, 5]
    assert rows.seen.view(3, 3).tolist() == [[True, False, False], [True, True, True], [True, True, False]]
    in_grid = rows.in_grid(rows.ids.float().unsqueeze(1).repeat(1, 2), heads=1)  # (texts, heads, longest, 2)
    assert in_grid[:, 0, :, 0].tolist() == [[7, 0, 0], [1, 2, 3], [4, 5, 0]]
    assert rows.from_grid(in_grid)[:, 0].tolist() == [7, 1, 2, 3, 4, 5]
    same = TokenRows.of([np.array([1, 2]), np.array([3, 4])])  # one length: the rows are the grid, uncopied
    assert same.in_grid(same.ids.float().unsqueeze(1), heads=1)[:, 0, :, 0].tolist() == [[1, 2], [3, 4]]


def test_lean_text_tower_reads_an_older_configs_text_at_its_highest_id(tiny_model_dir):
    """Configs older than transformers PR 24773 (end-of-text id 2) read each text at its highest
    token id; the tower does as transformers does."""
    import torch
    from shelfsight.search.towers import TextTower, clip_model

    clip = clip_model(Embedder(str(tiny_model_dir), device="cpu", precision="fp32").model)
    clip.text_model.eos_token_id = 2
    tower = TextTower.from_clip(clip).eval()
    ids = torch.tensor([[5, 40, 9, 0, 0], [7, 3, 60, 12, 4]])
    with torch.inference_mode():
        expected = clip.get_text_features(input_ids=ids)
        expected = getattr(expected, "pooler_output", expected)
        rows = tower.rows(list(ids.numpy()))
        got = tower(rows)
    assert rows.ends.tolist() == [1, 4]  # each text cut after its highest id: 5 40 | 7 3 60
    assert torch.allclose(got, expected, atol=1e-4)


def test_the_embedders_pixel_and_token_paths_run_the_lean_towers(tiny_model_dir, monkeypatch):
    from shelfsight.search.towers import TextTower, VisionTower

    embedder = Embedder(str(tiny_model_dir), device="cpu", precision="fp32")
    embedder.tower("vision"), embedder.tower("text")  # packing them runs them on probes (search/packed_towers.py)
    calls: list[str] = []
    for tower in (VisionTower, TextTower):
        forward = tower.forward
        monkeypatch.setattr(
            tower, "forward", lambda self, x, f=forward, n=tower.__name__: calls.append(n) or f(self, x)
        )
    size = embedder.pixel_spec.crop  # type: ignore[union-attr]
    embedder.encode_pixels(np.zeros((2, *size, 3), dtype=np.uint8))
    embedder.encode_token_ids([np.asarray(t) for t in embedder.model.tokenizer(["red bag", "mug"])["input_ids"]])
    assert calls == ["VisionTower", "TextTower"]


def test_lean_vision_tower_gives_the_models_own_image_features(tiny_model_dir):
    """The plain-torch vision tower (its last layer run for the class token alone) against
    CLIPModel.get_image_features."""
    import torch
    from shelfsight.search.towers import VisionTower, clip_model

    embedder = Embedder(str(tiny_model_dir), device="cpu", precision="fp32")
    clip = clip_model(embedder.model)
    size = clip.config.vision_config.image_size
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = clip.get_image_features(pixel_values=pixels)
        expected = getattr(expected, "pooler_output", expected)
        got = VisionTower(clip).eval()(pixels)
    assert torch.allclose(got, expected, atol=1e-4)


def _engine_with_closers(embedder):
    closers = []
    return SimpleNamespace(
        embedder=embedder, encode_query_texts=embedder.encode_texts, on_close=closers.append
    ), closers


def _alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return False


def test_serve_embeds_query_texts_in_a_child_process_that_closes_with_the_engine(embedder, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    engine, closers = _engine_with_closers(embedder)
    assert batch_query_texts(engine, process=True).endswith("in a process of its own")  # type: ignore[arg-type]
    child = engine.encode_query_texts.__self__._encode.process
    assert _alive(child.pid) and child.pid != os.getpid()
    # the same int8 tower as in this process (int8 activations scale per pass: compare one pass each)
    assert np.allclose(engine.encode_query_texts(TEXTS), in_process_encoder(embedder, True)[0](TEXTS), atol=1e-5)
    got = _concurrently(engine.encode_query_texts, TEXTS)  # passes shared as before
    assert np.min(np.sum(got * embedder._encode(TEXTS), axis=1)) >= MIN_COSINE
    for close in closers:
        close()
    assert not _alive(child.pid)


def test_query_texts_go_on_in_this_process_when_the_child_dies(embedder, monkeypatch, caplog):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    engine, closers = _engine_with_closers(embedder)
    batch_query_texts(engine, process=True)  # type: ignore[arg-type]
    child = engine.encode_query_texts.__self__._encode.process
    os.kill(child.pid, signal.SIGKILL)
    got = engine.encode_query_texts(TEXTS[:3])
    assert np.allclose(got, in_process_encoder(embedder, True)[0](TEXTS[:3]), atol=1e-5)
    assert "query text process exited" in caplog.text
    for close in closers:
        close()


def test_int8_falls_back_to_the_models_own_tower_when_the_probes_move_too_far(embedder, monkeypatch):
    monkeypatch.setattr("shelfsight.search.text_int8.MIN_COSINE", 1.01)
    engine = SimpleNamespace(embedder=embedder, encode_query_texts=embedder.encode_texts)
    own = f"{embedder.precision} text tower for queries"
    assert batch_query_texts(engine).startswith(f"{own} (int8 probe cosine")  # type: ignore[arg-type]
    assert np.allclose(_concurrently(engine.encode_query_texts, TEXTS), embedder.encode_texts(TEXTS), atol=1e-5)
    engine = SimpleNamespace(embedder=embedder, encode_query_texts=embedder.encode_texts)
    assert batch_query_texts(engine, int8=False) == own  # type: ignore[arg-type]


def test_serve_leaves_one_core_to_the_request_threads_unless_omp_num_threads_is_set(monkeypatch):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        torch.set_num_threads(3)
        assert limit_torch_threads() == 3  # the operator's choice stands
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr("os.cpu_count", lambda: 2)
        assert limit_torch_threads() == 1
        monkeypatch.setattr("os.cpu_count", lambda: 8)
        assert limit_torch_threads() == 7
    finally:
        torch.set_num_threads(before)
