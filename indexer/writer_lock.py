"""The one-writer lock of an index directory (``index.lock``), and how readers ask about it.

``dinoret index`` holds an exclusive ``flock`` on the lock file while it writes; the OS drops
it when the process ends in any way, ``kill -9`` included. A run row left "running" in the
catalog while nobody holds the lock therefore belongs to a run that was interrupted.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from dinoret.core.errors import UserError

# A reader probing the lock holds it for microseconds; a starting writer retries that long.
_ACQUIRE_RETRY_S = 2.0


@contextlib.contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """One writer per index; the OS drops the lock when the process dies (even by kill -9)."""
    try:
        f = open(path, "a+")
    except OSError as e:
        raise UserError(f"cannot write to the index at {path.parent}: {e.strerror or e}") from None
    with f:
        deadline = time.monotonic() + _ACQUIRE_RETRY_S
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(f"another index run is writing to {path.parent}"
                                    f"{_holder_note(path)}; wait for it to finish") from None
                time.sleep(0.05)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()} {socket.gethostname()}\n")  # who holds it, for messages only
        f.flush()
        yield


def _holder_note(path: Path) -> str:
    try:
        pid, _, host = path.read_text().strip().partition(" ")
    except OSError:
        return ""
    return f" (pid {pid} on {host})" if pid.isdigit() and host else ""


def lock_is_held(path: Path) -> bool:
    """True while some process holds the writer lock of the index (False when there is no lock file).

    Probes with a shared lock taken and dropped at once, on a read-only descriptor, so it works
    on an index the caller may not write to."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # no flock on this filesystem: nothing could be holding it either
    finally:
        os.close(fd)  # closing drops the probe's shared lock
    return False
