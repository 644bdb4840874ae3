"""Files that are never half-written: a temporary file beside the target, renamed over it when complete.

Every output of the runtime (checkpoints, ``metrics.json``, summaries, predictions, plots) goes through
:func:`open_atomic`: the data is written to ``.<name>.<random>.tmp`` in the target's folder (the same
filesystem, so ``os.replace`` is atomic on POSIX) and renamed over ``<name>`` when the block ends without an
error; on an error the temporary file is deleted. A reader sees the old file or the new one, never a mix.

The file gets the permissions a plain ``open()`` would give (``0o666`` less the umask), not the private
``0o600`` of ``tempfile.mkstemp``, so the group of a shared cluster project can read checkpoints and metrics.
While it is written the temporary file holds an exclusive ``flock``; a process killed during the write leaves
it behind, and :func:`remove_stale_tmp` (called by ``train`` on the next start) deletes it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# ".<name>.<8 random characters of tempfile>.tmp": the temporary files of open_atomic, nothing else
TMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; set straight back
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:  # makes the rename itself durable; not every filesystem lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def open_atomic(path: str | Path, mode: str = "w", *, fsync: bool = False) -> Iterator[IO[Any]]:
    """A handle on a temporary file beside ``path`` that replaces ``path`` when the block ends without an
    error, and is deleted when it raises.

    Args:
        path: the file to write (its folder is created).
        mode: ``"w"`` (text) or ``"wb"`` (bytes).
        fsync: flush the file and the folder to disk before returning (checkpoints: a crash of the machine
            right after the rename must not leave an empty file).

    Yields:
        The open file; write to it inside the ``with`` block.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode={mode!r} is not allowed; expected one of ['w', 'wb']")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would give, not mkstemp's private 0600
        try:  # marks the file as being written, for remove_stale_tmp of another process
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a filesystem without flock: the age rule of remove_stale_tmp still holds
            pass
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()  # all of it in the file before the name changes
            if fsync:
                os.fsync(f.fileno())
            os.replace(tmp, path)  # still locked: the temporary name is never unlocked and complete
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(path.parent)


@contextmanager
def temporary_dir_beside(path: str | Path) -> Iterator[Path]:
    """A new empty folder ``.<name>.<random>.tmp`` in ``path``'s folder, deleted with whatever is left in it when
    the block ends: a place to build a folder, or several files, that are then ``os.replace``-d to ``path`` (the
    same filesystem, so each rename is atomic). It gets the permissions ``mkdir`` would give, not ``mkdtemp``'s
    private ``0o700``, so a folder renamed into place stays readable by the group.

    Args:
        path: the file or folder the contents will replace (its folder is created).

    Yields:
        The temporary folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        tmp.chmod(0o777 & ~_umask())
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`open_atomic`)."""
    with open_atomic(path) as f:
        f.write(text)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a PNG, say; :func:`open_atomic`)."""
    with open_atomic(path, "wb") as f:
        f.write(data)


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (:func:`open_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def process_start_time() -> float:
    """When this process started (seconds since the epoch; from ``/proc`` on Linux, else the import of this
    module, which comes before any write of it)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, counted after "(comm)"
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


_IMPORTED = time.time()


def _locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # flock not supported here
        return False
    finally:
        os.close(fd)
    return False


def remove_stale_tmp(*folders: str | Path, before: float | None = None) -> list[Path]:
    """Delete the temporary files :func:`open_atomic` left in ``folders`` (not their subfolders) when a process
    was killed during a write: files named ``.<name>.<random>.tmp``, last modified before ``before`` (default:
    the start of this process) and not locked by a writer. Other files are never touched.

    Args:
        folders: the folders to clean (missing ones are skipped).
        before: a time (seconds since the epoch); newer files may belong to a live writer and are kept.

    Returns:
        The files deleted.
    """
    before = process_start_time() if before is None else before
    removed = []
    for folder in dict.fromkeys(Path(f) for f in folders):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if not TMP_NAME.match(path.name) or not path.is_file() or path.is_symlink():
                continue
            try:
                if path.stat().st_mtime >= before or _locked(path):
                    continue
                path.unlink()
            except FileNotFoundError:  # another process cleaned it first
                continue
            removed.append(path)
    return removed
