"""Bad input through the real command line: each case runs ``python -m <app>.<command>`` on a small bad
input (written to a temp dir) and checks the answer a user gets: one line ``<command>: error: <message>``
naming the key or file and the fix, exit code 2, and no traceback (``HYDRA_FULL_ERROR=1`` or ``--debug``
bring it back; a bug keeps it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from core_attn.errors import EXIT_USER_ERROR
from core_attn.training.callbacks import CONFIG_KEY

ROOT = Path(__file__).resolve().parents[2]
QUIET = ["extras.print_config=false", "callbacks.rich_progress_bar=null"]


def _run(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "CORE_ATTN_CLI_SET_FULL_ERROR")}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**base, "OMP_NUM_THREADS": "1", **(env or {})})


def _image_folder(tmp: Path) -> Path:
    """Two classes of three 32 px PNGs; ``a/0.png`` cut in half."""
    from PIL import Image

    for c in ("a", "b"):
        (tmp / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (32, 32), color=40 * i).save(tmp / "imgs" / c / f"{i}.png")
    png = tmp / "imgs" / "a" / "0.png"
    png.write_bytes(png.read_bytes()[:40])
    return tmp / "imgs"


def _fasta(tmp: Path, text: str, name: str = "x.fa") -> Path:
    (tmp / name).write_text(text)
    return tmp / name


def _checkpoint_of(tmp: Path, app: str) -> Path:
    torch.save({"state_dict": {}, CONFIG_KEY: {"app": app}}, tmp / f"{app}.ckpt")
    return tmp / f"{app}.ckpt"


def _no_espeak_path(tmp: Path) -> dict[str, str]:
    """PATH holding only this Python (the synthesisers are not found whether or not they are installed)."""
    (tmp / "bin").mkdir()
    (tmp / "bin" / "python").symlink_to(sys.executable)
    return {"PATH": str(tmp / "bin")}


BAD_FASTA = ">a\nACGTXXACGT\n"
LABELLED_FASTA = ">a class=x\nACGT\n>b class=y\nTTGA\n"
SHORT_GENOME = ">a\n" + "ACGT" * 64 + "\n"

# id -> (module, args(tmp) -> list, env(tmp) -> dict | None, message regex)
CASES = {
    "missing_data_root": ("vision.train", lambda t: ["data=image_folder", f"data.root={t}/nope", "data.num_classes=2"],
                          None, r"data\.root='.*/nope' is not a folder"),
    "value_left_unset": ("vision.train", lambda t: ["data=image_folder"], None,
                         r"data\.num_classes has no value \(it is \?\?\? in the config; model\.num_classes refers to "
                         r"it\): give it on the command line, data\.num_classes=<value>"),
    "mistyped_key": ("vision.train", lambda t: ["model.dimm=3"], None,
                     r"Could not override 'model\.dimm'(.|\n)*did you mean model\.dim"),
    "missing_checkpoint": ("vision.train", lambda t: [f"ckpt_path={t}/nope.ckpt"], None,
                           r"ckpt_path='.*/nope\.ckpt': no such checkpoint file"),
    "truncated_png": ("vision.train", lambda t: ["data=image_folder", f"data.root={_image_folder(t)}",
                                                  "data.num_classes=2", "data.image_size=32"], None,
                      r"unreadable image .*/imgs/a/0\.png: .*; fix or remove it, or set data\.skip_bad=true"),
    "invalid_fasta": ("genomics.train", lambda t: ["data.dataset=path", f"data.path={_fasta(t, BAD_FASTA)}"],
                      None, r"x\.fa, record #0 'a': invalid character 'X' at position 4"),
    "checkpoint_of_another_app": ("genomics.train", lambda t: [f"ckpt_path={_checkpoint_of(t, 'vision')}"], None,
                                  r"ckpt_path='.*/vision\.ckpt' is a checkpoint of the vision app, not of genomics: "
                                  r"resume it with python -m vision\.train"),
    "task_without_its_module": ("genomics.train", lambda t: [
        "data=genomics_sequences", "data.dataset=path", f"data.path={_fasta(t, LABELLED_FASTA)}",
        "data.num_outputs=2"], None,
        r"data\.task='classify' is trained by genomics\.module\.SequenceClassifier, but module\._target_="
        r"genomics\.module\.CausalLM: start from experiment=genomics_classify_16s"),
    "window_longer_than_genome": ("genomics.train", lambda t: ["data.dataset=path",
                                                               f"data.path={_fasta(t, SHORT_GENOME)}",
                                                               "data.window=1024"], None,
                                  r"x\.fa, record 'a': training stretch .* fewer than a window of 1025 .*lower "
                                  r"data\.window or set data\.on_error=skip"),
    "missing_synthesiser": ("audio.train", lambda t: [], _no_espeak_path,
                            r"the built-in speech corpus needs `espeak-ng`, which is not installed: install it with"),
    "missing_recording": ("audio.transcribe", lambda t: [f"{t}/missing.wav", f"ckpt_path={t}/model.ckpt"], None,
                          r"no such audio file: .*/missing\.wav"),
    "unknown_variant": ("core_attn.bench", lambda t: ["--variants", "lokal", "--outdir", str(t)], None,
                        r"--variants: 'lokal' is not allowed; .* Did you mean 'local'\?"),
}


FAST = ("missing_recording", "unknown_variant")  # no Lightning run: seconds; the others take ~10 s each


@pytest.mark.parametrize("case", [c if c in FAST else pytest.param(c, marks=pytest.mark.slow) for c in CASES])
def test_bad_input_gets_one_line_and_exit_code_2(case, tmp_path):
    module, args, env, pattern = CASES[case]
    hydra = [] if module in ("audio.transcribe", "core_attn.bench") else [f"hydra.run.dir={tmp_path / 'run'}", *QUIET]
    proc = _run(module, *args(tmp_path), *hydra, env=env(tmp_path) if env else None)
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.search(pattern, proc.stderr), proc.stderr[-3000:]
    if module != "audio.transcribe":  # argparse's own usage line + error
        assert re.search(rf"^{re.escape(module)}: error: ", proc.stderr, re.M), proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("switch", [{"HYDRA_FULL_ERROR": "1"}, "--debug"])
def test_full_error_or_debug_shows_the_traceback(switch, tmp_path):
    extra = [switch] if isinstance(switch, str) else []
    proc = _run("vision.train", f"ckpt_path={tmp_path}/nope.ckpt", f"hydra.run.dir={tmp_path}", *QUIET, *extra,
                env=switch if isinstance(switch, dict) else None)
    assert proc.returncode == 1 and "Traceback" in proc.stderr, proc.stderr[-3000:]
    assert "FileNotFoundError: ckpt_path=" in proc.stderr


@pytest.mark.slow
def test_a_bug_keeps_its_traceback(tmp_path):
    # a callback whose constructor fails its own assert: not a user error of the app, so not answered in one line
    proc = _run("vision.train", "+callbacks.bad._target_=tests.ops.helpers.PoisonAt", "+callbacks.bad.step=0",
                "+callbacks.bad.value=zero", f"hydra.run.dir={tmp_path}", *QUIET)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "AssertionError" in proc.stderr


@pytest.mark.slow
def test_truncated_recording_is_transcribed_with_a_warning(tmp_path):
    """A WAV shorter than its header says is transcribed as far as it goes, with a warning naming it."""
    from hydra.utils import instantiate
    from lightning import __version__ as lightning_version

    from tests.training.tiny import compose_config

    cfg = compose_config("audio", ["model.encoder.dim=32", "model.encoder.depth=1", "model.encoder.num_heads=2",
                                   "model.encoder.subsampling_channels=8"])
    module = instantiate(cfg.module, _recursive_=False, _convert_="all")
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning_version}, tmp_path / "model.ckpt")
    wav = tmp_path / "cut.wav"
    sf.write(wav, (0.3 * np.sin(np.arange(32000) / 5)).astype(np.float32), 16000)
    wav.write_bytes(wav.read_bytes()[:32000])  # half of the 64,000 bytes of samples its header announces
    proc = _run("audio.transcribe", str(wav), f"ckpt_path={tmp_path / 'model.ckpt'}", "decoder=greedy")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"cut\.wav is truncated: its header announces 64000 bytes of audio but the file holds 319\d\d; "
                     r"only the 1\.0 s present are used", proc.stderr), proc.stderr


# -- the runners, in process (fast) --------------------------------------------------------------------
def _bad_value():
    raise ValueError("data.size=0 is out of range; expected 1 <= data.size <= inf")


def _int_bug():
    return int("x")  # a ValueError, but Python's, not a message of this code: a bug


def _key_bug():
    return {}["x"]


@pytest.fixture
def argv(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("CORE_ATTN_CLI_SET_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["prog"])
    return sys.argv


@pytest.mark.parametrize("runner", ["run", "run_main"])
def test_runner_answers_a_user_error_in_one_line(runner, argv, capsys):
    from core_attn.errors import run_main
    from core_attn.training.cli import run

    with pytest.raises(SystemExit) as e:
        run(_bad_value, "vision") if runner == "run" else run_main(_bad_value)
    err = capsys.readouterr().err
    assert e.value.code == EXIT_USER_ERROR and "Traceback" not in err
    assert re.fullmatch(r"\S+: error: data\.size=0 is out of range; expected 1 <= data\.size <= inf\n", err), err
    assert "HYDRA_FULL_ERROR" not in os.environ and "CORE_ATTN_CLI_SET_FULL_ERROR" not in os.environ


@pytest.mark.parametrize("how", ["HYDRA_FULL_ERROR=1", "--debug"])
@pytest.mark.parametrize("runner", ["run", "run_main"])
def test_runner_raises_the_error_on_request(runner, how, argv, monkeypatch):
    from core_attn.errors import run_main
    from core_attn.training.cli import run

    if how == "--debug":
        argv.append("--debug")
    else:
        monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match="data.size=0 is out of range"):
        run(_bad_value, "vision") if runner == "run" else run_main(_bad_value)
    assert sys.argv == ["prog"]  # the command's own parser never sees --debug


@pytest.mark.parametrize("bug", [_int_bug, _key_bug])
@pytest.mark.parametrize("runner", ["run", "run_main"])
def test_runner_keeps_the_traceback_of_a_bug(runner, bug, argv):
    from core_attn.errors import run_main
    from core_attn.training.cli import run

    with pytest.raises((ValueError, KeyError)):
        run(bug, "vision") if runner == "run" else run_main(bug)


def test_config_errors_name_the_key():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from core_attn.training.cli import user_error_message

    local = "core_attn.attention.local.LocalAttention"
    messages = []
    for bad in ({"_target_": local, "window": 0}, {"_target_": local, "windoww": 3}):
        with pytest.raises(Exception) as e:
            instantiate({"_target_": "builtins.dict", "attention": bad})
        messages.append(user_error_message(e.value))
    assert messages == ["window=0 is out of range; expected 1 <= window <= inf",
                        "config attention: LocalAttention.__init__() got an unexpected keyword argument 'windoww'"]
    cfg = OmegaConf.create({"data": {"root": "???"}, "model": {"root": "${data.root}"}})
    with pytest.raises(Exception) as e:
        OmegaConf.to_container(cfg, resolve=True)
    assert user_error_message(e.value) == ("data.root has no value (it is ??? in the config; model.root refers to "
                                           "it): give it on the command line, data.root=<value>")
    with pytest.raises(Exception) as e:
        instantiate({"_target_": "core_attn.attention.local.Nope"})
    assert user_error_message(e.value) == (
        "config (root): _target_ cannot be imported: Error loading 'core_attn.attention.local.Nope': "
        "ModuleNotFoundError(\"No module named 'core_attn.attention.local.Nope'; 'core_attn.attention.local' is not "
        "a package\") Are you sure that 'Nope' is importable from module 'core_attn.attention.local'?")


def test_operations_doc_lists_every_raise():
    """docs/operations.md's "Every raise, by file" is what docs/error_catalogue.py generates from the code."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("error_catalogue", ROOT / "docs" / "error_catalogue.py")
    catalogue = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(catalogue)
    doc = (ROOT / "docs" / "operations.md").read_text()
    assert catalogue.MARK in doc
    section = doc.split(catalogue.MARK, 1)[1].split("\n", 1)[1]
    assert section.strip() == catalogue.tables().strip(), \
        "docs/operations.md's error catalogue is out of date: run python docs/error_catalogue.py"
