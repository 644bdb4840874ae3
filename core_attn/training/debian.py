"""Data shipped in Debian packages, fetched without root: ``apt-get download`` then ``dpkg-deb -x``.

Debian's archive is reachable where the internet at large is not (a package mirror), and its packages
carry real data sets (genomes, proteins, recorded speech). Each app pins checksums of the files it takes,
so a repackaged or changed data set is refused rather than silently used.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from core_attn.errors import ToolError


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(folder: str | Path, pattern: str = "*") -> str:
    """One SHA-256 over the files under ``folder`` matching ``pattern``: their relative paths and contents, in
    sorted order (the same files give the same digest wherever they are unpacked)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob(pattern) if p.is_file()):
        h.update(f"{path.relative_to(folder).as_posix()}\0{sha256(path)}\n".encode())
    return h.hexdigest()


def run_tool(cmd: list[str], *, cwd: str | Path, what: str, hint: str = "") -> None:
    """Run ``cmd``; a non-zero exit raises :class:`ToolError` with the last lines it printed."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ToolError(f"could not {what}: `{' '.join(cmd)}` exited {proc.returncode}: {' / '.join(err)}"
                        + (f"; {hint}" if hint else ""))


def fetch_packages(packages: Sequence[str], folder: str | Path) -> Path:
    """Download ``packages`` into ``folder`` and unpack them all into ``<folder>/root``; return that root.

    Raises:
        ToolError: ``apt-get`` or ``dpkg-deb`` is missing or fails (a package apt does not know, no mirror).
    """
    folder = Path(folder)
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise ToolError(f"fetching the Debian package(s) {', '.join(packages)} needs `{tool}` (a Debian/Ubuntu "
                            "system); it is not on PATH")
    run_tool(["apt-get", "download", *packages], cwd=folder, what=f"download {', '.join(packages)}",
             hint="if apt cannot find it, run `apt-get update` (as root) and retry")
    root = folder / "root"
    for package in packages:
        debs = sorted(folder.glob(f"{package}_*.deb"))
        if not debs:
            raise ToolError(f"apt-get download {package} left no {package}_*.deb in {folder}")
        run_tool(["dpkg-deb", "-x", str(debs[-1]), str(root)], cwd=folder, what=f"unpack {debs[-1].name}")
    return root
