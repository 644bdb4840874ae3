"""MultiheadAttention, TransformerBlock and TransformerEncoder against hand-written reference math."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from core_attn import build_attention, list_attention, reference_attention
from core_attn.attention import AttentionBase
from core_attn.attention.local import LocalAttention
from core_attn.layers import MultiheadAttention, RotaryEmbedding, TransformerBlock, TransformerEncoder


class _DenseDouble(AttentionBase):
    """Test double for the "dense" variant (used only while it is not registered yet)."""

    def forward(self, q, k, v, key_padding_mask=None):
        return reference_attention(q, k, v, key_padding_mask=key_padding_mask, causal=self.causal)


class _Scaled(AttentionBase):
    """A parametrised variant (unregistered): dense attention with a learned output scale."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, q, k, v, key_padding_mask=None):
        return self.scale * reference_attention(q, k, v, key_padding_mask=key_padding_mask)


def _dense() -> AttentionBase:
    return build_attention("dense") if "dense" in list_attention() else _DenseDouble()


def _reference_mha(mha: MultiheadAttention, x, mask=None, key_padding_mask=None):
    """The layer's math written out: explicit q/k/v projections, per-head reference attention, merge, proj."""
    b, n, c = x.shape
    h, hd = mha.num_heads, c // mha.num_heads
    w, bias = mha.qkv.weight, mha.qkv.bias
    q, k, v = (x @ w[i * c:(i + 1) * c].T + bias[i * c:(i + 1) * c] for i in range(3))  # each (B, N, C)
    q, k, v = (t.reshape(b, n, h, hd).transpose(1, 2) for t in (q, k, v))  # (B, H, N, hd)
    out = reference_attention(q, k, v, mask=mask, key_padding_mask=key_padding_mask)
    return out.transpose(1, 2).reshape(b, n, c) @ mha.proj.weight.T + mha.proj.bias


@pytest.mark.parametrize("variant", ["dense", "local"])
def test_mha_matches_reference_with_gradients(variant):
    n = 24
    attn = _dense() if variant == "dense" else build_attention("local", window=3)
    mha = MultiheadAttention(16, 4, attention=attn)
    x = torch.randn(2, n, 16, requires_grad=True)
    kpm = torch.zeros(2, n, dtype=torch.bool)
    kpm[1, -5:] = True
    mask = attn.dense_mask(n) if variant == "local" else None
    out = mha(x, key_padding_mask=kpm)
    ref = _reference_mha(mha, x, mask=mask, key_padding_mask=kpm)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    params = [x, mha.qkv.weight, mha.proj.weight]
    got = torch.autograd.grad(out, params, g)
    want = torch.autograd.grad(ref, params, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_mha_default_attention_is_dense():
    if "dense" not in list_attention():
        pytest.skip("the 'dense' variant is not registered yet")
    from core_attn import get_attention_class

    assert isinstance(MultiheadAttention(8, 2).attention, get_attention_class("dense"))


def test_mha_key_padding_mask_hides_padded_tokens():
    mha = MultiheadAttention(8, 2, attention=build_attention("local", window=4))
    x = torch.randn(2, 16, 8)
    kpm = torch.zeros(2, 16, dtype=torch.bool)
    kpm[:, 12:] = True
    x2 = x.clone()
    x2[:, 12:] = torch.randn(2, 4, 8) * 10
    a, b = mha(x, key_padding_mask=kpm), mha(x2, key_padding_mask=kpm)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(mha(x)[:, :12], mha(x2)[:, :12])  # without the mask the padding leaks


def _rope_complex(x, base=10000.0):
    """RoPE as in Su et al. 2021 eq. (34), with channel m paired to m + D/2: z_m * exp(i * pos * theta_m)."""
    n, d = x.shape[-2], x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2:].double())
    z = z * torch.polar(torch.ones(n, d // 2, dtype=torch.float64), torch.arange(n)[:, None] * theta)
    return torch.cat([z.real, z.imag], -1).to(x.dtype)


def test_rotary_matches_complex_rotation():
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 3, 40, 8)
    torch.testing.assert_close(rope(x), _rope_complex(x), rtol=1e-5, atol=1e-5)


def test_rotary_scores_depend_only_on_offset():
    rope = RotaryEmbedding(16)
    n, shift = 32, 5
    q = torch.randn(16).expand(1, 1, n, 16)  # the same query and key vector at every position
    k = torch.randn(16).expand(1, 1, n, 16)
    s = (rope(q) @ rope(k).transpose(-1, -2))[0, 0]  # (N, N)
    torch.testing.assert_close(s[shift:, shift:], s[:-shift, :-shift], rtol=1e-4, atol=1e-4)
    assert (s[0] - s[0, 0]).abs().max() > 1e-2  # not trivially constant: the offset matters


def test_mha_rotary_equals_reference_on_rotated_qk():
    mha = MultiheadAttention(16, 2, attention=_DenseDouble(), rotary=True)
    x = torch.randn(1, 12, 16)
    b, n, c = x.shape
    q, k, v = (t.reshape(b, n, 2, 8).transpose(1, 2) for t in mha.qkv(x).chunk(3, -1))
    out = reference_attention(_rope_complex(q), _rope_complex(k), v)
    ref = mha.proj(out.transpose(1, 2).reshape(b, n, c))
    torch.testing.assert_close(mha(x), ref, rtol=1e-5, atol=1e-5)


def test_rotary_table_from_inference_mode_is_not_reused_in_training():
    enc = TransformerEncoder(8, 1, 2, attention=_DenseDouble(), positions="rotary")
    x = torch.randn(1, 6, 8)
    with torch.inference_mode():
        enc(x)
    enc(x).sum().backward()  # would raise "Inference tensors cannot be saved for backward"
    assert enc.blocks[0].attn.qkv.weight.grad is not None


def test_learned_positions():
    enc = TransformerEncoder(8, 1, 2, attention=_DenseDouble(), positions="learned", max_len=8)
    assert enc.pos_embed.shape == (1, 8, 8)
    x = torch.randn(1, 8, 8)
    shifted = enc(x)
    with torch.no_grad():
        enc.pos_embed.zero_()
    assert not torch.allclose(shifted, enc(x))
    with pytest.raises(ValueError, match=r"input length N=9 exceeds max_len=8"):
        enc(torch.randn(1, 9, 8))
    with pytest.raises(ValueError, match=r"positions='learned' needs max_len"):
        TransformerEncoder(8, 1, 2, attention=_DenseDouble(), positions="learned")


def test_gradient_checkpointing_gives_identical_gradients():
    torch.manual_seed(1)
    ref = TransformerEncoder(16, 2, 2, attention=build_attention("local", window=4), dropout=0.1, drop_path=0.2)
    ckpt = copy.deepcopy(ref)
    ckpt.gradient_checkpointing = True
    calls = []
    ckpt.blocks[0].attn.qkv.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(2, 20, 16)
    grads = []
    for model in (ref, ckpt):
        model.train()
        torch.manual_seed(2)
        model(x).square().sum().backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    assert len(calls) == 2  # forward + recomputation in backward: checkpointing really ran
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=0, atol=0, msg=k)


def test_attention_instance_is_deep_copied_per_layer():
    proto = _Scaled()
    enc = TransformerEncoder(8, 3, 2, attention=proto)
    attns = [blk.attn.attention for blk in enc.blocks]
    assert len({id(a) for a in attns}) == 3 and proto not in attns
    scales = [a.scale for a in attns]
    assert len({p.data_ptr() for p in scales}) == 3
    n_params = sum(1 for _ in enc.parameters())
    assert n_params == len({id(p) for p in enc.parameters()})
    assert sum(1 for name, _ in enc.named_parameters() if name.endswith("attention.scale")) == 3


def test_attention_factory_is_called_per_layer():
    made = []

    def factory():
        made.append(LocalAttention(window=2))
        return made[-1]

    enc = TransformerEncoder(8, 2, 2, attention=factory)
    assert [blk.attn.attention for blk in enc.blocks] == made
    enc2 = TransformerEncoder(8, 2, 2, attention=functools.partial(LocalAttention, window=5))  # Hydra _partial_
    assert [blk.attn.attention.window for blk in enc2.blocks] == [5, 5]
    assert enc2.blocks[0].attn.attention is not enc2.blocks[1].attn.attention


def test_a_variant_option_the_class_does_not_take_names_it_and_how_to_drop_it():
    """A config sets attention.window for local; switching to attention=bigbird on the command line keeps
    it: the error names the option, the variant's options and the Hydra override that drops it."""
    from core_attn.attention.bigbird import BigBirdAttention

    with pytest.raises(ValueError, match=r"attention 'bigbird' has no option 'window' \(its options: block_size, "
                                         r"num_window_blocks, .*\); .* ~attention.window$"):
        TransformerEncoder(8, 2, 2, attention=functools.partial(BigBirdAttention, window=128, causal=True))


def test_encoder_bf16_autocast_cpu_close_to_fp32():
    enc = TransformerEncoder(32, 2, 4, attention=build_attention("local", window=8), positions="rotary")
    x = torch.randn(2, 64, 32)
    kpm = torch.zeros(2, 64, dtype=torch.bool)
    kpm[1, 50:] = True
    ref = enc(x, kpm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(x, kpm)
    assert out.dtype in (torch.bfloat16, torch.float32)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)
    out.float().square().mean().backward()
    grads = [p.grad for p in enc.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_encoder_key_padding_mask_passes_through():
    enc = TransformerEncoder(8, 2, 2, attention=build_attention("local", window=3), positions="rotary")
    x = torch.randn(2, 16, 8)
    kpm = torch.zeros(2, 16, dtype=torch.bool)
    kpm[0, 10:] = True
    x2 = x.clone()
    x2[0, 10:] += 5 * torch.randn(6, 8)
    torch.testing.assert_close(enc(x, kpm)[0, :10], enc(x2, kpm)[0, :10])
    torch.testing.assert_close(enc(x, kpm)[1], enc(x2, kpm)[1])


def test_block_layer_scale_and_drop_path():
    blk = TransformerBlock(8, 2, attention=_DenseDouble(), layer_scale=0.0, drop_path=0.5)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(blk(x), x)  # LayerScale 0: both residual branches vanish
    blk = TransformerBlock(8, 2, attention=_DenseDouble(), drop_path=0.5).eval()
    ref = x + blk.attn(blk.norm1(x))
    torch.testing.assert_close(blk(x), ref + blk.mlp(blk.norm2(ref)))  # eval: no drop


def test_encoder_drop_path_decays_linearly():
    enc = TransformerEncoder(8, 3, 2, attention=_DenseDouble(), drop_path=0.2)
    assert [blk.drop_path.p for blk in enc.blocks] == pytest.approx([0.0, 0.1, 0.2])


def test_errors():
    with pytest.raises(ValueError, match=r"dim=10 is not divisible by num_heads=3"):
        MultiheadAttention(10, 3, attention=_DenseDouble())
    with pytest.raises(ValueError, match=r"dim=10 is not divisible by num_heads=4"):
        TransformerEncoder(10, 1, 4, attention=_DenseDouble())
    with pytest.raises(ValueError, match=r"positions='rotery' is not allowed.*Did you mean 'rotary'"):
        TransformerEncoder(8, 1, 2, attention=_DenseDouble(), positions="rotery")
    with pytest.raises(ValueError, match=r"even head dimension; got head_dim=3"):
        MultiheadAttention(6, 2, attention=_DenseDouble(), rotary=True)
    with pytest.raises(ValueError, match=r"x must have shape \(B, N, C=8\); got \(2, 5, 6\)"):
        MultiheadAttention(8, 2, attention=_DenseDouble())(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match=r"attention must be an AttentionBase instance, a zero-argument callable.*got str"):
        TransformerEncoder(8, 1, 2, attention="local")
    with pytest.raises(ValueError, match=r"attention\(\) \(the per-layer factory's result\) must be an AttentionBase"):
        TransformerEncoder(8, 1, 2, attention=lambda: nn.Identity())
    with pytest.raises(ValueError, match=r"attention must be an AttentionBase .*got Identity"):
        MultiheadAttention(8, 2, attention=nn.Identity())
    with pytest.raises(ValueError, match=r"depth=0 is out of range"):
        TransformerEncoder(8, 0, 2, attention=_DenseDouble())
    with pytest.raises(ValueError, match=r"drop_path=1.0 is out of range; expected 0 <= drop_path < 1"):
        TransformerBlock(8, 2, attention=_DenseDouble(), drop_path=1.0)


def test_encoder_fills_required_context_into_partials():
    """Parametrised variants (perceiver, linformer) get num_heads/head_dim/max_seq_len from the encoder."""
    import functools

    from core_attn.attention.base import AttentionBase
    from core_attn.attention.dense import DenseAttention

    seen = {}

    class Sized(DenseAttention):
        def __init__(self, *, num_heads: int, head_dim: int, max_seq_len: int, causal: bool = False):
            super().__init__(causal=causal)
            seen.update(num_heads=num_heads, head_dim=head_dim, max_seq_len=max_seq_len)

    enc = TransformerEncoder(32, 1, 4, attention=functools.partial(Sized, causal=True), positions="learned", max_len=50)
    assert seen == {"num_heads": 4, "head_dim": 8, "max_seq_len": 50}
    assert isinstance(enc.blocks[0].attn.attention, AttentionBase) and enc.blocks[0].attn.attention.causal
    # an explicitly bound value wins
    TransformerEncoder(32, 1, 4, attention=functools.partial(Sized, num_heads=9, head_dim=1, max_seq_len=3))
    assert seen == {"num_heads": 9, "head_dim": 1, "max_seq_len": 3}


@pytest.mark.parametrize("n,padded", [(64, False), (64, True), (61, False)])
def test_packed_qkv_gradients_equal_separate_ones(n, padded, monkeypatch):
    """The layer hands its qkv projection to pattern variants as one packed tensor: a one-part plan in
    natural order (local, n a multiple of the block) returns one gradient for it; results and gradients
    equal the three-tensor path, and other plans fall back to it."""
    from core_attn import kernels

    calls = []
    packed_apply = kernels._PackedBlockSparseAttention.apply
    monkeypatch.setattr(kernels._PackedBlockSparseAttention, "apply",
                        lambda *a: calls.append(1) or packed_apply(*a))
    torch.manual_seed(0)
    layer = MultiheadAttention(32, 4, attention=build_attention("local", window=8, backend="blocked"))
    x = torch.randn(2, n, 32, requires_grad=True)
    kpm = torch.zeros(2, n, dtype=torch.bool)
    if padded:
        kpm[1, n - 7:] = True
    y = layer(x, key_padding_mask=kpm)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, *layer.parameters()), g)
    assert len(calls) == (1 if n % 32 == 0 else 0)  # window 8 -> 32-token blocks

    q, k, v = layer.qkv(x).reshape(2, n, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)
    ref = layer.proj(layer.attention(q, k, v, key_padding_mask=kpm).transpose(1, 2).reshape(2, n, 32))
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    for a, b in zip(got, torch.autograd.grad(ref, (x, *layer.parameters()), g)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"packed must have shape \(3, \*q.shape\)"):
        layer.attention(q, k, v, packed=torch.stack([q, k]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("contiguous", [True, False])
def test_workspace_linear_matches_f_linear(dtype, bias, contiguous, monkeypatch):
    """kernels.linear (workspace output and input gradient) against F.linear: outputs and the gradients
    of input, weight and bias; an input that needs no gradient gets none; the second identical step
    takes no new buffer and hands the input gradient over without a copy."""
    from core_attn import kernels

    monkeypatch.setattr(kernels, "LINEAR_WORKSPACE_ELEMENTS", 1)
    kernels.empty_workspace()
    torch.manual_seed(0)
    lin = nn.Linear(24, 40, bias=bias).to(dtype)
    x0 = torch.randn(3, 50, 24, dtype=dtype) if contiguous else torch.randn(3, 24, 50, dtype=dtype).transpose(1, 2)
    g = torch.randn(3, 50, 40, dtype=dtype)
    grads = []
    for fn in (nn.functional.linear, kernels.linear):
        x = x0.detach().clone().requires_grad_(True)
        lin.zero_grad(set_to_none=True)
        y = fn(x, lin.weight, lin.bias)
        y.backward(g)
        grads.append((y.detach(), x.grad, lin.weight.grad, lin.bias.grad if bias else None))
    tol = {"rtol": 0, "atol": 0} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for a, b in zip(*grads):
        if a is not None:
            torch.testing.assert_close(b, a, **tol)

    x = x0.detach().clone().requires_grad_(True)
    for step in range(2):
        x.grad = None
        kernels.linear(x, lin.weight, lin.bias).backward(g)
        if step == 0:
            owned = len(kernels.WORKSPACE.owned)
    assert len(kernels.WORKSPACE.owned) == owned, "an identical step took new buffers"
    if contiguous:  # autograd keeps the workspace buffer as x.grad (no copy)
        ptrs = {r.data_ptr() for r in kernels.WORKSPACE.owned}
        assert x.grad.data_ptr() in ptrs
    y = kernels.linear(x0, lin.weight, lin.bias)  # no gradient wanted anywhere below x
    y.sum().backward()
    assert lin.weight.grad is not None


@pytest.mark.parametrize("bias", [True, False])
def test_workspace_linear_under_autocast_equals_f_linear(bias, monkeypatch):
    """Under CPU autocast kernels.linear casts as autocast does (fp32 -> bf16; the output bf16, the fp32 leaves'
    gradients fp32) and runs from the workspace; an fp64 input is left to F.linear, as autocast leaves it."""
    from core_attn import kernels

    monkeypatch.setattr(kernels, "LINEAR_WORKSPACE_ELEMENTS", 1)
    torch.manual_seed(0)
    lin = nn.Linear(24, 40, bias=bias)
    x0, g = torch.randn(3, 50, 24), torch.randn(3, 50, 40).bfloat16()
    results = []
    for fn in (nn.functional.linear, kernels.linear):
        x = x0.clone().requires_grad_(True)
        lin.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fn(x, lin.weight, lin.bias)
        assert y.dtype == torch.bfloat16
        if fn is kernels.linear:
            assert "_WorkspaceLinearBackward" in type(y.grad_fn).__name__
        y.backward(g)
        results.append((y.detach(), x.grad, lin.weight.grad, lin.bias.grad if bias else None))
    for a, b in zip(*results):
        if a is not None:
            assert b.dtype == a.dtype
            torch.testing.assert_close(b.float(), a.float(), rtol=2e-2, atol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = kernels.linear(x0.double(), lin.weight.double(), None)
    assert y.dtype == torch.float64


def test_workspace_linear_falls_back_to_f_linear_where_it_cannot_run(monkeypatch):
    """Under tracing, and for small outputs, kernels.linear is F.linear."""
    from core_attn import kernels

    monkeypatch.setattr(kernels, "LINEAR_WORKSPACE_ELEMENTS", 1)
    lin = nn.Linear(8, 8)
    x = torch.randn(2, 8, requires_grad=True)
    assert type(kernels.linear(x, lin.weight, lin.bias).grad_fn).__name__ == "_WorkspaceLinearBackward"

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, t):
            return kernels.linear(t, self.lin.weight, self.lin.bias)

    traced = torch.jit.trace(Wrap(), x)
    assert "aten::linear" in str(traced.graph)
    torch.testing.assert_close(traced(x), nn.functional.linear(x, lin.weight, lin.bias))
    monkeypatch.setattr(kernels, "LINEAR_WORKSPACE_ELEMENTS", 1 << 30)  # small outputs: plain
    assert "Workspace" not in type(kernels.linear(x, lin.weight, lin.bias).grad_fn).__name__
