"""Checkpoints that are never half-written: temp file in the same folder, fsync, ``os.replace``.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction, whose local temporary file is
made by ``tempfile.mkstemp()`` in the *system* temp folder and then ``shutil.move``-d into place. When
that folder is on another filesystem than the run directory (``/tmp`` on a node-local disk, outputs on
NFS/Lustre, the usual cluster layout) the move is a copy into the final path: a job killed during the
copy leaves a truncated ``last.ckpt``, and the temp file leaks in ``/tmp``. Nothing is fsync-ed either.

:class:`AtomicCheckpointIO` writes local paths to ``.<name>.<random>.tmp`` beside the target, fsyncs it and
renames it over the target (atomic on POSIX within one filesystem); a reader, or a job resuming with
``ckpt_path=last``, sees the old checkpoint or the new one, never a mix. Remote URLs (``s3://`` ...) keep
Lightning's behaviour. Selected in ``conf/trainer/default.yaml`` (``plugins``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def _is_local(path: Any) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary file in the same folder, fsync and ``os.replace``."""
    path = Path(str(path).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic, fsync-ed writes to local paths (:func:`save_atomic`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        save_atomic(checkpoint, path)
