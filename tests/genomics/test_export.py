"""``genomics.export``: checkpoints of the genomics tasks to exported/ONNX artefacts that match eager, and
the errors for what cannot be exported (the block-sparse kernel, lsh)."""

from __future__ import annotations

import lightning
import pytest
import torch

from hydra.utils import get_class

from core_attn.training.callbacks import CONFIG_KEY
from core_attn.training.export import load_exported
from genomics.export import export
from tests.conftest import needs_onnx

OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True}


def _attention(name: str, **kw) -> dict:
    cls = {"local": "LocalAttention", "dense": "DenseAttention", "lsh": "LSHAttention",
           "linear": "LinearAttention"}[name]
    return {"_target_": f"core_attn.attention.{name}.{cls}", "_partial_": True, **kw}


def _checkpoint(tmp_path, attention: dict, *, task: str = "CausalLM", window: int | None = 64, **model_kw):
    """A freshly initialised task module saved as a Lightning checkpoint, with the run config train() stores."""
    model = {"_target_": "genomics.model.SequenceTransformer", "vocab_size": 9, "num_outputs": 9, "dim": 16,
             "depth": 1, "num_heads": 2, "attention": attention, **model_kw}
    target = f"genomics.module.{task}"
    module = get_class(target)(model=model, optimizer=OPTIMIZER)
    stored = {"module": {"_target_": target}, "data": {"window": window} if window else {}}
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__, CONFIG_KEY: stored}, path)
    return module.net.eval(), path


def _tokens(b: int, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(4, 9, (b, n), generator=torch.Generator().manual_seed(seed))


def test_dense_lm_exports_and_matches_eager(tmp_path):
    net, ckpt = _checkpoint(tmp_path, _attention("dense", causal=True))
    result = export(ckpt_path=str(ckpt), format="exported", batch_size=2)
    assert result["path"] == str(ckpt.with_suffix(".pt2")) and result["input_shape"] == [2, 64]
    assert result["task"] == "CausalLM" and result["max_abs_diff"] <= 1e-4
    x = _tokens(2, 64)  # other tokens than the check's
    with torch.no_grad():
        torch.testing.assert_close(load_exported(result["path"], "exported")(x), net(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["dense", "banded"])
@pytest.mark.parametrize("fmt", ["exported", pytest.param("onnx", marks=needs_onnx)])
def test_local_exports_with_dense_or_banded_backend(fmt, backend, tmp_path):
    net, ckpt = _checkpoint(tmp_path, _attention("local", window=8, causal=True))
    out = tmp_path / f"lm.{fmt}"
    result = export(ckpt_path=str(ckpt), format=fmt, out=str(out), attention_backend=backend)
    assert result["max_abs_diff"] <= 1e-4 and out.is_file()
    x = _tokens(1, 64)
    with torch.no_grad():  # the artefact computes the local pattern: compare with the blocked kernel's eager output
        torch.testing.assert_close(load_exported(out, fmt)(x), net(x), atol=1e-4, rtol=1e-4)
    if fmt == "onnx" and backend == "banded":  # key/value blocks are one Gather each, not GatherND between permutes
        import onnx

        assert "GatherND" not in {n.op_type for n in onnx.load(out).graph.node}


@needs_onnx
def test_banded_onnx_stores_each_constant_once(tmp_path):
    """Every banded layer builds the same band bias and gather indices; the file keeps one copy of each."""
    import onnx
    from onnx import numpy_helper

    net, ckpt = _checkpoint(tmp_path, _attention("local", window=8, causal=True), depth=3)
    out = tmp_path / "lm.onnx"
    assert export(ckpt_path=str(ckpt), format="onnx", out=str(out), attention_backend="banded")["max_abs_diff"] <= 1e-4
    graph = onnx.load(out).graph
    stored = [(t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes()) for t in graph.initializer]
    assert len(stored) == len(set(stored))
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[1] in {t.name for t in graph.initializer}]
    assert len(gathers) >= 6 and len({n.input[1] for n in gathers}) == 1  # keys and values of 3 layers, one table


@needs_onnx
def test_int8_onnx_matches_eager(tmp_path):
    net, ckpt = _checkpoint(tmp_path, _attention("local", window=8, causal=True))
    result = export(ckpt_path=str(ckpt), format="onnx", batch_size=2, attention_backend="dense", quantize="int8")
    fp32, int8 = ckpt.with_suffix(".onnx"), ckpt.with_name("last.int8.onnx")
    assert result["path"] == str(fp32) and result["int8_path"] == str(int8)
    assert result["size_bytes"] == fp32.stat().st_size > result["int8_size_bytes"] == int8.stat().st_size
    assert result["int8_rel_diff"] <= 0.05 == result["int8_tolerance"]  # of the logits' largest magnitude
    x = _tokens(2, 64, seed=5)
    with torch.no_grad():
        want = net(x)
        got = load_exported(int8, "onnx")(x)
    assert got.shape == want.shape and ((got - want).abs().max() / want.abs().max()).item() <= 0.05


def test_classifier_with_patches_exports(tmp_path):
    net, ckpt = _checkpoint(tmp_path, _attention("linear"), task="SequenceClassifier", window=None,
                            patch_size=4, pool="mean", num_outputs=3)
    result = export(ckpt_path=str(ckpt), format="exported", length=48)
    assert result["task"] == "SequenceClassifier" and result["input_shape"] == [1, 48]
    x = _tokens(1, 48)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(result["path"], "exported")(x), net(x), atol=1e-4, rtol=1e-4)


def test_blocked_kernel_exports(tmp_path):
    net, ckpt = _checkpoint(tmp_path, _attention("local", window=8, causal=True))
    result = export(ckpt_path=str(ckpt), format="exported")  # the block-sparse kernel traces at a fixed length
    x = _tokens(1, result["input_shape"][1])
    with torch.no_grad():
        torch.testing.assert_close(load_exported(result["path"], "exported")(x), net(x), atol=1e-4, rtol=1e-4)


def test_lsh_error_says_why(tmp_path):
    _, ckpt = _checkpoint(tmp_path, _attention("lsh", bucket_size=8, n_hashes=1, causal=True))
    with pytest.raises(ValueError, match=r"attention 'lsh' hashes tokens into buckets and runs core_attn's "
                                         r"block-sparse kernel over the sorted buckets, so its plan depends on the "
                                         r"data: .*it has no other backend, so models with it do not export"):
        export(ckpt_path=str(ckpt), format="exported")


def test_backend_needs_a_pattern_variant(tmp_path):
    _, ckpt = _checkpoint(tmp_path, _attention("linear", causal=True))
    with pytest.raises(ValueError, match=r"attention_backend='dense' applies to pattern variants .*this model's "
                                         r"attention is \['linear'\], which has no backend option"):
        export(ckpt_path=str(ckpt), format="exported", attention_backend="dense")
    with pytest.raises(ValueError, match=r"attention_backend='dens' is not allowed; expected one of .*Did you mean "
                                         r"'dense'\?"):
        export(ckpt_path=str(ckpt), format="exported", attention_backend="dens")


def test_length_errors(tmp_path):
    _, ckpt = _checkpoint(tmp_path, _attention("dense", causal=True), window=None)
    with pytest.raises(ValueError, match=r"length=null and .*last\.ckpt stores no data\.window or data\.max_len; "
                                         r"pass length=<tokens>"):
        export(ckpt_path=str(ckpt), format="exported")
    _, ckpt = _checkpoint(tmp_path / "p", _attention("linear"), task="SequenceClassifier", patch_size=4, pool="mean",
                          num_outputs=3)
    with pytest.raises(ValueError, match=r"length=50 is not a multiple of the model's patch_size=4"):
        export(ckpt_path=str(ckpt), format="exported", length=50)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=.*nope\.ckpt.*no such checkpoint file"):
        export(ckpt_path=str(tmp_path / "nope.ckpt"), format="exported")


@pytest.mark.slow
def test_genomics_export_command_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    net, ckpt = _checkpoint(tmp_path, _attention("local", window=8, causal=True))
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "lm.pt2"
    proc = subprocess.run([sys.executable, "-m", "genomics.export", f"ckpt_path={ckpt}", f"out={out}",
                           "attention_backend=dense", f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=root,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out} (exported, CausalLM, input [1, 64]" in proc.stdout
    x = _tokens(1, 64)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(out, "exported")(x), net(x), atol=1e-4, rtol=1e-4)
