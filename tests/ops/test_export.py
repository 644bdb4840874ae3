"""export_model / load_exported on a tiny ViT, ``vision.export`` on a checkpoint, and the int8 ONNX model."""

from __future__ import annotations

from functools import partial

import lightning
import pytest
import torch

from core_attn.attention.dense import DenseAttention
from core_attn.attention.local import LocalAttention
from core_attn.training.export import FORMATS, export_artefact, export_model, int8_path, load_exported
from tests.conftest import needs_onnx
from vision.export import export
from vision.model import VisionTransformer

ATTENTION = {"local": partial(LocalAttention, window=4), "dense": DenseAttention,
             "local_dense": partial(LocalAttention, window=4, backend="dense")}  # the same pattern through SDPA
MODEL = dict(img_size=32, in_chans=1, num_classes=3, patch_size=4, dim=16, depth=1, num_heads=2)  # 64 tokens
INT8_TOL = 0.05  # the default int8_tolerance: max |int8 - eager| <= 5% of max |eager|
# benchmarks/int8_export.py overrides for a tiny untrained genomics model
TINY_GENOMICS = [a for o in ("model.dim=16", "model.depth=1", "model.num_heads=2", "data.window=64",
                             "attention.window=8") for a in ("-o", o)]


def _formats():
    for fmt in FORMATS:
        marks = [needs_onnx] if fmt == "onnx" else []
        yield pytest.param(fmt, marks=marks)


def _cases():  # exporting through onnxruntime takes ~10 s: slow-marked except local-onnx
    for variant in sorted(ATTENTION):
        for p in _formats():
            slow = [pytest.mark.slow] if p.values[0] == "onnx" and variant != "local" else []
            yield pytest.param(variant, *p.values, marks=[*p.marks, *slow], id=f"{variant}-{p.values[0]}")


@pytest.mark.parametrize("variant,fmt", list(_cases()))
def test_artefact_matches_eager(variant, fmt, tmp_path):
    torch.manual_seed(0)
    net = VisionTransformer(**MODEL, attention=ATTENTION[variant]).eval()
    x = torch.randn(2, 1, 32, 32)
    path = tmp_path / f"net.{fmt}"
    if (variant, fmt) == ("local", "torchscript"):  # the block-sparse kernel is a Python autograd.Function
        with pytest.raises(ValueError, match=r"format='torchscript' cannot save this model: it calls a Python "
                                             r"autograd.Function .*use format='exported' or format='onnx' \(with "
                                             r"attention_backend=dense for pattern variants"):
            export_model(net, x, fmt, path)
        assert not list(tmp_path.iterdir())
        return
    diff = export_model(net, x, fmt, path)
    assert diff <= 1e-4 and path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the temporary folder was cleaned up
    x2 = torch.randn(2, 1, 32, 32)  # a different sample of the traced shape
    with torch.no_grad():
        torch.testing.assert_close(load_exported(path, fmt)(x2), net(x2), atol=1e-4, rtol=1e-4)


def test_dynamic_dims(tmp_path):
    torch.manual_seed(0)
    net = VisionTransformer(**MODEL, attention=DenseAttention).eval()
    x, x3 = torch.randn(2, 1, 32, 32), torch.randn(3, 1, 32, 32)
    path = tmp_path / "net.pt2"
    assert export_model(net, x, "exported", path, dynamic_dims=(0,), check_inputs=[x3]) <= 1e-4  # any batch size
    with torch.no_grad():
        torch.testing.assert_close(load_exported(path, "exported")(torch.randn(5, 1, 32, 32)).shape, (5, 3))
    with pytest.raises(ValueError, match=r"dynamic_dims=\[0\] needs format='exported' or format='onnx' "
                                         r"\(format='torchscript' traces one shape\)"):
        export_model(net, x, "torchscript", tmp_path / "net.pt", dynamic_dims=(0,))


def test_check_input_the_artefact_rejects(tmp_path):
    net = torch.nn.Linear(3, 2).eval()
    with pytest.raises(ValueError, match=r"the exported artefact \(traced at input \(2, 3\)\) fails on input "
                                         r"\(4, 3\): .*; nothing was written"):
        export_model(net, torch.zeros(2, 3), "exported", tmp_path / "a.pt2", check_inputs=[torch.zeros(4, 3)])
    assert not list(tmp_path.iterdir())


class _TracedNaN(torch.nn.Module):
    """Returns x in the eager forward but NaN when traced: a NaN difference must fail the check."""

    def forward(self, x):
        return x * float("nan") if torch.compiler.is_compiling() or torch.jit.is_tracing() else x


def test_nan_output_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"differs from the eager model's by nan \(> atol=0.0001\)"):
        export_model(_TracedNaN(), torch.zeros(2, 3), "exported", tmp_path / "a.pt2", check_inputs=[torch.ones(2, 3)])
    assert not list(tmp_path.iterdir())


class _TracedShorter(torch.nn.Module):
    """Returns x in the eager forward but its first row when traced: the shape check must catch it."""

    def forward(self, x):
        return x[:1] if torch.compiler.is_compiling() or torch.jit.is_tracing() else x


def test_shape_mismatch_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"the exported artefact's output has shape \(1, 3\) on input \(2, 3\), "
                                         r"the eager model's \(2, 3\); nothing was written"):
        export_model(_TracedShorter(), torch.zeros(2, 3), "exported", tmp_path / "a.pt2")
    assert not list(tmp_path.iterdir())


def test_unknown_format(tmp_path):
    net = VisionTransformer(**MODEL, attention=DenseAttention)
    with pytest.raises(ValueError, match=r"format='onx' is not allowed; expected one of .*Did you mean 'onnx'"):
        export_model(net, torch.randn(1, 1, 32, 32), "onx", tmp_path / "x")


class _EvalDiffers(torch.nn.Module):
    """Returns x in the eager forward but x + 1 when traced: the check must catch it."""

    def forward(self, x):
        return x + 1 if torch.compiler.is_compiling() or torch.jit.is_tracing() else x


def test_mismatch_writes_nothing(tmp_path):
    path = tmp_path / "bad.pt2"
    with pytest.raises(ValueError, match=r"the exported artefact's output differs from the eager model's by 1 "
                                         r"\(> atol=0.0001\); nothing was written"):
        export_model(_EvalDiffers(), torch.zeros(2, 3), "exported", path)
    assert not list(tmp_path.iterdir())


def _checkpoint(tmp_path):
    from vision.module import ImageClassifier

    model = {"_target_": "vision.model.VisionTransformer", **MODEL,
             "attention": {"_target_": "core_attn.attention.local.LocalAttention", "_partial_": True, "window": 4}}
    module = ImageClassifier(model=model, optimizer={"_target_": "torch.optim.AdamW", "_partial_": True})
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return module, path


def test_vision_export_from_checkpoint(tmp_path):
    module, ckpt = _checkpoint(tmp_path)
    result = export(ckpt_path=str(ckpt), format="exported", batch_size=2, attention_backend="dense")
    assert result["path"] == str(ckpt.with_suffix(".pt2")) and result["input_shape"] == [2, 1, 32, 32]
    assert result["size_bytes"] == ckpt.with_suffix(".pt2").stat().st_size and result["quantize"] == "none"
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(result["path"], "exported")(x), module.net.eval()(x))


def test_vision_export_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=.*nope\.ckpt.*no such checkpoint file"):
        export(ckpt_path=str(tmp_path / "nope.ckpt"), format="exported")


@pytest.mark.slow
def test_vision_export_command_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    module, ckpt = _checkpoint(tmp_path)
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "model.pt2"
    proc = subprocess.run([sys.executable, "-m", "vision.export", f"ckpt_path={ckpt}", "format=exported", f"out={out}",
                           "attention_backend=dense", f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=root,
                          capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out} (exported, input [1, 1, 32, 32]" in proc.stdout
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(out, "exported")(x), module.net.eval()(x))


def rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|: what the int8 check bounds."""
    return ((got - want).abs().max() / want.abs().max()).item()


@needs_onnx
def test_vision_export_int8(tmp_path):
    module, ckpt = _checkpoint(tmp_path)
    result = export(ckpt_path=str(ckpt), format="onnx", batch_size=2, attention_backend="dense", quantize="int8")
    fp32, int8 = ckpt.with_suffix(".onnx"), ckpt.with_name("last.int8.onnx")
    assert result["path"] == str(fp32) and result["int8_path"] == str(int8) == str(int8_path(fp32))
    assert result["size_bytes"] == fp32.stat().st_size > result["int8_size_bytes"] == int8.stat().st_size
    assert result["max_abs_diff"] <= 1e-4 and result["int8_rel_diff"] <= INT8_TOL == result["int8_tolerance"]
    assert result["int8_max_abs_diff"] > 0 and 0 <= result["int8_top1_agreement"] <= 1
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(7))  # another batch than the check's
    with torch.no_grad():
        assert rel_diff(load_exported(int8, "onnx")(x), module.net.eval()(x)) <= INT8_TOL


def test_quantize_errors(tmp_path):
    net, x = torch.nn.Linear(3, 2).eval(), torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"quantize='int' is not allowed; expected one of \['none', 'int8'\]\. "
                                         r"Did you mean 'int8'\?"):
        export_artefact(net, x, "onnx", tmp_path / "a.onnx", quantize="int")
    with pytest.raises(ValueError, match=r"quantize='int8' needs format='onnx' \(got format='exported'\): the int8 "
                                         r"model is quantised and run by onnxruntime"):
        export_artefact(net, x, "exported", tmp_path / "a.pt2", quantize="int8")
    with pytest.raises(ValueError, match=r"int8_tolerance=-0.1 is out of range"):
        export_artefact(net, x, "onnx", tmp_path / "a.onnx", quantize="int8", int8_tolerance=-0.1)
    _, ckpt = _checkpoint(tmp_path)  # the app passes the key through
    with pytest.raises(ValueError, match=r"quantize='fp16' is not allowed; expected one of \['none', 'int8'\]"):
        export(ckpt_path=str(ckpt), format="onnx", quantize="fp16")
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoints"]


@needs_onnx
def test_int8_beyond_tolerance_writes_only_fp32(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(16, 4).eval()
    path = tmp_path / "a.onnx"
    with pytest.raises(ValueError, match=r"the int8 model differs from the eager model by .* of the output's largest "
                                         r"magnitude \(> int8_tolerance=0.0\); nothing was written to .*a\.int8\.onnx "
                                         r"\(the fp32 model .*a\.onnx was\)"):
        export_artefact(net, torch.randn(2, 16), "onnx", path, quantize="int8", int8_tolerance=0.0)
    assert [p.name for p in tmp_path.iterdir()] == ["a.onnx"]


@needs_onnx
@pytest.mark.slow
def test_vision_export_int8_command_line(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    module, ckpt = _checkpoint(tmp_path)
    root = Path(__file__).resolve().parents[2]
    out, run_dir = tmp_path / "model.onnx", tmp_path / "hydra"
    proc = subprocess.run([sys.executable, "-m", "vision.export", f"ckpt_path={ckpt}", "format=onnx", f"out={out}",
                           "attention_backend=dense", "quantize=int8", f"hydra.run.dir={run_dir}"], cwd=root,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {tmp_path / 'model.int8.onnx'} (int8, " in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["int8_size_bytes"] == (tmp_path / "model.int8.onnx").stat().st_size
    assert metrics["size_bytes"] == out.stat().st_size and metrics["int8_rel_diff"] <= INT8_TOL
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert rel_diff(load_exported(tmp_path / "model.int8.onnx", "onnx")(x), module.net.eval()(x)) <= INT8_TOL


@needs_onnx
def test_int8_benchmark_script(tmp_path):
    from tests.audio.conftest import bench_script

    bench = bench_script("int8_export")
    rows = bench.main(["genomics", *TINY_GENOMICS, "--repeats", "1",
                       "--json", str(tmp_path / "rows.json")])
    assert [r["model"] for r in rows] == ["fp32 eager (torch)", "int8 eager (torch quantize_dynamic)",
                                          "fp32 ONNX (onnxruntime)", "int8 ONNX (onnxruntime)"]
    assert rows[3]["size_mb"] < rows[2]["size_mb"] and rows[3]["rel_diff"] <= INT8_TOL
    assert (tmp_path / "rows.json").is_file()


@needs_onnx
def test_int8_benchmark_profile(tmp_path, capsys):
    """``--profile``: onnxruntime's time per operator type for both ONNX models; the int8 model's includes its
    quantised products, the fp32 model's none, and the bound line is printed."""
    from tests.audio.conftest import bench_script

    bench = bench_script("int8_export")
    rows = bench.main(["genomics", *TINY_GENOMICS, "--repeats", "2", "--profile"])
    ops = rows[-1]
    assert ops["model"] == "profile (ms per call by operator type)"
    fp32, int8 = ops["fp32 ONNX"], ops["int8 ONNX"]
    assert not set(fp32) & bench.QUANTISED_OPS and "DynamicQuantizeMatMul" in int8
    assert all(v >= 0 for v in [*fp32.values(), *int8.values()]) and sum(fp32.values()) > 0
    assert "even if those took no time it would be at most" in capsys.readouterr().out


@needs_onnx
def test_int8_export_keeps_the_onnx_tools_quiet(tmp_path, caplog):
    """Under a Hydra run (root logger at INFO) the exporter's optimizer passes and onnxruntime's quantiser would
    log ~150 INFO lines; the export keeps them out and leaves every logger's level as it was."""
    import logging

    caplog.set_level(logging.INFO)
    before = {name: logging.getLogger(name).level for name in ("", "onnxscript", "onnx_ir", "torch.onnx")}
    _, ckpt = _checkpoint(tmp_path)
    export(ckpt_path=str(ckpt), format="onnx", attention_backend="dense", quantize="int8")
    noisy = [r for r in caplog.records if r.name == "root" or r.name.split(".")[0] in ("onnxscript", "onnx_ir")]
    assert not noisy, [r.getMessage()[:100] for r in noisy[:3]]
    assert {name: logging.getLogger(name).level for name in before} == before
    assert not logging.getLogger().filters


@needs_onnx
def test_share_constants_merges_only_equal_initializers():
    """Same dtype, shape and values: one copy; a scalar and a one-element list, other dtypes or values, and an
    initializer that is a graph output stay as they are."""
    import numpy as np
    import onnx_ir as ir

    from core_attn.training.export import share_constants

    def const(name, array):
        return ir.Value(name=name, const_value=ir.tensor(np.asarray(array), name=name))

    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2]))
    consts = {"a": const("a", np.ones(2, np.float32)), "b": const("b", np.ones(2, np.float32)),
              "c": const("c", np.full(2, 2, np.float32)), "d": const("d", np.ones(2, np.float64)),
              "s": const("s", np.int64(1)), "l": const("l", np.array([1], np.int64)),
              "o": const("o", np.ones(2, np.float32))}
    nodes = [ir.node("Add", [x, consts[n]]) for n in "abc"]
    nodes += [ir.node("Cast", [consts["d"]], attributes={"to": 1}), ir.node("Gather", [x, consts["s"]]),
              ir.node("Gather", [x, consts["l"]])]
    graph = ir.Graph([x], [nodes[0].outputs[0], consts["o"]], nodes=nodes, initializers=list(consts.values()),
                     opset_imports={"": 20})
    assert share_constants(ir.Model(graph, ir_version=10)) == 1
    assert sorted(graph.initializers) == ["a", "c", "d", "l", "o", "s"]
    assert nodes[1].inputs[1] is consts["a"] and nodes[2].inputs[1] is consts["c"]
