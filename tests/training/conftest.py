"""Fixtures for the runtime tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.tiny import TINY, compose_config


@pytest.fixture
def tiny_cfg(tmp_path):
    """``tiny_cfg(*overrides)``: the tiny vision config writing into ``tmp_path/run``."""

    def make(*overrides: str, output_dir: Path | None = None):
        return compose_config("vision", [*TINY, *overrides], output_dir or tmp_path / "run")

    return make
