"""``python -m genomics.data prepare``: checksum verification, idempotence and messages (with a fake apt)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from core_attn.training import debian
from genomics import prepare as prep
from genomics.data import main

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


def _fake_package(tmp_path: Path, payload: bytes) -> Path:
    """A real .deb (built with dpkg-deb) holding ``usr/share/fake/data.fa`` with ``payload``."""
    root = tmp_path / "pkgroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text("Package: fake-data\nVersion: 1.0\nArchitecture: all\n"
                                              "Maintainer: t <t@t>\nDescription: test\n")
    (root / "usr/share/fake").mkdir(parents=True)
    (root / "usr/share/fake/data.fa").write_bytes(payload)
    deb = tmp_path / "fake-data_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True, capture_output=True)
    return deb


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    """Register a data set ``fake`` whose 'apt-get download' copies a locally built .deb."""

    def install(payload: bytes, sha: str):
        deb = _fake_package(tmp_path, payload)
        monkeypatch.setitem(prep.DEBIAN, "fake", prep.DebianDataset("fake-data", "usr/share/fake/data.fa", "data.fa",
                                                                    sha, "a test set"))
        real_run = debian.run_tool

        def run(cmd, *, cwd, what, hint=""):
            if cmd[:2] == ["apt-get", "download"]:
                shutil.copy(deb, cwd)
                return
            real_run(cmd, cwd=cwd, what=what, hint=hint)

        monkeypatch.setattr(debian, "run_tool", run)
        monkeypatch.setattr(debian.shutil, "which", lambda tool: "/usr/bin/" + tool)

    return install


@needs_dpkg
def test_prepare_verifies_checksum_and_is_idempotent(tmp_path, fake_apt):
    payload = b">a\nACGT\n"
    good = __import__("hashlib").sha256(payload).hexdigest()
    fake_apt(payload, good)
    path = prep.prepare("fake", tmp_path / "data")
    assert path == tmp_path / "data/genomics/fake/data.fa" and path.read_bytes() == payload
    assert prep.prepare("fake", tmp_path / "data") == path  # already there: kept


@needs_dpkg
def test_prepare_refuses_a_changed_file(tmp_path, fake_apt):
    fake_apt(b">a\nACGT\n", "0" * 64)
    with pytest.raises(RuntimeError, match=r"checksum mismatch for usr/share/fake/data\.fa .*refusing to use it"):
        prep.prepare("fake", tmp_path / "data")
    assert not (tmp_path / "data/genomics/fake/data.fa").exists()


def test_unknown_and_missing_data_sets(tmp_path):
    with pytest.raises(ValueError, match=r"dataset='16S' is not a known data set.*Did you mean '16s'"):
        prep.dataset_path("16S", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"data set 'uniprot20k' is not prepared .*python -m genomics.data "
                                                r"prepare uniprot20k"):
        prep.dataset_path("uniprot20k", tmp_path)


def test_builtin_sets_are_generated_once(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(prep, "_generate", lambda name, path: calls.append(name) or path.parent.mkdir(
        parents=True, exist_ok=True) or path.write_text(">a\nAC\n"))
    p1 = prep.dataset_path("builtin_labelled", tmp_path)
    p2 = prep.dataset_path("builtin_labelled", tmp_path)
    assert p1 == p2 and calls == ["builtin_labelled"]


def test_pinned_checksums_look_right():
    assert set(prep.DEBIAN) == {"16s", "uniprot20k", "leptospira", "lambda"}
    for ds in prep.DEBIAN.values():
        assert len(ds.sha256) == 64 and int(ds.sha256, 16) >= 0


def test_cli_list(tmp_path, capsys):
    assert main(["list", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "16s" in out and "missing" in out and "builtin_genome" in out
