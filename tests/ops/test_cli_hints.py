"""A mistyped override gets Hydra's error plus a "did you mean" line naming the closest valid name."""

from __future__ import annotations

import subprocess
import sys

import pytest

from core_attn.training.cli import override_hints


@pytest.mark.parametrize("app,arg,expected", [
    ("vision", "atention=local", "unknown config key 'atention' (override 'atention=local'); did you mean attention"),
    ("vision", "model.dimm=3", "unknown config key 'model.dimm' (override 'model.dimm=3'); did you mean model.dim"),
    ("vision", "attention=lokal", "'lokal' is not an option of config group 'attention' (override 'attention=lokal'); "
                                  "did you mean local?"),
    ("genomics", "trainer.max_epoch=2", "did you mean trainer.max_epochs"),
    ("audio", "data.sampel_rate=8000", "unknown config key 'data.sampel_rate'"),
])
def test_mistyped_overrides_get_the_closest_valid_name(app, arg, expected):
    hints = override_hints(app, [arg])
    assert len(hints) == 1 and expected in hints[0], hints


def test_valid_overrides_and_group_choices_get_no_hint():
    # data=image_folder brings data.root: keys are checked against the config composed with the group choices
    assert override_hints("vision", ["attention=bigbird", "model.dim=32", "data=image_folder", "data.root=/x",
                                     "+new_key=1", "~logger", "hydra.run.dir=/tmp/x", "-m"]) == []


def test_entry_point_prints_the_hint_after_hydras_error():
    proc = subprocess.run([sys.executable, "-m", "vision.train", "atention=local"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "Key 'atention' is not in struct" in proc.stderr  # Hydra's own message stays
    assert "did you mean attention" in proc.stderr


ENTRY_POINTS = [f"{app}/{name}.py" for app, names in {"vision": ["train", "evaluate", "export", "predict"],
                                                       "audio": ["train", "evaluate", "export"],
                                                       "genomics": ["train", "evaluate", "export", "infer"]}.items()
                for name in names]


@pytest.mark.parametrize("path", ENTRY_POINTS)
def test_entry_point_hints_against_its_own_config(path):
    """Each entry point names its config twice (``@hydra.main(config_name=...)`` and ``run(main, ...)``): the
    two must agree, or its hints would check the wrong config."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / path).read_text()
    decorated = re.findall(r'@hydra\.main\(.*?config_name="([^"]+)"', text, flags=re.S)
    run_calls = re.findall(r'\b(?:cli_)?run\(main, "([^"]+)"\)', text)
    assert len(decorated) == 1 and run_calls == decorated, (path, decorated, run_calls)


@pytest.mark.parametrize("path", ENTRY_POINTS)
def test_entry_point_main_block_calls_the_cli_runner(path):
    """``python -m <app>.<entry>`` runs its ``if __name__ == "__main__"`` block: the function it calls must be
    ``core_attn.training.cli.run`` (a module-level ``run`` of the entry point's own once shadowed it and
    ``python -m audio.evaluate`` died with a TypeError before doing anything)."""
    import ast
    import importlib
    from pathlib import Path

    from core_attn.training import cli

    tree = ast.parse((Path(__file__).resolve().parents[2] / path).read_text())
    (block,) = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    (call,) = [n for n in ast.walk(block) if isinstance(n, ast.Call) and ast.unparse(n.args[:1]) == "main"]
    module = importlib.import_module(path[:-3].replace("/", "."))
    assert getattr(module, ast.unparse(call.func)) is cli.run, (path, ast.unparse(call.func))
