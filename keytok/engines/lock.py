"""The write lock of an index folder: one writer at a time, builds and updates alike.

Every write to an index folder (a build, :meth:`~keytok.engines.sparse.SparseIndex.add`, ``delete``,
``compact``) writes a whole new folder beside the old one and swaps it in by rename
(:func:`keytok.utils.atomic.atomic_dir`). Two writers that both read the old folder would each swap in
their own new one, and the first one's documents would be lost. :func:`write_lock` serialises them.

* The lock file sits **beside** the folder (``.NAME.lock`` next to ``NAME``), not in it: the swap replaces
  the folder and everything inside it, so a lock file inside would be a different file for the next writer.
* It is an ``fcntl.flock`` lock: the kernel releases it when its holder dies, ``kill -9`` included, so a
  crashed writer never leaves a lock that blocks the next one (no PID files to guess about).
* The file is removed when the lock is released, so a finished write leaves nothing behind. A writer that
  was waiting on the removed file notices (its inode is no longer the path's) and locks the new one, so two
  writers never hold the lock at once.
* Holding the lock, any temporary folder of the destination belongs to a writer that died; it is deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from keytok.errors import KeytokError

__all__ = ["DEFAULT_WAIT_S", "lock_path", "write_lock"]

#: How long an update waits for another writer of the same folder before giving up.
DEFAULT_WAIT_S = 120.0
_POLL_S = 0.05


def lock_path(dest: Path) -> Path:
    """The lock file of the folder ``dest``: ``.NAME.lock`` in its parent (the build lock's name)."""
    return dest.parent / f".{dest.name}.lock"


def _try_lock(path: Path) -> IO[str] | None:
    """``path`` opened and locked exclusively, or None when another process holds the lock.

    A lock taken on a file that its previous holder has just removed locks nothing the next writer sees:
    that case is detected (the path's inode is not the locked file's) and reported as not locked.
    """
    fh = open(path, "a+")  # noqa: SIM115 - returned to the caller, who closes it
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    try:
        same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        fh.close()
        return None
    return fh


def _remove_leftovers(dest: Path) -> None:
    """Delete what a killed writer of ``dest`` left beside it: :func:`~keytok.utils.atomic.atomic_dir`'s
    temporary folder (mkdtemp's 8 random characters) and the old copy of a swap cut short (put back in
    place if the new one never came in)."""
    leftover = re.compile(rf"^\.{re.escape(dest.name)}\.([a-z0-9_]{{8}}\.tmp|old\.\d+)$")
    stale = sorted(
        p for p in dest.parent.iterdir() if leftover.match(p.name) and p.is_dir() and not p.is_symlink()
    )
    if not dest.exists():
        # A writer killed between the two renames of a swap (where no atomic exchange exists) moved the
        # old folder aside and never brought the new one in: put the old one back, the state before it.
        old = next((p for p in stale if ".old." in p.name), None)
        if old is not None:
            os.replace(old, dest)
            stale.remove(old)
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def write_lock(dest: str | os.PathLike[str], *, wait: float = 0.0, what: str = "write") -> Iterator[None]:
    """Hold the write lock of the folder ``dest`` for the ``with`` block.

    ``wait``: seconds to wait for another writer to finish (0: refuse at once). Raises :class:`KeytokError`
    in one line, naming the folder and the lock file, when the lock is still held after that; ``what`` says
    which kind of writer is refused.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(dest)
    deadline = time.monotonic() + max(0.0, float(wait))
    while (fh := _try_lock(path)) is None:
        if time.monotonic() >= deadline:
            waited = f" after waiting {wait:g} s" if wait > 0 else ""
            raise KeytokError(
                f"another process is writing {dest} (lock {path} is held){waited}; {what} refused"
            )
        time.sleep(_POLL_S)
    try:
        _remove_leftovers(dest)
        yield
    finally:
        # Removed before unlocking: a writer that opens the path from now on gets a new file.
        with contextlib.suppress(OSError):
            path.unlink()
        fh.close()
