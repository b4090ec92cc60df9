"""A URL fetch's overall deadline holds however the host stalls: a host that goes quiet after a
byte, one that drips its headers, and one that serves at once (which must still work).

Each slow host here would hold a fetch far past the deadline if only the per-read timeout (60 s)
bounded it, so the fetch must fail naming the deadline, not the per-read timeout.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from shelfsight.search.images import ImageError, ImagePolicy, read_image_bytes

POLICY = ImagePolicy(allow_private=True, timeout=60, deadline=1.0)
# Seconds a fetch may run before the test gives up on it as hung (a guard, not a measurement).
HUNG = 60


@contextmanager
def host(answer: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """A loopback host that runs ``answer(connection, released)`` for each request; ``released``
    is set on the way out so a stalling answer ends with the test."""
    released = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)  # the acceptor looks at ``released`` this often
    threads: list[threading.Thread] = []

    def serve() -> None:
        while not released.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            worker = threading.Thread(target=_answer, args=(answer, conn, released), daemon=True)
            threads.append(worker)
            worker.start()

    acceptor = threading.Thread(target=serve, daemon=True)
    acceptor.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/p.jpg"
    finally:
        released.set()
        acceptor.join()
        listener.close()
        for worker in threads:
            worker.join()


def _answer(answer: Callable[[socket.socket, threading.Event], None], conn: socket.socket, released: threading.Event):
    with conn:
        try:
            conn.recv(65536)  # the request
            answer(conn, released)
        except OSError:
            pass  # the client hung up


def quiet_after_one_byte(conn: socket.socket, released: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\nx")
    released.wait()


def dripping_headers(conn: socket.socket, released: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    while not released.wait(0.05):
        conn.sendall(b"a")


def whole_answer(conn: socket.socket, released: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")


def fetch(url: str, tmp_path) -> bytes | BaseException:
    """The fetch's bytes or its exception; run in a thread so a fetch that never ends fails the
    test instead of hanging it."""
    outcome: list[bytes | BaseException] = []

    def run() -> None:
        try:
            outcome.append(read_image_bytes(url, tmp_path, POLICY))
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(HUNG)
    assert outcome, f"the fetch of {url} still runs {HUNG} s after its {POLICY.deadline:g}-second deadline"
    return outcome[0]


@pytest.mark.parametrize("answer", [quiet_after_one_byte, dripping_headers], ids=["quiet-body", "dripping-headers"])
def test_a_stalling_host_is_cut_off_at_the_deadline_not_the_read_timeout(tmp_path, answer):
    with host(answer) as url:
        outcome = fetch(url, tmp_path)
    assert isinstance(outcome, ImageError), outcome
    assert "1-second deadline" in str(outcome)


def test_a_prompt_host_is_read_whole(tmp_path):
    with host(whole_answer) as url:
        assert fetch(url, tmp_path) == b"hello"
