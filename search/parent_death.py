"""Child processes that do not outlive the process that started them.

A child of ours may hold what its parent held (a forked reader inherits the store's lock file) or
own what the parent handed it (the ingest's write process owns the embedded store). If the parent
is killed, even by SIGKILL, the child must go too, or the store stays locked.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux; elsewhere a no-op).
    With ``parent``: a parent already gone by the time this runs means exit at once."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
        except (OSError, AttributeError):
            pass
    if parent is not None and os.getppid() != parent:
        os._exit(0)
