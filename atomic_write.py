"""Write files and folders so that readers only ever see the old or the complete new version.

Invariants:

* :func:`atomic_path` yields a temporary path in the target's folder; only when the ``with``
  block ends without an exception is the (fsynced) temporary renamed over the target
  (``os.replace``, atomic on POSIX). Any failure — a full disk, an exception, SIGTERM turned
  into ``SystemExit`` — removes the temporary and leaves the previous target untouched.
* :func:`replace_folder` puts a complete staged folder in the place of a target folder with
  two renames (old aside, new in), then deletes the old one. A failure of the second rename
  puts the old folder back; at no moment is a half-written folder at the target path (at
  worst, after a kill between the renames, the target is missing and ``<target>.old-*``
  holds the previous version).

Cost: one extra ``fsync`` and rename per file; no copy. Standard library only (the vLLM
runtime imports this module).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Temporaries are created private (0600 / 0700); what is published gets the usual modes.
_FILE_MODE = 0o666 & ~_umask()
_FOLDER_MODE = 0o777 & ~_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path``; renamed onto ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(_FILE_MODE)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def staging_folder(target: str | Path) -> Path:
    """A new empty folder beside ``target`` to build its next version in (same filesystem)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.staged-", dir=target.parent))
    staged.chmod(_FOLDER_MODE)
    return staged


def replace_folder(staged: str | Path, target: str | Path) -> None:
    """Swap the complete folder ``staged`` into ``target`` (module doc); ``staged`` is consumed."""
    staged, target = Path(staged), Path(target)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        old.rmdir()
        os.rename(target, old)
    try:
        os.rename(staged, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
