"""Every ``python -m <module>`` entry point answers ``--help``: exit 0 and a listing of its options. The
entry points are found by scanning the packages, so a new one is tested without being named here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core_attn", "vision", "audio", "genomics")
_MAIN = re.compile(r"""^if __name__ == ["']__main__["']:""", re.M)


def entry_points() -> list[str]:
    """Dotted names of the modules with a ``__main__`` block (or a package's ``__main__.py``)."""
    found = []
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if path.name == "__main__.py":
                found.append(".".join(parts[:-1]))
            elif _MAIN.search(path.read_text(encoding="utf-8")):
                found.append(".".join(parts))
    return found


ENTRY_POINTS = entry_points()


def test_entry_points_found():
    assert {"vision.train", "core_attn.bench", "audio.transcribe"} <= set(ENTRY_POINTS)


@pytest.fixture(scope="module")
def helps(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """``python -m <module> --help`` for every entry point, run side by side from an empty folder."""
    cwd = tmp_path_factory.mktemp("help")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def ask(module: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", module, "--help"], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        return dict(zip(ENTRY_POINTS, pool.map(ask, ENTRY_POINTS)))


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help(helps, module):
    proc = helps[module]
    assert proc.returncode == 0, proc.stderr[-2000:]
    # argparse prints "usage: ..."; Hydra lists the config groups and the config
    assert "usage:" in proc.stdout or "== Config ==" in proc.stdout, proc.stdout[:2000]
