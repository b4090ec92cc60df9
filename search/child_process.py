"""A fresh interpreter that answers calls over a pipe, for work that must not share this process's GIL.

qdrant-edge holds the GIL through every call, and so does much of a model's forward pass between
its operations. Two such loads in one process take turns; in two processes they run side by side.
The ingest hands its store writes to one (``ingest/write_process.py``), ``serve`` its query texts
(``search/text_process.py``).

The child is started with ``python -c`` and this process's ``sys.path`` (``-m`` would put the
working directory first, where a checkout's own ``shelfsight/`` folder shadows the installed
package). It is a fresh interpreter, not a fork: a fork would inherit thread pools in whatever
state this process's threads left them. It dies with its parent (``die_with_parent``).

Parent side::

    child = ChildProcess("shelfsight.search.text_process", [model], TextProcessError, "the query text process")
    print(child.greeting)                       # waits until it is ready
    vectors = child.call("encode", ["red bag"])
    child.close()

Child side (the module's ``main(argv)``)::

    recv, send, args = connect(argv)
    greet(send, description)                        # or fail(send, exc) and return
    serve_calls({"encode": encode}, recv, send)
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from shelfsight.search.errors import ShelfsightError
from shelfsight.search.parent_death import die_with_parent

START_TIMEOUT_S = 120.0
# A failed call's answer stays this small (a pipe's buffer is 64 KiB on Linux): see ``_dumps``.
MAX_FAILURE_BYTES = 16_384


class ChildProcess:
    """A child running ``module.main``; ``call`` sends one call and waits for its answer (or
    ``send`` now, ``receive`` later). Calls are made from one thread at a time (the caller's lock).
    An exception in the child is raised here as itself.

    The child starts in the background: its greeting is taken when first needed (``greeting``,
    the first answer, ``close``), and a child that could not start says why there."""

    def __init__(self, module: str, args: list[str], error: type[ShelfsightError], what: str, gone_hint: str = ""):
        self.error, self.what, self.gone_hint = error, what, gone_hint
        from_parent, to_child = os.pipe()  # (read end, write end)
        from_child, to_parent = os.pipe()
        boot = f"import sys; sys.path[:] = {sys.path!r}; from {module} import main; main(sys.argv[1:])"
        command = [sys.executable, "-c", boot, str(os.getpid()), str(from_parent), str(to_parent), *args]
        self._popen = subprocess.Popen(command, pass_fds=(from_parent, to_parent), stdin=subprocess.DEVNULL)
        os.close(from_parent)
        os.close(to_parent)
        self._send = Connection(to_child, readable=False)
        self._recv = Connection(from_child, writable=False)
        self._greeting: Any = None
        self._greeted = False
        self._broken = False  # an interrupt left a message half sent or an answer untaken

    @property
    def greeting(self) -> Any:
        """What the child said when ready (waits for it; raises why it did not start)."""
        self._greet()
        return self._greeting

    def _greet(self) -> None:
        """Take the child's greeting, the first thing it sends, once; raise why it did not start."""
        if self._greeted:
            return
        self._greeted = True
        try:
            self._greeting = self._answer(START_TIMEOUT_S)
        except self.error as exc:
            self._stop()
            raise self.error(f"{self.what} did not start: {exc}; its error is above") from exc
        except BaseException:
            self._stop()
            raise

    @property
    def broken(self) -> bool:
        """An interrupt left a call half sent or an answer untaken: the pipe is out of step."""
        return self._broken

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def call(self, op: str, *args: Any) -> Any:
        self.send(op, *args)
        return self.receive()

    def send(self, op: str, *args: Any) -> None:
        """Send a call without waiting for its answer; ``receive`` takes the answers in the order
        the calls were sent. While the child works on one call, this process can prepare the next."""
        message = pickle.dumps((op, args), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self._send.send_bytes(message)
        except OSError as exc:
            self._greet()  # a child that could not start has said why before it exited
            raise self._gone() from exc
        except BaseException:
            self._broken = True
            raise

    def receive(self) -> Any:
        """The answer to the oldest call not yet answered (its exception raised here)."""
        self._greet()
        return self._answer(None)

    def close(self) -> None:
        """Ask the child to finish (``close``), then wait for it to exit; a child that could not
        start raises why. After an interrupt mid-call the pipe is out of step: the child is killed."""
        try:
            if self._broken:
                return  # _stop kills it
            self._greet()
            if self._popen.poll() is None:
                self.call("close")
        finally:
            self._stop()

    def _answer(self, timeout: float | None) -> Any:
        try:
            if timeout is not None and not self._recv.poll(timeout):
                raise self.error(f"{self.what} did not start within {timeout:.0f} s")
            ok, value = pickle.loads(self._recv.recv_bytes())
        except (EOFError, OSError) as exc:
            raise self._gone() from exc
        except BaseException:
            self._broken = True
            raise
        if not ok:
            raise value
        return value

    def _gone(self) -> ShelfsightError:
        try:
            code: int | str = self._popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = "none: it stopped answering"
        return self.error(f"{self.what} exited (code {code}){self.gone_hint}")

    def _stop(self) -> None:
        for conn in (self._send, self._recv):
            conn.close()
        if self._broken:  # nothing it says can be trusted now: no grace period
            self._popen.kill()
        try:
            self._popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()


def connect(argv: list[str]) -> tuple[Connection, Connection, list[str]]:
    """The child's ends of the pipes, and its own arguments; from now on it dies with its parent."""
    parent, from_parent, to_parent, *args = argv
    die_with_parent(parent=int(parent))
    return Connection(int(from_parent), writable=False), Connection(int(to_parent), readable=False), args


def greet(send: Connection, value: Any = None) -> None:
    """Tell the parent the child is ready (``value`` becomes its ``greeting``)."""
    send.send_bytes(_dumps((True, value)))


def fail(send: Connection, exc: BaseException) -> None:
    """Tell the parent the child could not start; the parent raises ``exc``."""
    send.send_bytes(_dumps((False, exc)))


def serve_calls(calls: dict[str, Callable[..., Any]], recv: Connection, send: Connection) -> None:
    """Answer calls until ``close`` (``calls["close"]`` runs first, if given) or until the parent's
    end of the pipe closes."""
    while True:
        try:
            op, args = pickle.loads(recv.recv_bytes())
        except EOFError:
            return
        if op == "close":
            calls.get("close", lambda: None)()
            send.send_bytes(pickle.dumps((True, None)))
            return
        try:
            answer = (True, calls[op](*args))
        except Exception as exc:  # the parent raises it as if it had made the call itself
            answer = (False, exc)
        send.send_bytes(_dumps(answer))


def _dumps(answer: tuple[bool, Any]) -> bytes:
    """An answer as bytes. An exception that does not pickle, or pickles larger than
    ``MAX_FAILURE_BYTES``, gets there as its text: the parent may be blocked sending the next
    call, so a failure must fit the pipe's buffer rather than wait for the parent to read."""
    ok, value = answer
    try:
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        data = None
    if data is None or (not ok and len(data) > MAX_FAILURE_BYTES):
        text = f"{type(value).__name__}: {value}"[: MAX_FAILURE_BYTES // 8]
        return pickle.dumps((False, ShelfsightError(text)))
    return data
