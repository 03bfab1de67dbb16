"""One driver per search: an exclusive lock on the sweep directory for the driver's lifetime."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_FILE = "driver.lock"


class SearchLocked(RuntimeError):
    """Another driver holds the search's directory; the message names the directory and that process."""


class SearchLock:
    """An exclusive lock on a sweep directory for one driver's lifetime: one driver per search.

    A POSIX record lock on ``driver.lock``. The OS drops it when its holder dies, SIGKILL included,
    so a lock is never stale, and processes the driver forks (loader workers) do not inherit it.
    The file says who holds it (pid, host, start time), for the message a second driver gets.
    The holding process must not open the file otherwise: closing any of its descriptors of the
    file drops a POSIX lock.
    """

    _held: set[Path] = set()  # POSIX locks belong to a process: this one must not lock a directory twice

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> SearchLock:
        """Take the lock, or raise ``SearchLocked`` at once naming the directory and the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        refusal = (
            f"{self.path.parent} is the directory of a search that another evolve.py is driving"
            " ({holder}). One driver per search: wait for it to finish or stop it, then re-run to resume"
            " (a killed driver's lock is released at once); for another search, choose another search_name"
        )
        if key in SearchLock._held:
            raise SearchLocked(refusal.format(holder="this very process"))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            holder = self.path.read_text(errors="replace").strip() or "a process starting up"
            raise SearchLocked(refusal.format(holder=holder)) from None
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode())
        self._fd = fd
        SearchLock._held.add(key)
        return self

    def release(self) -> None:
        """Drop the lock (closing the file does); the file stays, holding the last holder's name."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            SearchLock._held.discard(self.path.resolve())

    def __enter__(self) -> SearchLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
