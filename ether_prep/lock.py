"""Lock files: one writing run per store, one download per model file.

A lock is a small JSON file (``host``, ``pid``, ``started``, ``command``, ``purpose``) created with
``O_CREAT | O_EXCL``, so exactly one process creates it, on a local disk or a shared filesystem alike. A lock
whose holder is a process of this host that no longer runs (killed, crashed, the machine restarted) is stale
and is taken over; the takeover happens under an ``flock`` of the lock's folder, so two processes that find the
same stale lock cannot both take it. A lock held from another host is never judged stale here: this host
cannot see that host's processes, so the message says how to remove it by hand.

Usage::

    with store_lock(store_path, wait=0):   # raises LockError at once when another run holds the store
        ...
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import LockError, StoreError

__all__ = ["STORE_LOCK", "FileLock", "describe", "is_stale", "read_holder", "store_lock"]

STORE_LOCK = ".ether-prep.lock"
# A lock file is filled right after it is created; one still empty after this long lost its writer.
_UNFILLED_S = 10.0


def _process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # Field 22; the command name (field 2) may hold spaces and parentheses, so split after its last ')'.
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, start: int | None) -> bool:
    """Whether the process that wrote a lock still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, run by another user
    return start is None or _process_start(pid) in (None, start)


def read_holder(path: Path | str) -> dict[str, Any] | None:
    """The holder recorded in a lock file, or None when there is no lock; ``{}`` when unreadable."""
    try:
        return dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return {}  # being written right now, or damaged


def is_stale(path: Path | str, holder: dict[str, Any] | None) -> bool:
    """Whether the lock at ``path`` (holding ``holder``, see :func:`read_holder`) was left by a process that no
    longer runs: one of this host that is gone, or a lock file still empty long after it was created. A lock of
    another host is never judged stale (this host cannot see that host's processes)."""
    if holder == {}:  # empty or damaged: its writer died between creating and filling it
        try:
            return time.time() - Path(path).stat().st_mtime > _UNFILLED_S
        except OSError:
            return False
    if not holder or holder.get("host") != socket.gethostname():
        return False
    try:
        return not _alive(int(holder["pid"]), holder.get("pid_start"))
    except (KeyError, TypeError, ValueError):
        return False


def describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process whose lock file is being written or is damaged"
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}: "
            f"{holder.get('command') or holder.get('purpose')}")


class FileLock:
    """An exclusive lock file at ``path``; see the module docstring. Re-entrant use is an error."""

    def __init__(self, path: Path | str, purpose: str, command: str | None = None) -> None:
        self.path = Path(path)
        self.purpose = purpose
        self.command = command if command is not None else " ".join(sys.argv)
        self.token: str | None = None
        self.took_over: dict[str, Any] | None = None  # the stale holder this lock replaced, if any

    def _record(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": self.command,
                "purpose": self.purpose, "token": self.token}

    def _create(self) -> bool:
        """Create the lock file exclusively; False when it exists."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise StoreError(_unwritable(self.path.parent, exc, "a lock file")) from exc
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self._record(), fh)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    @contextlib.contextmanager
    def _folder_guard(self) -> Iterator[None]:
        """An flock on the lock's folder: released by the kernel if this process dies, so it never goes stale."""
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            with contextlib.suppress(OSError):  # a filesystem without flock: the takeover is then best effort
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _take_over_if_stale(self) -> bool:
        with self._folder_guard():
            holder = read_holder(self.path)
            if holder is None:
                return self._create()
            if not is_stale(self.path, holder):
                return False
            tmp = self.path.with_name(f"{self.path.name}.{self.token}")
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(self._record(), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)  # atomic: readers see the old holder or us, never nothing
            self.took_over = holder
            return True

    def acquire(self, wait: float = 0.0, poll: float = 0.5) -> FileLock:
        """Take the lock, waiting up to ``wait`` seconds (``inf``: as long as it takes) for its holder to end.

        Raises :class:`LockError` naming the holder (host, pid, command) when it stays held.
        """
        if self.token is not None:
            raise LockError(f"{self.path}: already held by this process")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(_unwritable(self.path.parent, exc, "a lock file")) from exc
        self.token = uuid.uuid4().hex
        deadline = time.monotonic() + wait
        while True:
            if self._create() or self._take_over_if_stale():
                return self
            if time.monotonic() >= deadline:
                holder = read_holder(self.path) or {}
                self.token = None
                raise LockError(self._refusal(holder))
            time.sleep(min(poll, max(deadline - time.monotonic(), 0.01)))

    def _refusal(self, holder: dict[str, Any]) -> str:
        same_host = holder.get("host") == socket.gethostname()
        gone = ("" if same_host else
                f"; if that process is gone (this host cannot check another host's processes), delete {self.path}")
        return f"{self.path.parent}: {self.purpose} is held by {describe(holder)}{gone}"

    def release(self) -> None:
        """Remove the lock file if it is still ours (never another process's)."""
        if self.token is None:
            return
        holder = read_holder(self.path)
        if holder and holder.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.token = None

    def __enter__(self) -> FileLock:
        return self if self.token is not None else self.acquire()  # ``with lock.acquire(wait=...):`` too

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def store_lock(store_path: Path | str, wait: float = 0.0) -> Iterator[FileLock]:
    """Hold ``<store>/.ether-prep.lock`` while writing the store; see :class:`FileLock`.

    The refusal says who holds it and how to proceed (wait for it, ``--wait SECONDS``, or remove a lock left
    by a process on another host).
    """
    store = Path(store_path)
    lock = FileLock(store / STORE_LOCK, purpose="the store lock (one writing run at a time)")
    try:
        lock.acquire(wait)
    except LockError as exc:
        raise LockError(f"{exc}; wait for that run to finish, or pass --wait SECONDS to wait for it") from None
    try:
        yield lock
    finally:
        lock.release()


def _unwritable(folder: Path, exc: OSError, what: str) -> str:
    why = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
           errno.ENOSPC: "no space left on the device"}.get(exc.errno or 0, exc.strerror or str(exc))
    return (f"{folder}: cannot write {what} here ({why}); choose a writable location (for a store: --out), "
            f"or fix the folder's permissions")
