"""The ingest's write process: a child that owns an embedded collection for the embedding loop."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from shelfsight.ingest.write_process import WriteProcess, pack_points, unpack_points
from shelfsight.search.errors import BadInputError, StoreUnavailableError
from shelfsight.search.relevance import collection_vocabulary
from shelfsight.search.store.base import CollectionMeta, PointRecord
from shelfsight.search.store.edge import EdgeStore

META = CollectionMeta(model="m@1", dimension=8, vectors=("image", "text"), fields={"category": "keyword"})


def _points(n, start=0, dim=8):
    rng = np.random.default_rng(start)
    return [
        PointRecord(
            f"00000000-0000-0000-0000-{i:012d}",
            {name: rng.standard_normal(dim).astype(np.float32) for name in ("image", "text")},
            {"product_id": f"p{i}", "category": "shoes" if i % 2 else "bags"},
        )
        for i in range(start, start + n)
    ]


@pytest.fixture
def edge(tmp_path):
    store = EdgeStore(tmp_path / "db")
    store.create_collection("c", META)
    yield store
    store.close()


def test_points_cross_as_one_block_and_come_back_the_same():
    from dataclasses import replace

    from shelfsight.search.lexical import bm25_document

    points = _points(5)
    points[1] = replace(points[1], words=bm25_document("red leather bag"))
    ids, payloads, words, names, block = pack_points(points)
    assert names == ("image", "text") and block.shape == (5, 2, 8) and block.dtype == np.float32
    again = unpack_points(ids, payloads, words, names, block)
    assert [p.id for p in again] == [p.id for p in points] and [p.payload for p in again] == [p.payload for p in points]
    assert [p.words for p in again] == [p.words for p in points] and again[1].words is not None
    for mine, theirs in zip(again, points):
        assert all(np.array_equal(mine.vectors[n], theirs.vectors[n]) for n in names)


def test_writes_through_the_child_are_in_the_store_after_it_closes(edge):
    edge.release("c")
    child = WriteProcess(edge.root, "c")
    try:
        child.upsert("c", _points(20))
        child.set_payload("c", {"00000000-0000-0000-0000-000000000003": {"product_id": "p3", "category": "hats"}})
        found = child.retrieve("c", ["00000000-0000-0000-0000-000000000003"], with_vectors=True)
        assert found[0].payload["category"] == "hats" and found[0].vectors["image"].shape == (8,)
    finally:
        child.close()
    assert child._child.returncode == 0  # it exited by itself, not killed
    assert edge.count("c") == 20  # this process's store opens the collection again
    expected = _points(20)[7].vectors["text"]
    got = edge.retrieve("c", ["00000000-0000-0000-0000-000000000007"], with_vectors=True)[0].vectors["text"]
    assert np.allclose(got / np.linalg.norm(got), expected / np.linalg.norm(expected), atol=1e-6)


def test_a_store_error_in_the_child_is_raised_here_and_the_child_goes_on(edge):
    edge.release("c")
    with WriteProcess(edge.root, "c") as child:
        child.upsert("c", _points(3, dim=5))
        with pytest.raises(BadInputError, match="dimension|8"):
            child.settle()
        child.upsert("c", _points(4))
        assert len(child.retrieve("c", [p.id for p in _points(4)])) == 4
    assert edge.count("c") == 4


def test_upserts_are_pipelined_one_deep_and_a_failure_surfaces_with_the_next_call(edge):
    edge.release("c")
    with WriteProcess(edge.root, "c") as child:
        child.upsert("c", _points(3, dim=5))  # returns before the child has answered
        assert child.unanswered == 1
        with pytest.raises(BadInputError, match="dimension|8"):
            child.upsert("c", _points(4))  # sent, then the bad batch's answer is taken
        assert child.unanswered == 1
        child.upsert("c", _points(2, start=4))
        child.settle()
        assert child.unanswered == 0
    assert edge.count("c") == 6  # the batches after the bad one all landed


def test_a_collection_this_process_still_holds_is_refused_clearly(edge):
    edge.count("c")  # holds the shard's lock
    child = WriteProcess(edge.root, "c")  # starts in the background, and gives up
    child._child._popen.wait(timeout=60)
    with pytest.raises(StoreUnavailableError, match="another process"):
        child.upsert("c", _points(2))  # the first call says why, not just that the child is gone
    child.close()


PARENT = textwrap.dedent(
    """
    import sys, time
    from shelfsight.ingest.write_process import WriteProcess
    from shelfsight.search.store.edge import EdgeStore
    store = EdgeStore(sys.argv[1])
    child = WriteProcess(store.root, "c")
    print(child._child.pid, flush=True)
    time.sleep(600)
    """
)


def test_the_child_dies_with_a_killed_parent_and_frees_the_store(edge):
    edge.release("c")
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(edge.root)], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(parent.stdout.readline())
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        parent.stdout.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(child_pid):
        time.sleep(0.05)
    assert not _alive(child_pid)
    assert edge.count("c") == 0  # the lock went with the child


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    finally:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def test_the_ingest_counts_a_pipelined_batch_only_once_it_has_landed(edge):
    """The pipeline's writer thread: with the write process, an upsert returns before its batch
    lands, so a batch is counted when the next write returns or the last is settled; a batch the
    child refuses is never counted, and its error stops the run."""
    import threading

    from shelfsight.ingest.pipeline import _Writer

    edge.release("c")
    landed: list[int] = []
    with WriteProcess(edge.root, "c") as child:
        writer = _Writer(child, threading.Lock(), None)
        with pytest.raises(BadInputError, match="dimension|8"):
            with writer:
                for k, (n, dim) in enumerate(((3, 8), (2, 5), (4, 8))):  # the middle batch is refused
                    points = _points(n, start=k * 10, dim=dim)
                    writer.submit(lambda store, p=points: store.upsert("c", p), lambda s, n=n: landed.append(n))
                writer.wait()
        assert landed == [3]
        child.settle()  # the batch after the refused one was sent and lands
    assert edge.count("c") == 7


def test_the_last_pipelined_batch_is_counted_when_the_writer_settles(edge):
    import threading

    from shelfsight.ingest.pipeline import _Writer

    edge.release("c")
    landed: list[int] = []
    with WriteProcess(edge.root, "c") as child:
        with _Writer(child, threading.Lock(), None) as writer:
            for k, n in enumerate((3, 4)):
                points = _points(n, start=k * 10)
                writer.submit(lambda store, p=points: store.upsert("c", p), lambda s, n=n: landed.append(n))
            writer.wait()
            assert landed == [3] and child.unanswered == 1  # the last batch is sent, not yet counted
        assert landed == [3, 4] and child.unanswered == 0
    assert edge.count("c") == 7


def test_a_child_that_could_not_start_says_why_when_closed_unused(edge):
    edge.count("c")  # holds the shard's lock
    child = WriteProcess(edge.root, "c")
    child._child._popen.wait(timeout=60)  # gave up before any call
    with pytest.raises(StoreUnavailableError, match="another process"):
        child.close()


def test_an_error_on_its_way_out_is_not_replaced_by_a_pending_upserts_error(edge):
    edge.release("c")
    with pytest.raises(RuntimeError, match="the embed stage failed"):
        with WriteProcess(edge.root, "c") as child:
            child.upsert("c", _points(3, dim=5))  # refused, unanswered when the error comes
            raise RuntimeError("the embed stage failed")
    assert child._child.returncode == 0  # closed in order all the same
    assert edge.count("c") == 0


def test_an_interrupt_while_waiting_for_an_answer_has_the_child_killed_not_misread(edge):
    edge.release("c")
    child = WriteProcess(edge.root, "c")
    assert child._child.greeting is None  # started (the write process greets with nothing)
    child.upsert("c", _points(3))

    def interrupted():
        raise KeyboardInterrupt

    child._child._recv.recv_bytes = interrupted  # the answer stays in the pipe
    with pytest.raises(KeyboardInterrupt):
        child.settle()
    child.close()  # does not take the stale answer as the reply to "close"
    assert child._child.returncode == -signal.SIGKILL


def test_a_failure_too_big_for_the_pipe_crosses_as_its_text():
    import pickle

    from shelfsight.search.child_process import MAX_FAILURE_BYTES, _dumps
    from shelfsight.search.errors import ShelfsightError

    data = _dumps((False, BadInputError("x" * 200_000)))
    assert len(data) <= MAX_FAILURE_BYTES
    ok, error = pickle.loads(data)
    assert not ok and isinstance(error, ShelfsightError) and str(error).startswith("BadInputError: xxx")
    assert pickle.loads(_dumps((True, "y" * 200_000)))[1] == "y" * 200_000  # answers keep their size


def test_the_end_of_an_ingest_runs_on_the_collection_the_child_holds(edge):
    """Pruning, the index build and calibration ask the child too: pages of points, deletes,
    counts, facets, searches, the metadata; what it changed is what this process reads after."""
    from dataclasses import replace

    from shelfsight.search.store.base import NearestQuery

    edge.release("c")
    with WriteProcess(edge.root, "c") as child:
        child.upsert("c", _points(600))
        assert len({p.id for p in child.scroll("c", batch_size=256)}) == 600  # three pages
        child.delete("c", [p.id for p in _points(100)])
        assert child.count("c") == 500 and dict(child.facet("c", "category")) == {"shoes": 250, "bags": 250}
        words = child.vocabulary("c")  # counted in the child: ids with digits are left out
        assert words == {"shoes": 250, "bags": 250}
        child.optimize("c")
        query = [NearestQuery(np.ones(8, dtype=np.float32), "image", 5)]
        found = [p.id for p in child.query("c", query)[0][0]]
        child.set_meta("c", replace(child.get_meta("c"), vocabulary={"bag": 250}, relevance_floor=0.5))
    assert edge.count("c") == 500 and [p.id for p in edge.query("c", query)[0][0]] == found
    assert edge.get_meta("c").vocabulary == {"bag": 250} and edge.get_meta("c").relevance_floor == 0.5
    assert collection_vocabulary(edge, "c") == words  # as this process would count them
