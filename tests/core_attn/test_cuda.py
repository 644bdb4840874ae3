"""Every variant and backend on a CUDA device against the CPU: outputs and gradients, with padding.

Skipped where torch sees no GPU (CI and the 2-core machine have none); run on a GPU machine with
``python -m pytest tests/core_attn/test_cuda.py``. On CUDA ``backend="auto"`` picks FlexAttention, the only
place the ``flex`` backward runs (torch has no CPU backward for it), so these tests are its only check.
"""

import copy

import pytest
import torch

import core_attn
from core_attn.attention.base import PatternAttention
from core_attn.layers import MultiheadAttention, TransformerEncoder
from core_attn.reference import reference_attention
from tests.core_attn.variants import SETTINGS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
ALL_CASES = [
    pytest.param(name, kw, min_n, id=f"{name}-{i}")
    for name in core_attn.list_attention()
    for i, (kw, min_n) in enumerate(SETTINGS.get(name, []))
]
PATTERN_CASES = [p for p in ALL_CASES if issubclass(core_attn.get_attention_class(p.values[0]), PatternAttention)]


@pytest.fixture(autouse=True)
def _ieee_fp32():
    """Full fp32 matmuls on the GPU (no TF32), so fp32 results compare to the CPU at fp32 tolerances."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _inputs(b, h, n, d, padded, dtype=torch.float32):
    q, k, v = (torch.randn(b, h, n, d, dtype=dtype) for _ in range(3))
    kpm = None
    if padded:
        kpm = torch.zeros(b, n, dtype=torch.bool)
        kpm[-1, n - max(1, n // 5):] = True
    return q, k, v, kpm


def _run(attn, q, k, v, kpm, g, device):
    """Output and (q, k, v) gradients of ``attn`` on ``device``, returned on the CPU."""
    q, k, v = (t.to(device).requires_grad_(True) for t in (q, k, v))
    out = attn(q, k, v, key_padding_mask=None if kpm is None else kpm.to(device))
    grads = torch.autograd.grad(out, (q, k, v), g.to(device, out.dtype))
    return [t.detach().cpu() for t in (out, *grads)]


@pytest.mark.parametrize("backend", ["flex", "blocked", "dense"])
@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("name,kw,min_n", PATTERN_CASES)
def test_pattern_variant_on_cuda_equals_the_cpu_reference(name, kw, min_n, padded, backend):
    attn = core_attn.build_attention(name, backend=backend, **kw).to(CUDA)
    # one length not a multiple of any block size, one that is (flex: one of them, each compiles a kernel)
    for n in ((61,) if padded else (128,)) if backend == "flex" else (61, 128):
        q, k, v, kpm = _inputs(2, 3, n, 16, padded)
        g = torch.randn(2, 3, n, 16)
        # the oracle: fp64 reference attention with the pattern's exact mask, on the CPU
        ref = _run(lambda *a, key_padding_mask: reference_attention(*a, mask=attn.dense_mask(n),
                                                                     key_padding_mask=key_padding_mask),
                   q.double(), k.double(), v.double(), kpm, g.double(), "cpu")
        got = _run(attn, q, k, v, kpm, g, CUDA)
        for a, r in zip(got, ref):
            torch.testing.assert_close(a, r.float(), atol=2e-5, rtol=1e-4)


def test_auto_on_cuda_picks_flex_dense_or_blocked():
    attn = core_attn.build_attention("local", window=16).to(CUDA)
    n = attn.AUTO_DENSE_MAX_N_CUDA + 100
    q = torch.randn(1, 2, n, 16, device=CUDA, requires_grad=True)
    assert attn.select_backend(q, q, q) == "flex"  # longer than dense's CUDA limit, sparse (density 0.03)
    with torch.no_grad():
        assert attn.select_backend(q, q, q) == "flex"
    for m in (24, 256):  # short: dense (24: window 16 covers most; 256: sparse but short)
        short = torch.randn(1, 2, m, 16, device=CUDA)
        assert attn.select_backend(short, short, short) == "dense"
    narrow = torch.randn(1, 2, n, 8, device=CUDA)  # FlexAttention's CUDA kernels need head_dim >= 16
    assert attn.select_backend(narrow, narrow, narrow) == "blocked"
    with pytest.raises(ValueError, match="head_dim >= 16; got 8"):
        core_attn.build_attention("local", window=16, backend="flex")(narrow, narrow, narrow)


def test_flex_under_activation_offloading_with_packed_qkv():
    """Offloading (save_on_cpu) hands the backward contiguous copies of saved tensors; the compiled flex
    backward must not depend on q/k/v's strides (they are views of one qkv projection in the layers)."""
    mha = MultiheadAttention(64, 4, attention=core_attn.build_attention("local", window=8, backend="flex")).to(CUDA)
    x = torch.randn(2, 300, 64, device=CUDA)
    grads = []
    for offload in (False, True):
        mha.zero_grad()
        if offload:
            with torch.autograd.graph.save_on_cpu(pin_memory=True):
                out = mha(x)
        else:
            out = mha(x)
        out.square().mean().backward()
        grads.append(mha.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("name,kw,min_n", [p for p in ALL_CASES if p not in PATTERN_CASES])
def test_approximate_variant_on_cuda_equals_the_same_module_on_cpu(name, kw, min_n):
    """Kernel and low-rank variants: the same weights and inputs give the same result on both devices (their
    random features and rotations are drawn from seeded CPU generators, so they agree too)."""
    cpu = core_attn.build_attention(name, **kw)
    gpu = copy.deepcopy(cpu).to(CUDA)
    n = max(min_n, 64)
    h, d = (kw["num_heads"], kw["head_dim"]) if name == "perceiver" else (kw.get("num_heads", 3), 16)
    q, k, v, kpm = _inputs(2, h, n, d, padded=True)
    g = torch.randn(2, h, n, d)
    for a, r in zip(_run(gpu, q, k, v, kpm, g, CUDA), _run(cpu, q, k, v, kpm, g, "cpu")):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-3)
    # parameter gradients (perceiver's latents, linformer's projections) as well
    for mod, dev in ((cpu, "cpu"), (gpu, CUDA)):
        mod.zero_grad()
        qd, kd, vd = (t.to(dev) for t in (q, k, v))
        mod(qd, kd, vd, key_padding_mask=kpm.to(dev)).mul(g.to(dev)).sum().backward()
    for (pn, pc), (_, pg) in zip(cpu.named_parameters(), gpu.named_parameters()):
        torch.testing.assert_close(pg.grad.cpu(), pc.grad, atol=1e-4, rtol=1e-3, msg=f"{name}.{pn}.grad")


@pytest.mark.parametrize("name", ["local", "bigbird"])
def test_bf16_autocast_on_cuda_is_close_to_fp32(name):
    kw = {"window": 32} if name == "local" else {"block_size": 32}
    attn = core_attn.build_attention(name, **kw).to(CUDA)
    q, k, v = (torch.randn(2, 4, 512, 64, device=CUDA) for _ in range(3))
    ref = attn(q, k, v)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = attn(q, k, v)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("name,kw", [("dense", {}), ("local", {"window": 8}), ("bigbird", {"block_size": 8}),
                                     ("linear", {}), ("lsh", {"bucket_size": 8, "n_hashes": 2})])
def test_encoder_trains_on_cuda_like_on_cpu(name, kw):
    """A whole encoder (projections, rotary positions, padding): the loss and every parameter gradient on
    CUDA equal the CPU's."""
    torch.manual_seed(0)
    cpu = TransformerEncoder(32, 2, 4, attention=core_attn.build_attention(name, **kw), positions="rotary")
    gpu = copy.deepcopy(cpu).to(CUDA)
    x = torch.randn(2, 80, 32)
    kpm = torch.zeros(2, 80, dtype=torch.bool)
    kpm[1, 60:] = True
    losses = []
    for mod, dev in ((cpu, "cpu"), (gpu, CUDA)):
        out = mod(x.to(dev), key_padding_mask=kpm.to(dev))
        loss = out[~kpm.to(dev)].square().mean()
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    for (pn, pc), (_, pg) in zip(cpu.named_parameters(), gpu.named_parameters()):
        torch.testing.assert_close(pg.grad.cpu(), pc.grad, atol=1e-4, rtol=1e-3, msg=f"{pn}.grad")


def test_mha_packed_qkv_on_cuda():
    mha = MultiheadAttention(64, 4, attention=core_attn.build_attention("local", window=8)).to(CUDA)
    x = torch.randn(2, 200, 64, device=CUDA, requires_grad=True)
    out = mha(x)
    out.sum().backward()
    assert out.shape == x.shape and torch.isfinite(x.grad).all()
