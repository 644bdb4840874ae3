"""Pattern variants are exact: output and input gradients equal dense attention with dense_mask(n)."""

import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import core_attn
from core_attn.reference import reference_attention
from tests.core_attn.variants import PATTERN_CASES



def _grads(out, inputs, g, retain_graph=False):
    return torch.autograd.grad(out, inputs, g, retain_graph=retain_graph)


def _check(attn, b, h, n, d, padded, dtype=torch.float32, atol=1e-5):
    q, k, v = (torch.randn(b, h, n, d, dtype=dtype, requires_grad=True) for _ in range(3))
    kpm = None
    if padded:
        kpm = torch.zeros(b, n, dtype=torch.bool)
        kpm[-1, n - max(1, n // 5):] = True
    out = attn(q, k, v, key_padding_mask=kpm)
    mask = attn.dense_mask(n)
    if kpm is None:  # the acceptance oracle: torch SDPA with the dense mask
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:  # rows that see only padding are zeros by contract (SDPA gives NaN there)
        ref = reference_attention(q, k, v, mask=mask, key_padding_mask=kpm)
    g = torch.randn_like(out)
    torch.testing.assert_close(out, ref, atol=atol, rtol=1e-4)
    for a, r in zip(_grads(out, (q, k, v), g), _grads(ref, (q, k, v), g)):
        torch.testing.assert_close(a, r, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("backend", ["blocked", "dense"])
@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("name,kw", PATTERN_CASES)
def test_pattern_variant_exact(name, kw, padded, backend):
    attn = core_attn.build_attention(name, backend=backend, **kw)
    for n in (61, 96):  # one length not a multiple of any block size, one that is
        _check(attn, b=2, h=3, n=n, d=8, padded=padded)


@pytest.mark.parametrize("name,kw", PATTERN_CASES[:1] + [p for p in PATTERN_CASES if "bigbird" in p.id][:1])
def test_dense_backend_matches_blocked(name, kw):
    q, k, v = (torch.randn(1, 2, 70, 8) for _ in range(3))
    blocked = core_attn.build_attention(name, backend="blocked", **kw)(q, k, v)
    dense = core_attn.build_attention(name, backend="dense", **kw)(q, k, v)
    torch.testing.assert_close(blocked, dense, atol=1e-5, rtol=1e-4)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(8, 150),
    window=st.integers(1, 40),
    dilation=st.integers(1, 3),
    causal=st.booleans(),
    block=st.sampled_from([8, 16, 32]),
    n_global=st.integers(0, 3),
    pad=st.integers(0, 7),
    b=st.integers(1, 2),
    h=st.integers(1, 3),
)
def test_local_exact_property(n, window, dilation, causal, block, n_global, pad, b, h):
    window = min(window, n // dilation)
    globals_ = [0, n - 1, n // 2][:n_global]
    attn = core_attn.build_attention("local", window=window, dilation=dilation, causal=causal,
                                     global_tokens=globals_, block_size=block, backend="blocked")
    q, k, v = (torch.randn(b, h, n, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    kpm = torch.zeros(b, n, dtype=torch.bool)
    kpm[0, n - min(pad, n - 1):] = pad > 0
    out = attn(q, k, v, key_padding_mask=kpm)
    ref = reference_attention(q, k, v, mask=attn.dense_mask(n), key_padding_mask=kpm)
    torch.testing.assert_close(out, ref, atol=1e-9, rtol=1e-7)
    g = torch.randn_like(out)
    for a, r in zip(_grads(out, (q, k, v), g), _grads(ref, (q, k, v), g)):
        torch.testing.assert_close(a, r, atol=1e-9, rtol=1e-7)


@settings(max_examples=15, deadline=None)
@given(nb=st.integers(5, 14), bs=st.sampled_from([2, 4, 8]), extra=st.integers(0, 7), r=st.integers(0, 3),
       g=st.integers(0, 2), causal=st.booleans(), seed=st.integers(0, 3))
def test_bigbird_exact_property(nb, bs, extra, r, g, causal, seed):
    n = nb * bs + min(extra, bs - 1)
    attn = core_attn.build_attention("bigbird", block_size=bs, num_window_blocks=3, num_global_blocks=g,
                                     num_random_blocks=r, seed=seed, causal=causal, backend="blocked")
    q, k, v = (torch.randn(1, 2, n, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = attn(q, k, v)
    ref = reference_attention(q, k, v, mask=attn.dense_mask(n))
    torch.testing.assert_close(out, ref, atol=1e-9, rtol=1e-7)
    gq = torch.autograd.grad(out.sum(), q)[0]
    torch.testing.assert_close(gq, torch.autograd.grad(ref.sum(), q)[0], atol=1e-9, rtol=1e-7)


def test_bigbird_random_blocks_fixed_by_seed():
    a = core_attn.build_attention("bigbird", block_size=4, seed=1)
    m1 = a.dense_mask(64)
    a.train()
    m_train = a.dense_mask(64)
    a.eval()
    assert torch.equal(m1, m_train) and torch.equal(m1, a.dense_mask(64))
    assert torch.equal(m1, core_attn.build_attention("bigbird", block_size=4, seed=1).dense_mask(64))
    assert not torch.equal(m1, core_attn.build_attention("bigbird", block_size=4, seed=2).dense_mask(64))
    q, k, v = (torch.randn(1, 1, 64, 4) for _ in range(3))
    a.train()
    o_train = a(q, k, v)
    a.eval()
    torch.testing.assert_close(o_train, a(q, k, v))


def test_bf16_autocast_blocked():
    attn = core_attn.build_attention("local", window=8, backend="blocked")
    q, k, v = (torch.randn(1, 2, 64, 16, requires_grad=True) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(q, k, v)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.float32
    ref = reference_attention(q, k, v, mask=attn.dense_mask(64))
    assert (out.float() - ref).abs().max() < 0.05


def test_flex_backend_refuses_cpu_training_with_reasons():
    attn = core_attn.build_attention("local", window=8, backend="flex")
    q, k, v = (torch.randn(1, 1, 32, 8, requires_grad=True) for _ in range(3))
    with pytest.raises(ValueError, match=r"backend='flex' cannot run this input \(blocked: usable; dense: usable; "
                                         r"native: needs head dimensions that are multiples of 16 \(got 8, 8\); "
                                         r"flex: FlexAttention has no CPU backward"):
        attn(q, k, v)


def test_auto_on_cpu_is_dense_for_dense_patterns_and_blocked_otherwise():
    attn = core_attn.build_attention("local", window=8)
    choice = {}
    for n in (12, 16, 64, 256):
        q = torch.randn(1, 1, n, 8)
        choice[n] = attn.select_backend(q, q, q)
    assert attn.density(16) >= attn.AUTO_DENSE_MIN_DENSITY_SMALL_HEADS > attn.density(64)  # heads of 8 channels
    assert choice == {12: "dense", 16: "dense", 64: "blocked", 256: "blocked"}
    wide_heads = [attn.select_backend(*(torch.randn(1, 1, 32, 64),) * 3), attn.select_backend(*(torch.randn(1, 1, 32, 8),) * 3)]
    assert attn.AUTO_DENSE_MIN_DENSITY > attn.density(32) >= attn.AUTO_DENSE_MIN_DENSITY_SMALL_HEADS
    from core_attn import native

    assert wide_heads == ["native" if native.library() is not None else "blocked", "dense"]  # fp32, heads of 64
    assert [k for k in attn._parts_cache if k[0] == "dense"] == []  # choosing kept decisions, not N x N masks
    wide = core_attn.build_attention("local", window=4096)  # a dense pattern, but past AUTO_DENSE_MAX_N
    q = torch.randn(1, 1, wide.AUTO_DENSE_MAX_N + 8, 8)
    assert wide.select_backend(q, q, q) == "blocked"


@pytest.mark.parametrize("variant,kw", [("local", {"window": 8, "global_tokens": [0]}),
                                        ("bigbird", {"block_size": 4, "num_random_blocks": 1})])
def test_auto_short_input_matches_blocked_with_gradients(variant, kw):
    auto, blocked = (core_attn.build_attention(variant, backend=b, **kw) for b in ("auto", "blocked"))
    blocked.load_state_dict(auto.state_dict())
    n = 24
    q, k, v = (torch.randn(2, 2, n, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    pad = torch.zeros(2, n, dtype=torch.bool)
    pad[1, 17:] = True
    assert auto.select_backend(q, k, v) == "dense" and blocked.select_backend(q, k, v) == "blocked"
    grads = []
    for attn in (auto, blocked):
        out = attn(q, k, v, key_padding_mask=pad)
        grads.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v))))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_flex_backend_matches_blocked_forward():
    attn_flex = core_attn.build_attention("bigbird", block_size=16, backend="flex")
    attn_blk = core_attn.build_attention("bigbird", block_size=16, backend="blocked")
    q, k, v = (torch.randn(1, 2, 256, 16) for _ in range(3))
    with torch.no_grad():
        torch.testing.assert_close(attn_flex(q, k, v), attn_blk(q, k, v), atol=1e-5, rtol=1e-4)


def test_window_larger_than_sequence():
    attn = core_attn.build_attention("local", window=64)
    q = torch.randn(1, 1, 32, 8)
    with pytest.raises(ValueError, match=r"window=64 \(x dilation=1\) is larger than the sequence length N=32"):
        attn(q, q, q)


def test_bigbird_too_short():
    attn = core_attn.build_attention("bigbird", block_size=64)
    q = torch.randn(1, 1, 100, 8)
    with pytest.raises(ValueError, match=r"sequence length N=100 is too short for bigbird.*need N >= 320"):
        attn(q, q, q)


def test_mismatched_shapes():
    attn = core_attn.build_attention("local", window=4)
    q = torch.randn(1, 2, 32, 8)
    with pytest.raises(ValueError, match=r"mismatched shapes: q \(1, 2, 32, 8\), k \(1, 3, 32, 8\)"):
        attn(q, torch.randn(1, 3, 32, 8), torch.randn(1, 3, 32, 8))
    with pytest.raises(ValueError, match=r"q must have shape \(B, H, N, D\); got \(2, 32, 8\)"):
        attn(q[0], q[0], q[0])
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, N\) = \(1, 32\); got \(1, 31\)"):
        attn(q, q, q, key_padding_mask=torch.zeros(1, 31, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"self-attention: q has N=32 but k has N=16"):
        attn(q, q[:, :, :16], q[:, :, :16])


# The kernel's execution modes: chunks that split one head's blocks, chunks of several whole heads, and
# the backward that recomputes probabilities (instead of keeping them) must all give the same answer.
KERNEL_MODES = {
    "split-chunks": dict(CHUNK_ELEMENTS=1 << 11, SAVED_PROBS_BYTES=512 << 20),
    "head-chunks": dict(CHUNK_ELEMENTS=1 << 16, SAVED_PROBS_BYTES=512 << 20),
    "recompute": dict(CHUNK_ELEMENTS=1 << 16, SAVED_PROBS_BYTES=0, SAVED_PROBS_SHARE=0),
}


FIRST_CASES = [p for i, p in enumerate(PATTERN_CASES) if p.values[0] not in [q.values[0] for q in PATTERN_CASES[:i]]]


@pytest.mark.parametrize("mode", list(KERNEL_MODES))
@pytest.mark.parametrize("name,kw", FIRST_CASES)
def test_pattern_variant_exact_in_every_kernel_mode(name, kw, mode, monkeypatch):
    from core_attn import kernels

    for key, value in KERNEL_MODES[mode].items():
        monkeypatch.setattr(kernels, key, value)
    attn = core_attn.build_attention(name, backend="blocked", **kw)
    _check(attn, b=2, h=3, n=96, d=8, padded=True)


@pytest.mark.parametrize("name", ["lsh", "perceiver"])
def test_kernel_modes_agree_for_data_dependent_plans(name, monkeypatch):
    from core_attn import kernels

    torch.manual_seed(0)
    kw = {"bucket_size": 8} if name == "lsh" else {"num_latents": 8, "num_heads": 2, "head_dim": 8}
    attn = core_attn.build_attention(name, **kw)
    q, k, v = (torch.randn(2, 2, 64, 8, requires_grad=True) for _ in range(3))
    kpm = torch.zeros(2, 64, dtype=torch.bool)
    kpm[1, 50:] = True
    g = torch.randn(2, 2, 64, 8)
    results = []
    for mode in KERNEL_MODES.values():
        for key, value in mode.items():
            monkeypatch.setattr(kernels, key, value)
        out = attn(q, k, v, key_padding_mask=kpm)
        results.append((out, *_grads(out, (q, k, v), g)))
    for other in results[1:]:
        for a, r in zip(results[0], other):
            torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,kw", [("local", {"window": 5}), ("bigbird", {"block_size": 8}),
                                     ("sparse_strided", {"stride": 8})])
def test_masks_kept_across_calls_give_the_same_results(name, kw, monkeypatch):
    """A plan keeps its hidden-pair masks for later calls (within MASK_CACHE_BYTES); calls served from
    that cache are exact; inputs with key padding neither use nor fill it."""
    from core_attn import kernels

    attn = core_attn.build_attention(name, backend="blocked", **kw)
    n = 72
    _check(attn, b=2, h=3, n=n, d=8, padded=True)
    parts = attn.parts(n, torch.device("cpu"))
    assert all(not p.mask_cache for p in parts), "key padding masks must not be kept"
    _check(attn, b=2, h=3, n=n, d=8, padded=False)  # fills the cache
    kept = [dict(p.mask_cache) for p in parts]
    assert any(kept)
    _check(attn, b=1, h=2, n=n, d=8, padded=False)  # served from it (other batch and heads)
    assert [dict(p.mask_cache) for p in parts] == kept
    _check(attn, b=2, h=3, n=n, d=8, padded=True)

    monkeypatch.setattr(kernels, "MASK_CACHE_BYTES", 0)
    fresh = core_attn.build_attention(name, backend="blocked", **kw)
    _check(fresh, b=2, h=3, n=n, d=8, padded=False)
    assert all(p.mask_cache.get("bytes", 0) == 0 for p in fresh.parts(n, torch.device("cpu")))


def test_workspace_buffers_are_reused_and_never_handed_out_while_referenced(monkeypatch):
    """Scratch buffers (saved probabilities, padded K/V, score chunks) come from a workspace: a second
    identical call allocates nothing new; a buffer a live graph still holds (retain_graph) is never
    handed to another call, so backward through a kept graph after other calls is unchanged; with the
    workspace off the results are identical."""
    from core_attn import kernels

    kernels.empty_workspace()
    torch.manual_seed(0)
    attn = core_attn.build_attention("local", window=16, backend="blocked")
    q, k, v = (torch.randn(1, 2, 256, 8, requires_grad=True) for _ in range(3))
    g = torch.randn(1, 2, 256, 8)

    kept = attn(q, k, v)  # its graph holds the saved probabilities
    first = _grads(kept, (q, k, v), g, retain_graph=True)
    owned = len(kernels.WORKSPACE.owned)
    assert owned > 0
    for _ in range(2):  # other calls of the same shape: the kept graph's buffers must not be reused
        _grads(attn(q * 2, k, v), (q, k, v), g)
    n_owned = len(kernels.WORKSPACE.owned)
    _grads(attn(q * 2, k, v), (q, k, v), g)
    assert len(kernels.WORKSPACE.owned) == n_owned, "an identical call took new buffers"
    again = _grads(kept, (q, k, v), g)
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    monkeypatch.setattr(kernels, "WORKSPACE_BYTES", 0)
    kernels.empty_workspace()
    plain = attn(q, k, v)
    torch.testing.assert_close(plain, kept, rtol=0, atol=0)
    for a, b in zip(first, _grads(plain, (q, k, v), g)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not kernels.WORKSPACE.owned


@pytest.mark.parametrize("mode", ["head-chunks", "recompute"])
@pytest.mark.parametrize("name,kw", [("local", {"window": 6}), ("bigbird", {"block_size": 8})])
def test_exact_when_scores_are_hundreds_apart(name, kw, mode, monkeypatch):
    """The forward takes each row's log-sum-exp from one visible column's score and probability; when
    that probability underflows (scores ~70+ apart) it recomputes those rows. The lse feeds the merge of
    parts (bigbird) and the recomputing backward: both stay exact with near one-hot attention."""
    from core_attn import kernels

    for key, value in KERNEL_MODES[mode].items():
        monkeypatch.setattr(kernels, key, value)
    torch.manual_seed(3)
    attn = core_attn.build_attention(name, backend="blocked", **kw)
    n = 64
    q = (torch.randn(2, 2, n, 8) * 40).requires_grad_()
    k, v = (torch.randn(2, 2, n, 8, requires_grad=True) for _ in range(2))
    out = attn(q, k, v)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=attn.dense_mask(n))
    g = torch.randn_like(out)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    for a, r in zip(_grads(out, (q, k, v), g), _grads(ref, (q, k, v), g)):
        torch.testing.assert_close(a, r, atol=1e-3, rtol=1e-3)


def test_training_keeps_probabilities_within_a_share_of_the_available_memory(monkeypatch):
    from core_attn import kernels

    monkeypatch.setattr(kernels, "SAVED_PROBS_BYTES", 1024)
    monkeypatch.setattr(kernels, "available_bytes", lambda device: 4 << 30)
    assert kernels.saved_probs_limit(torch.device("cpu")) == 1 << 30  # a quarter of 4 GiB
    monkeypatch.setattr(kernels, "available_bytes", lambda device: None)  # unknown: the fixed limit
    assert kernels.saved_probs_limit(torch.device("cpu")) == 1024
    monkeypatch.setattr(kernels, "SAVED_PROBS_SHARE", 0.0)
    monkeypatch.setattr(kernels, "available_bytes", lambda device: 4 << 30)
    assert kernels.saved_probs_limit(torch.device("cpu")) == 1024

    # the forward keeps (16 KiB of probabilities > 1 KiB) under the share, recomputes without it: same gradients
    attn = core_attn.build_attention("local", window=8, backend="blocked")
    q, k, v = (torch.randn(1, 2, 64, 8, requires_grad=True) for _ in range(3))
    grads, kept = [], []
    real_limit = kernels.saved_probs_limit
    monkeypatch.setattr(kernels, "saved_probs_limit", lambda device: kept.append(real_limit(device)) or kept[-1])
    for share in (0.25, 0.0):
        monkeypatch.setattr(kernels, "SAVED_PROBS_SHARE", share)
        out = attn(q, k, v)
        grads.append(torch.autograd.grad(out.square().sum(), (q, k, v)))
    assert kept == [1 << 30, 1024]  # asked once per forward: kept under the share, recomputed without it
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_available_memory_is_known_on_linux():
    from core_attn import kernels

    avail = kernels.available_bytes(torch.device("cpu"))
    if sys.platform.startswith("linux"):
        assert avail is not None and avail > 0


@pytest.mark.parametrize("bf16_scores", [True, False])
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("name,kw", [("local", dict(window=8)), ("bigbird", dict(block_size=8, num_random_blocks=1))])
def test_bf16_kernel_gradients_match_the_fp32_reference(name, kw, recompute, bf16_scores, monkeypatch):
    # bf16 inputs: products in bf16, softmax statistics and gradient accumulation in fp32; scores and
    # probabilities in bf16 (BF16_SCORES) or fp32
    from core_attn import kernels

    monkeypatch.setattr(kernels, "BF16_SCORES", bf16_scores)
    if recompute:
        monkeypatch.setattr(kernels, "SAVED_PROBS_BYTES", 0)
        monkeypatch.setattr(kernels, "SAVED_PROBS_SHARE", 0.0)
    torch.manual_seed(0)
    attn = core_attn.build_attention(name, backend="blocked", **kw)
    q32, k32, v32 = (torch.randn(1, 2, 64, 16) for _ in range(3))
    g = torch.randn(1, 2, 64, 16)
    q, k, v = (t.bfloat16().requires_grad_() for t in (q32, k32, v32))
    out = attn(q, k, v)
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().mul(g).sum(), (q, k, v))
    qr, kr, vr = (t.bfloat16().float().requires_grad_() for t in (q32, k32, v32))  # the same rounded inputs
    ref = reference_attention(qr, kr, vr, mask=attn.dense_mask(64))
    ref_grads = torch.autograd.grad(ref.mul(g).sum(), (qr, kr, vr))
    assert (out.float() - ref).abs().max() < 0.03
    for a, b in zip(grads, ref_grads):
        assert a.dtype == torch.bfloat16
        assert (a.float() - b).abs().max() < 0.03 * b.abs().max() + 0.02


def test_the_keep_share_can_be_set_from_the_environment(monkeypatch):
    from core_attn import kernels

    monkeypatch.setenv("CORE_ATTN_SAVED_PROBS_SHARE", "0")
    assert kernels._share_from_env() == 0.0
    monkeypatch.delenv("CORE_ATTN_SAVED_PROBS_SHARE")
    assert kernels._share_from_env() == 0.25
    monkeypatch.setenv("CORE_ATTN_SAVED_PROBS_SHARE", "half")
    with pytest.raises(ValueError, match=r"CORE_ATTN_SAVED_PROBS_SHARE='half' must be a number between 0 and 1"):
        kernels._share_from_env()


def test_workspace_grows_within_a_share_of_the_available_memory(monkeypatch):
    """Past WORKSPACE_BYTES the workspace keeps buffers up to WORKSPACE_SHARE of the available memory (plus what
    it holds); with the share 0, or the memory unknown, the fixed limit holds."""
    from core_attn import kernels

    cpu = torch.device("cpu")
    monkeypatch.setattr(kernels, "WORKSPACE_BYTES", 1 << 20)
    kernels.empty_workspace()
    try:
        for share, avail, kept in ((0.25, 64 << 20, True), (0.25, 8 << 20, False), (0.0, 64 << 20, False),
                                   (0.25, None, False)):
            monkeypatch.setattr(kernels, "WORKSPACE_SHARE", share)
            monkeypatch.setattr(kernels, "available_bytes", lambda device, avail=avail: avail)
            kernels.empty_workspace()
            buf = kernels.WORKSPACE.take(3 << 18, torch.float32, cpu)  # 3 MiB
            assert buf.numel() == 3 << 18
            assert (len(kernels.WORKSPACE.owned) == 1) == kept, (share, avail)
            if kept:  # handed out again once idle, not allocated anew
                ptr = buf.data_ptr()
                del buf
                assert kernels.WORKSPACE.take(3 << 18, torch.float32, cpu).data_ptr() == ptr
    finally:
        kernels.empty_workspace()
    monkeypatch.setenv("CORE_ATTN_WORKSPACE_SHARE", "2")
    with pytest.raises(ValueError, match=r"CORE_ATTN_WORKSPACE_SHARE='2' must be a number between 0 and 1 \(the share "
                                         r"of the available memory the kernels' workspace may keep"):
        kernels._share_from_env("CORE_ATTN_WORKSPACE_SHARE", 0.25, "the kernels' workspace may keep for later calls")


def test_dense_backend_rows_without_visible_keys():
    """A sequence that is all padding: zeros and zero gradients, as the reference (no NaN from the bias)."""
    attn = core_attn.build_attention("local", window=4, backend="dense")
    q, k, v = (torch.randn(2, 2, 24, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    kpm = torch.zeros(2, 24, dtype=torch.bool)
    kpm[1] = True
    out = attn(q, k, v, key_padding_mask=kpm)
    ref = reference_attention(q, k, v, mask=attn.dense_mask(24), key_padding_mask=kpm)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    g = torch.randn_like(out)
    torch.testing.assert_close(out, ref)
    for a, r in zip(_grads(out, (q, k, v), g), _grads(ref, (q, k, v), g)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("kw", [{"window": 5}, {"window": 7, "causal": True}, {"window": 64},
                                {"window": 20, "window_right": 3}, {"window": 3, "window_left": 0}],
                         ids=["w5", "causal", "w64", "asym", "right-only"])
def test_banded_backend_exact(kw, padded):
    attn = core_attn.build_attention("local", backend="banded", **kw)
    for n in (70, 128):  # a partial last block of queries, and whole blocks
        _check(attn, b=2, h=3, n=n, d=8, padded=padded)


def test_banded_backend_refuses_other_patterns():
    q = torch.randn(1, 1, 32, 8)
    for kw in ({"global_tokens": [0]}, {"dilation": 2}):
        attn = core_attn.build_attention("local", window=4, backend="banded", **kw)
        with pytest.raises(ValueError, match=r"backend='banded' cannot run this input .*banded: needs a plain sliding "
                                             r"window \(local without global tokens or dilation\)"):
            attn(q, q, q)
    with pytest.raises(ValueError, match=r"backend='banded' cannot run this input"):
        core_attn.build_attention("bigbird", block_size=8, backend="banded")(*(torch.randn(1, 1, 64, 8) for _ in range(3)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("alpha", [1.0, 0.125])
def test_band_product_with_the_transposed_window(dtype, alpha):
    """_Keys.product_t (bf16 bands: column by column from the padded band) equals one matmul with the window,
    for a non-contiguous left operand (the layer's q is a view of its qkv projection)."""
    from core_attn import kernels

    attn = core_attn.build_attention("local", window=16, backend="blocked")
    part = attn.parts(256, torch.device("cpu"))[0]
    offset = kernels.band_offset(part.kv_index)
    assert offset is not None
    x = torch.randn(2, 3, 256, 8).to(dtype)
    keys = kernels._Keys(x, part.kv_index, part.block_k, offset)
    nqb, cols, bk = part.kv_index.shape[0], part.kv_index.shape[1], part.block_k
    a = torch.randn(nqb, 2, bk, 8).to(dtype).transpose(0, 1)[0]  # (nqb, bk, 8), not contiguous
    for i in (0, 4):
        for r0, r1 in ((0, nqb), (1, nqb - 1)):
            out = torch.full((r1 - r0, bk, cols * bk), float("nan"), dtype=dtype)
            keys.product_t(a[r0:r1], i, r0, r1, out, alpha)
            want = alpha * (a[r0:r1].float() @ keys.window(i, r0, r1).transpose(1, 2).float())
            torch.testing.assert_close(out.float(), want, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-5)


@pytest.mark.parametrize("name,kw", [("local", {"window": 40}), ("local", {"window": 40, "causal": True}),
                                     ("bigbird", {"block_size": 16})])
@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
def test_masking_by_block_segment_equals_one_mask_for_all_blocks(name, kw, padded, monkeypatch):
    """_Hidden masks each run of query blocks by the columns its rows hide (a band's inner blocks: only the edge
    triangles); with MAX_MASK_SEGMENTS = 0 one set of column runs covers every block. Outputs and gradients
    are bit-identical, and equal SDPA with the dense mask."""
    from core_attn import kernels

    n = 400
    attn = core_attn.build_attention(name, backend="blocked", **kw)
    part = attn.parts(n, torch.device("cpu"))[0]
    nqb = part.kv_index.shape[0]
    hidden = kernels._chunk_hidden({}, part.mask, part.q_pos.view(nqb, part.block_q), part.k_pos.view(-1, part.block_k),
                                   part.kv_index, None, 0, nqb, torch.float32)
    if name == "local":  # the first blocks hide more columns (keys before the sequence) than the inner ones
        assert len(hidden.segments) > 1
        widths = [sum(hi - lo for lo, hi in runs) for _, _, runs in hidden.segments]
        assert min(widths) < max(widths)
    results = []
    for limit in (kernels.MAX_MASK_SEGMENTS, 0):
        monkeypatch.setattr(kernels, "MAX_MASK_SEGMENTS", limit)
        torch.manual_seed(0)
        q, k, v = (torch.randn(2, 3, n, 16, requires_grad=True) for _ in range(3))
        kpm = None
        if padded:
            kpm = torch.zeros(2, n, dtype=torch.bool)
            kpm[-1, n - 70:] = True
        out = attn(q, k, v, key_padding_mask=kpm)
        results.append((out, *_grads(out, (q, k, v), torch.ones_like(out))))
        if limit == 0:
            ref = reference_attention(q, k, v, mask=attn.dense_mask(n), key_padding_mask=kpm)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    for a, b in zip(*results):
        assert torch.equal(a, b)
