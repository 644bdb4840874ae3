"""The wheel is the product: it holds every package and the Hydra configs, and its entry points run from
any directory without a checkout."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core_attn", "vision", "audio", "genomics")  # the code the wheel ships (pyproject.toml)


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_pyproject_lists_every_package():
    """pyproject.toml names its packages (the configs ride along as ``longattn_conf``): a new subpackage
    must be added there or the wheel silently leaves it out."""
    found = sorted(".".join(p.parent.relative_to(ROOT).parts) for top in PACKAGES
                   for p in (ROOT / top).rglob("__init__.py"))
    assert found and "core_attn.attention" in found
    listed = _pyproject()["packages"]
    assert sorted(p for p in listed if p != "longattn_conf") == found
    assert _pyproject()["package-dir"]["longattn_conf"] == "conf"


def test_conf_dir_is_the_checkout_conf():
    from core_attn.training.cli import CONF_DIR

    assert CONF_DIR == ROOT / "conf" and (CONF_DIR / "vision.yaml").is_file()


def _build_wheel(tmp: Path) -> Path:
    """Build from a copy of the sources, so the checkout gets no build/ folder."""
    src, out = tmp / "src", tmp / "wheel"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in (*PACKAGES, "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)]
    # The installed setuptools when it can build wheels; else pip fetches the build requirements.
    proc = subprocess.run([*cmd, "--no-build-isolation"], capture_output=True, text=True)
    if proc.returncode != 0:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("longattn-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A new venv with only the wheel installed; the dependencies (torch, ...) come from this interpreter's
    site-packages through a .pth file, which does not run this venv's editable-install hook."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "longattn_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    str(wheel)], check=True)
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    return _fresh_venv(tmp, _build_wheel(tmp))


APPS = ["vision", "genomics",
        pytest.param("audio", marks=pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                                       reason="the audio app's built-in corpus needs espeak-ng"))]


@pytest.mark.slow
@pytest.mark.parametrize("app", APPS)
def test_wheel_trains_outside_the_checkout(installed, app, tmp_path):
    """``pip install <wheel>``, then ``python -m <app>.train trainer.fast_dev_run=true`` in an empty folder."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    where = subprocess.run([str(installed), "-c", f"import {app}, core_attn.training.cli as c; "
                            f"print({app}.__file__); print(c.CONF_DIR)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert not where[0].startswith(str(ROOT)) and where[1].endswith("longattn_conf"), where
    proc = subprocess.run([str(installed), "-m", f"{app}.train", "trainer.fast_dev_run=true"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert list((tmp_path / "outputs" / app).rglob("metrics.json"))


HYDRA_ENTRY_POINTS = sorted(p.relative_to(ROOT).as_posix() for top in PACKAGES for p in (ROOT / top).rglob("*.py")
                            if re.search(r"^@hydra\.main\(", p.read_text(encoding="utf-8"), re.M))


@pytest.mark.parametrize("path", HYDRA_ENTRY_POINTS)
def test_hydra_entry_points_read_the_shipped_configs(path):
    """``config_path=str(CONF_DIR)``: a path beside the module file (``"../conf"``) exists in a checkout only."""
    text = (ROOT / path).read_text(encoding="utf-8")
    assert re.findall(r"@hydra\.main\(config_path=([^,]+),", text) == ["str(CONF_DIR)"], path
