"""``audio.export``: a checkpoint's network (features -> CTC log-probabilities) to exported/ONNX artefacts
matching eager, with a dynamic time dimension where the attention variant allows it, and the errors
naming the variant where it does not."""

from __future__ import annotations

import lightning
import pytest
import torch

from audio.export import export
from audio.module import SpeechRecognizer
from core_attn.training.export import load_exported
from tests.conftest import needs_onnx

LINEAR = {"_target_": "core_attn.attention.linear.LinearAttention", "_partial_": True}
LOCAL_GLOBAL = {"_target_": "core_attn.attention.local.LocalAttention", "_partial_": True, "window": 8,
                "global_tokens": [0]}  # the app's default shape: a window plus the first frame as a global token


def _checkpoint(tmp_path, attention: dict):
    """A freshly initialised SpeechRecognizer (tiny Conformer) saved as a Lightning checkpoint."""
    model = {"_target_": "audio.model.ConformerCTC", "vocab_size": 29,
             "features": {"_target_": "audio.features.LogMelFeatures"},
             "encoder": {"_target_": "audio.model.ConformerEncoder", "in_features": 80, "dim": 16, "depth": 1,
                         "num_heads": 2, "subsampling": 4, "subsampling_channels": 4, "dropout": 0.0,
                         "conv_kernel": 5, "attention": attention}}
    module = SpeechRecognizer(model=model, optimizer={"_target_": "torch.optim.AdamW", "_partial_": True})
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return module.net.eval(), path


def _feats(t: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(1, t, 80, generator=torch.Generator().manual_seed(seed))


def test_log_probs_is_the_unpadded_forward():
    from audio.features import LogMelFeatures
    from audio.model import ConformerCTC, ConformerEncoder
    from core_attn.attention.local import LocalAttention

    # dense; and local with a window wider than the 13 subsampled frames, which pads them with masked frames
    for attention in (None, LocalAttention(window=16, global_tokens=[0])):
        enc = ConformerEncoder(in_features=80, dim=16, depth=1, num_heads=2, subsampling_channels=4, dropout=0.0,
                               conv_kernel=5, attention=attention)
        net = ConformerCTC(features=LogMelFeatures(), encoder=enc).eval()
        x = _feats(50)
        with torch.no_grad():
            ref, n = net.forward_features(x, torch.tensor([50]))
            torch.testing.assert_close(net.log_probs(x), ref, atol=1e-5, rtol=0)
        assert ref.shape[1] == int(n[0]) == 13


def test_dynamic_time_exports_and_matches_eager(tmp_path):
    net, ckpt = _checkpoint(tmp_path, LINEAR)
    result = export(ckpt_path=str(ckpt), format="exported", frames=100, dynamic_time=True)
    assert result["path"] == str(ckpt.with_suffix(".pt2")) and result["input_shape"] == [1, 100, 80]
    assert result["checked_frames"] == [100, 157] and result["max_abs_diff"] <= 1e-4
    run = load_exported(result["path"], "exported")
    for t in (40, 333):  # lengths neither check used
        x = _feats(t)
        with torch.no_grad():
            want = net.log_probs(x)
            torch.testing.assert_close(run(x), want, atol=1e-4, rtol=1e-4)
        assert want.shape == (1, (t - 1) // 4 + 1, 29)


@needs_onnx
@pytest.mark.slow  # ~9 s: symbolic tracing plus the ONNX passes
def test_dynamic_time_onnx(tmp_path):
    net, ckpt = _checkpoint(tmp_path, LINEAR)
    out = tmp_path / "asr.onnx"
    result = export(ckpt_path=str(ckpt), format="onnx", out=str(out), frames=64, dynamic_time=True)
    assert result["max_abs_diff"] <= 1e-4
    x = _feats(250)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(out, "onnx")(x), net.log_probs(x), atol=1e-4, rtol=1e-4)


@needs_onnx
def test_int8_onnx_matches_eager(tmp_path):
    net, ckpt = _checkpoint(tmp_path, LOCAL_GLOBAL)
    out = tmp_path / "asr.onnx"
    result = export(ckpt_path=str(ckpt), format="onnx", out=str(out), frames=100, attention_backend="dense",
                    quantize="int8")
    int8 = tmp_path / "asr.int8.onnx"
    assert result["int8_path"] == str(int8) and result["int8_size_bytes"] == int8.stat().st_size
    assert result["size_bytes"] == out.stat().st_size > result["int8_size_bytes"]
    assert result["int8_rel_diff"] <= 0.05 == result["int8_tolerance"]  # of the log-probabilities' largest magnitude
    x = _feats(100, seed=8)
    with torch.no_grad():
        want = net.log_probs(x)
        got = load_exported(int8, "onnx")(x)
    assert got.shape == want.shape and ((got - want).abs().max() / want.abs().max()).item() <= 0.05


def test_default_local_exports_at_fixed_length_with_dense_backend(tmp_path):
    net, ckpt = _checkpoint(tmp_path, LOCAL_GLOBAL)
    result = export(ckpt_path=str(ckpt), format="exported", frames=120, attention_backend="dense")
    assert result["checked_frames"] == [120] and not result["dynamic_time"] and result["max_abs_diff"] <= 1e-4
    x = _feats(120, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(result["path"], "exported")(x), net.log_probs(x), atol=1e-4,
                                   rtol=1e-4)


def test_blocked_kernel_exports(tmp_path):
    net, ckpt = _checkpoint(tmp_path, LOCAL_GLOBAL)
    result = export(ckpt_path=str(ckpt), format="exported", frames=100)  # the block-sparse kernel, fixed length
    assert result["max_abs_diff"] <= 1e-4
    x = _feats(100, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(result["path"], "exported")(x), net.log_probs(x), atol=1e-4,
                                   rtol=1e-4)


def test_pattern_cached_per_length_cannot_be_dynamic(tmp_path):
    _, ckpt = _checkpoint(tmp_path, LOCAL_GLOBAL)
    with pytest.raises(ValueError, match=r"format='exported' cannot trace this model with dynamic dimensions \[1\]: "
                                         r"attention 'local' \(backend='dense'\) builds its sparsity pattern for one "
                                         r"sequence length N and caches pieces of it by N .*export at a fixed length"):
        export(ckpt_path=str(ckpt), format="exported", frames=100, dynamic_time=True, attention_backend="dense")


def test_errors(tmp_path):
    _, ckpt = _checkpoint(tmp_path, LINEAR)
    with pytest.raises(ValueError, match=r"dynamic_time=true needs format='exported' or format='onnx' "
                                         r"\(torch\.jit\.trace records one length\)"):
        export(ckpt_path=str(ckpt), format="torchscript", dynamic_time=True)
    with pytest.raises(ValueError, match=r"frames=4 is out of range; expected 8 <= frames"):
        export(ckpt_path=str(ckpt), format="exported", frames=4)
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=.*nope\.ckpt.*no such checkpoint file"):
        export(ckpt_path=str(tmp_path / "nope.ckpt"), format="exported")


def test_torchscript_fixed_length(tmp_path):
    net, ckpt = _checkpoint(tmp_path, LINEAR)
    result = export(ckpt_path=str(ckpt), format="torchscript", frames=80)
    x = _feats(80, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(result["path"], "torchscript")(x), net.log_probs(x), atol=1e-4,
                                   rtol=1e-4)


@pytest.mark.slow
def test_audio_export_command_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    net, ckpt = _checkpoint(tmp_path, LINEAR)
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "asr.pt2"
    proc = subprocess.run([sys.executable, "-m", "audio.export", f"ckpt_path={ckpt}", f"out={out}", "frames=100",
                           "dynamic_time=true", f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=root, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out} (exported, input (B=1, T=dynamic, F=80), checked at T=[100, 157]" in proc.stdout
    x = _feats(61)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(out, "exported")(x), net.log_probs(x), atol=1e-4, rtol=1e-4)


@needs_onnx
def test_int8_benchmark_transcribes_a_manifest_with_both_models(tmp_path):
    import json

    import numpy as np
    import soundfile as sf

    from tests.audio.conftest import bench_script

    _, ckpt = _checkpoint(tmp_path, {"_target_": "core_attn.attention.local.LocalAttention", "_partial_": True,
                                     "window": 8})
    rng = np.random.default_rng(0)
    for name, seconds in (("a.wav", 0.7), ("b.wav", 1.3)):  # two lengths: the artefact's time axis is dynamic
        sf.write(tmp_path / name, (0.1 * rng.standard_normal(int(16000 * seconds))).astype("float32"), 16000)
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps({"audio": n, "text": "Hello there"}) + "\n" for n in ("a.wav", "b.wav")))
    rows = bench_script("int8_export").main(["audio", "--ckpt", str(ckpt), "--test-manifest", str(manifest),
                                             "--repeats", "1"])
    speech = rows[-1]
    assert speech["model"] == "test manifest" and speech["clips"] == 2
    assert speech["frames"] > 100 and 0 <= speech["fp32_cer"] and 0 <= speech["int8_padded_cer"] and 0 <= speech["same_text"] <= 1
