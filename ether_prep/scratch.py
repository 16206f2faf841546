"""Private scratch folders: the one place ether-prep makes temporary files.

Every temporary folder is made by :func:`tempfile.mkdtemp` under ``TMPDIR`` (a local disk; the store may be on
a network share or behind a URL): a fresh, unpredictable name, mode 0700, created exclusively (a file or a
symlink planted at that name makes ``mkdir`` fail and another name is tried, so no planted link is ever
followed). No two tasks, runs or users share one. Files inside are created with ``O_EXCL | O_NOFOLLOW``, mode
0600. The folder is removed when its task ends, whatever way it ends (``finally``).

A process killed with SIGKILL (or a lost machine) cannot remove its folder. Each folder therefore holds an
``flock`` on its ``.owner`` file for as long as it is in use; the kernel drops that lock when the process dies,
however it dies, and in any pid namespace. Whenever a new folder is made, the caller's own leftover folders
whose lock can be taken (their process is gone) are removed first. Folders of live processes are never
touched, and no pid is guessed. Leftovers stay only until the next ether-prep task of the same user on the
same ``TMPDIR``; ``rm -rf $TMPDIR/ether-prep-*`` while no run is going removes them by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["PREFIX", "ScratchDir", "open_private", "remove_stale", "scratch_dir"]

PREFIX = "ether-prep-"
_OWNER = ".owner"
# A folder without its owner file was left by a process that died while making it (a moment's window).
_UNOWNED_AFTER_S = 3600.0


def open_private(path: Path, mode: str = "wb") -> IO[bytes]:
    """Create ``path`` exclusively, mode 0600, never through a symlink (``FileExistsError`` if it exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    return os.fdopen(fd, mode)


class ScratchDir:
    """One private temporary folder (see the module docstring); ``path`` until :meth:`close` removes it."""

    def __init__(self, kind: str = "tmp") -> None:
        remove_stale()
        self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-"))  # 0700, created exclusively
        self._fd: int | None = None
        try:
            # Locked under a temporary name, then renamed: a sweeper sees `.owner` only once it is locked.
            pending = self.path / f"{_OWNER}.new"
            fd = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            self._fd = fd
            with contextlib.suppress(OSError):  # a filesystem without flock: leftovers then stay (see docs)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(pending, self.path / _OWNER)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)  # after the removal: a sweeper must not find it unlocked meanwhile
            self._fd = None

    def __enter__(self) -> ScratchDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def scratch_dir(kind: str = "tmp") -> Iterator[Path]:
    """``with scratch_dir("spool") as path:`` a private folder, removed at the end of the block."""
    with ScratchDir(kind) as scratch:
        yield scratch.path


def remove_stale(folder: Path | None = None) -> list[Path]:
    """Remove this user's scratch folders under ``folder`` (default: ``TMPDIR``) whose process is gone;
    returns them. Anything not certainly such a folder (a link, another user's, one in use) is left alone."""
    root = Path(folder) if folder is not None else Path(tempfile.gettempdir())
    removed = []
    try:
        entries = [e for e in os.scandir(root) if e.name.startswith(PREFIX)]
    except OSError:
        return removed
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        path = Path(entry.path)
        if _abandoned(path, st):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _abandoned(path: Path, st: os.stat_result) -> bool:
    try:
        fd = os.open(path / _OWNER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return time.time() - st.st_mtime > _UNOWNED_AFTER_S
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: its process runs (or flock is unsupported: never remove when unsure)
    finally:
        os.close(fd)  # drops our lock too; the folder is removed right after
    return True
