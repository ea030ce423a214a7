"""Advisory file locks: a job's hold on its workdir, and one writer at a time when a dataset is prepared.

Both use `fcntl.flock`, which the kernel releases when the holding process dies, however it dies (SIGKILL
included): a lock left by a dead job is never stale, the next job takes it at once, and the lock file's
text (host, pid, start time) only describes its last holder. flock works between the processes of one
machine and, on Linux, between the machines of an NFS mount (where the kernel maps it to POSIX byte-range
locks); on a filesystem without locks `flock` fails with an OSError, which is reported as such.

Written here rather than taken from a package (`filelock`, `portalocker`) because the workdir lock must
tell the second job who holds it, which those do not, and the whole of it is a few lines over fcntl.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import socket


@contextlib.contextmanager
def exclusive(path: str | os.PathLike):
    """Hold the lock at `path` (a file, created with its folder) for the block, waiting while another holds it."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class LockHeld(RuntimeError):
    """Another live process holds the lock; the message describes it (`describe_holder`)."""


def describe_holder(path: str | os.PathLike) -> str:
    """'host H, pid P, since T' from the lock file's text, or what could be read of it."""
    try:
        holder = json.loads(pathlib.Path(path).read_text())
        return f"host {holder['host']}, pid {holder['pid']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that did not say who it is"


class HeldLock:
    """A non-blocking exclusive lock on `path` that records its holder: `acquire()` raises LockHeld naming the
    live holder, or takes the lock and writes this process's host, pid and start time into the file."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self._fd: int | None = None

    def acquire(self) -> HeldLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(describe_holder(self.path)) from None
        except BaseException:
            os.close(fd)
            raise
        since = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": since}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (the file stays: deleting it could let two jobs lock two different files)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> HeldLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
