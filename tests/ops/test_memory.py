"""Memory switches of big runs: ``activation_offloading`` (saved tensors in CPU memory) and
``gradient_checkpointing`` where it is wired per app (the audio encoder's here; the shared
TransformerEncoder's is tested in tests/core_attn/test_layers.py)."""

from __future__ import annotations

import copy
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from torch.autograd.graph import save_on_cpu

import core_attn.training.offload as offload
from audio.model import ConformerEncoder
from core_attn.attention.local import LocalAttention
from core_attn.training import train
from core_attn.training.offload import ActivationOffloading, offloading_callbacks
from genomics.synthetic import write_genome
from tests.training.tiny import compose_config
from vision.model import VisionTransformer

APPS = ("vision", "audio", "genomics")
CPU_TRAINER = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))


class CountingSaveOnCpu(save_on_cpu):
    """``save_on_cpu`` that counts the tensors it packs (the proof that the hooks were active)."""

    packed = 0

    def __init__(self, pin_memory: bool = False, device_type: str = "cuda"):
        super().__init__(pin_memory, device_type)
        pack = self.pack_hook

        def counted(tensor):
            CountingSaveOnCpu.packed += 1
            return pack(tensor)

        self.pack_hook = counted


@pytest.fixture
def counting(monkeypatch):
    CountingSaveOnCpu.packed = 0
    monkeypatch.setattr(offload, "save_on_cpu", CountingSaveOnCpu)
    return CountingSaveOnCpu


def _grads(net, x, y, callback=None):
    net.zero_grad()
    if callback is not None:
        callback.on_train_batch_start(CPU_TRAINER, None, None, 0)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    if callback is not None:
        callback.on_before_backward(CPU_TRAINER, None, loss)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_offloaded_step_equals_plain_step(counting, checkpointing):
    net = VisionTransformer(img_size=32, in_chans=1, num_classes=3, patch_size=4, dim=16, depth=2, num_heads=2,
                            attention=partial(LocalAttention, window=4), gradient_checkpointing=checkpointing).train()
    x, y = torch.randn(2, 1, 32, 32), torch.tensor([0, 2])
    loss, grads = _grads(net, x, y)
    assert counting.packed == 0
    loss_off, grads_off = _grads(net, x, y, ActivationOffloading())
    assert counting.packed > 0  # the forward's saved tensors went through save_on_cpu's pack hook
    assert torch.equal(loss, loss_off)
    assert grads.keys() == grads_off.keys() and all(torch.equal(grads[k], grads_off[k]) for k in grads)
    packed = counting.packed
    _grads(net, x, y)  # the hooks were left at on_before_backward: a later plain step packs nothing
    assert counting.packed == packed


def test_hooks_are_left_after_a_step_without_backward(counting):
    cb = ActivationOffloading()
    cb.on_train_batch_start(CPU_TRAINER, None, None, 0)
    cb.on_train_batch_end(CPU_TRAINER, None, None, None, 0)  # training_step returned None: no backward
    w = torch.randn(3, requires_grad=True)
    (w * w).sum()
    assert counting.packed == 0
    cb.on_train_batch_start(CPU_TRAINER, None, None, 1)
    cb.on_exception(CPU_TRAINER, None, RuntimeError("boom"))
    (w * w).sum()
    assert counting.packed == 0


def test_switch_values():
    assert offloading_callbacks(False) == []
    assert [type(c) for c in offloading_callbacks(True)] == [ActivationOffloading]
    with pytest.raises(ValueError, match=r"activation_offloading='yes' must be true or false"):
        offloading_callbacks("yes")


@pytest.mark.parametrize("app", APPS)
def test_primary_configs_have_the_switches(app, tmp_path):
    cfg = compose_config(app, [], tmp_path)
    assert cfg.activation_offloading is False and cfg.gradient_checkpointing is False
    cfg = compose_config(app, ["activation_offloading=true", "gradient_checkpointing=true"], tmp_path)
    assert cfg.activation_offloading is True
    model = cfg.model.encoder if app == "audio" else cfg.model
    assert model.gradient_checkpointing is True  # the model really receives the checkpointing switch


# -- a real run -------------------------------------------------------------------------------------
LM = ["model.dim=16", "model.depth=2", "model.num_heads=2", "data.window=128", "data.batch_size=2",
      "data.train_samples=6", "attention.window=16", "data.markov_max_order=2", "trainer=fast",
      "trainer.max_epochs=1", "test=false",
      "extras.print_config=false", "callbacks.rich_progress_bar=null", "logger=csv"]


def test_genomics_run_with_offloading_equals_plain_run(counting, tmp_path):
    genome = write_genome(tmp_path / "g.gbk", length=12_000, seed=1)
    runs = {}
    for on in (False, True):
        out = tmp_path / f"offload_{on}"
        cfg = compose_config("genomics", [*LM, "data.dataset=path", f"data.path={genome}",
                                          f"paths.data_dir={tmp_path / 'data'}", f"activation_offloading={on}"], out)
        before = counting.packed
        metrics = train(cfg)
        assert metrics["status"] == "ok" and metrics["steps"] == 3
        assert (counting.packed > before) == on  # only the switched-on run saved through the hooks
        ckpt = torch.load(metrics["last_ckpt"], map_location="cpu", weights_only=False)
        runs[on] = (metrics["final"]["train/loss_epoch"], metrics["final"]["val/bpb"], ckpt["state_dict"])
    assert runs[True][:2] == runs[False][:2]
    assert all(torch.equal(runs[True][2][k], v) for k, v in runs[False][2].items())


# -- audio's gradient checkpointing -----------------------------------------------------------------
def test_audio_encoder_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    plain = ConformerEncoder(in_features=16, dim=16, depth=2, num_heads=2, subsampling_channels=4, conv_kernel=3,
                             dropout=0.1, attention=partial(LocalAttention, window=4)).train()
    ckpt = copy.deepcopy(plain)
    ckpt.gradient_checkpointing = True
    calls = []
    ckpt.blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))  # (recomputation may stop early)
    feats, lengths = torch.randn(2, 64, 16), torch.tensor([64, 40])
    out = {}
    for name, enc in (("plain", plain), ("ckpt", ckpt)):
        torch.manual_seed(1)  # the same dropout masks; checkpoint replays them in the recomputation
        y, _ = enc(feats, lengths)
        y.square().sum().backward()
        out[name] = (y.detach(), {n: p.grad for n, p in enc.named_parameters()})
    assert len(calls) == 2  # forward + recomputation in backward: checkpointing really ran
    assert torch.equal(out["plain"][0], out["ckpt"][0])
    for n, g in out["plain"][1].items():
        torch.testing.assert_close(out["ckpt"][1][n], g, rtol=0, atol=1e-6, msg=n)
