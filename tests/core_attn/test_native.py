"""The native backend (core_attn/native.py, csrc/band.c) against the reference, gradients included."""

import pytest
import torch

import core_attn
from core_attn import native
from core_attn.reference import reference_attention

needs_native = pytest.mark.skipif(native.library() is None, reason=f"native kernel unavailable: {native._LIB_ERROR}")
needs_bf16 = pytest.mark.skipif(native.library() is None or not native.bf16_supported(),
                                reason="the bf16 kernel needs a CPU with AVX512-BF16")


def _window(n: int, left: int, right: int) -> torch.Tensor:
    i = torch.arange(n)
    return (i[None, :] >= i[:, None] - left) & (i[None, :] <= i[:, None] + right)


def _grads(fn, *inputs):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype))
    return out.detach(), [t.grad for t in inputs]


def _check(n, left, right, d, dv, b=2, h=3, pad=None):
    g = torch.Generator().manual_seed(n + left + right + d)
    q, k = (torch.randn(b, h, n, d, generator=g) for _ in range(2))
    v = torch.randn(b, h, n, dv, generator=g)
    out, grads = _grads(lambda q, k, v: native.band_attention(q, k, v, left, right, key_padding_mask=pad), q, k, v)
    ref, ref_grads = _grads(lambda q, k, v: reference_attention(q, k, v, mask=_window(n, left, right),
                                                                key_padding_mask=pad).float(),
                            q.double(), k.double(), v.double())
    torch.testing.assert_close(out, ref.float(), atol=2e-5, rtol=1e-4)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want.float(), atol=5e-5, rtol=1e-4)


@needs_native
@pytest.mark.parametrize("n,left,right,d,dv", [
    (300, 40, 40, 64, 64),    # blocks straddling both ends
    (257, 17, 0, 32, 32),     # causal, a length that is no multiple of 16 or 32
    (50, 100, 3, 16, 16),     # a window wider than the sequence
    (97, 5, 9, 32, 64),       # asymmetric window, value width != key width
    (1, 3, 3, 16, 16),        # one token
    (600, 256, 256, 64, 64),  # the benchmark's window
])
def test_matches_reference_with_gradients(n, left, right, d, dv):
    _check(n, left, right, d, dv)


@needs_native
def test_padding_at_the_end_matches_reference_and_fully_padded_windows_give_zeros():
    n = 90
    pad = torch.zeros(2, n, dtype=torch.bool)
    pad[0, 70:] = True
    pad[1, 20:] = True  # queries from 20 + 6 on see only padding keys
    _check(n, 6, 6, 16, 16, pad=pad)
    q = torch.randn(2, 1, n, 16)
    out = native.band_attention(q, q, q, 6, 6, key_padding_mask=pad)
    assert out[1, :, 26:].abs().max() == 0 and out[1, :, :26].norm(dim=-1).min() > 0


@needs_native
def test_packed_input_gets_one_gradient_equal_to_three():
    b, h, n, d = 2, 4, 200, 32
    x = torch.randn(b, n, 3, h, d)
    packed = x.permute(2, 0, 3, 1, 4).detach().requires_grad_()  # (3, B, H, N, D), a view of one projection
    out = native.band_attention(*packed.unbind(0), 20, 20, packed=packed)
    dout = torch.randn_like(out)
    out.backward(dout)
    assert packed.grad.stride() == packed.stride()
    split = [t.detach().clone().requires_grad_() for t in packed.unbind(0)]
    native.band_attention(*split, 20, 20).backward(dout)
    torch.testing.assert_close(packed.grad, torch.stack([t.grad for t in split]), atol=0, rtol=0)


@needs_native
def test_thread_count_does_not_change_the_result():
    q, k, v = (torch.randn(2, 3, 150, 32) for _ in range(3))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.band_attention(q, k, v, 11, 11)
        torch.set_num_threads(2)
        two = native.band_attention(q, k, v, 11, 11)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@needs_native
@pytest.mark.parametrize("isa", [i for i in native.FLAGS if i == "AVX2" or native._isa() == i])
def test_each_instruction_set_this_cpu_runs_matches_reference(isa, monkeypatch):
    """The AVX2 build (8-wide vectors, 6 x 16 micro-kernels) runs on AVX-512 CPUs too: both are tested here."""
    import ctypes

    monkeypatch.setattr(native, "_LIB", native._bind(ctypes.CDLL(str(native._compile(isa)))))
    _check(211, 30, 12, 32, 32)
    bigbird = core_attn.build_attention("bigbird", block_size=32, causal=True, backend="native")  # key ranges
    q, k, v = (torch.randn(1, 2, 400, 32, generator=torch.Generator().manual_seed(i)) for i in range(3))
    assert max(_bigbird_errors(bigbird, q, k, v, None)) < 1e-4


@needs_native
@pytest.mark.parametrize("kw", [{"window": 16}, {"window": 9, "causal": True}, {"window_left": 3, "window_right": 20}])
def test_auto_picks_native_for_local_and_matches_blocked(kw):
    auto, blocked = (core_attn.build_attention("local", backend=b, **kw) for b in ("auto", "blocked"))
    q, k, v = (torch.randn(2, 2, 130, 32) for _ in range(3))
    pad = torch.zeros(2, 130, dtype=torch.bool)
    pad[1, 100:] = True
    assert auto.select_backend(q, k, v, pad) == "native"
    got, got_grads = _grads(lambda q, k, v: auto(q, k, v, key_padding_mask=pad), q, k, v)
    want, want_grads = _grads(lambda q, k, v: blocked(q, k, v, key_padding_mask=pad), q, k, v)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)


@needs_native
def test_auto_falls_back_to_blocked_where_native_cannot_run():
    attn = core_attn.build_attention("local", window=16)
    q = torch.randn(1, 2, 130, 32)
    holes = torch.zeros(1, 130, dtype=torch.bool)
    holes[0, 10] = True  # padding in the middle: not one range of keys per query
    assert attn.select_backend(q, q, q, holes) == "blocked"
    assert attn.select_backend(q.half(), q.half(), q.half()) == "blocked"
    assert core_attn.build_attention("local", window=16, global_tokens=[0]).select_backend(q, q, q) == "blocked"


@needs_bf16
@pytest.mark.parametrize("n,left,right,d,dv", [(300, 40, 40, 64, 64), (257, 17, 0, 32, 32), (97, 5, 9, 16, 64),
                                               (600, 256, 256, 64, 64)])
def test_bf16_is_as_close_to_the_reference_as_the_blocked_bf16_kernel(n, left, right, d, dv):
    """bf16 inputs: fp32 scores, softmax and accumulators, probabilities and score gradients rounded to bf16
    before their products; compared with the fp64 reference of the same bf16 inputs, next to the blocked
    kernel's bf16 path (bf16 scores) on the same inputs."""
    g = torch.Generator().manual_seed(n)
    q, k = (torch.randn(2, 3, n, d, generator=g).bfloat16() for _ in range(2))
    v = torch.randn(2, 3, n, dv, generator=g).bfloat16()
    blocked = core_attn.build_attention("local", window_left=left, window_right=right, backend="blocked")
    if right == 0:
        blocked = core_attn.build_attention("local", window=left, causal=True, backend="blocked")
    out, grads = _grads(lambda q, k, v: native.band_attention(q, k, v, left, right), q, k, v)
    assert out.dtype == torch.bfloat16 and all(t.dtype == torch.bfloat16 for t in grads)
    ref, ref_grads = _grads(lambda q, k, v: reference_attention(q, k, v, mask=_window(n, left, right)),
                            q.double(), k.double(), v.double())
    base, base_grads = _grads(blocked, q, k, v)
    for got, theirs, want in zip([out, *grads], [base, *base_grads], [ref, *ref_grads]):
        err, their_err = ((t.double() - want).abs().max().item() for t in (got, theirs))
        assert err < 0.03 and err <= 1.25 * their_err + 1e-3, (err, their_err)


@needs_bf16
def test_bf16_packed_gradient_and_autocast_layer_pick_native():
    b, h, n, d = 1, 4, 160, 32
    packed = torch.randn(b, n, 3, h, d).bfloat16().permute(2, 0, 3, 1, 4).detach().requires_grad_()
    out = native.band_attention(*packed.unbind(0), 16, 16, packed=packed)
    out.float().sum().backward()
    assert packed.grad.dtype == torch.bfloat16 and packed.grad.stride() == packed.stride()
    layer = core_attn.MultiheadAttention(128, h, attention=core_attn.build_attention("local", window=16))
    x = torch.randn(2, n, 128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        qb = torch.randn(1, h, n, d).bfloat16()
        assert layer.attention.select_backend(qb, qb, qb) == "native"
        y = layer(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and layer.qkv.weight.grad is not None


def test_reasons_name_what_does_not_fit(monkeypatch):
    q = torch.randn(1, 1, 64, 32)
    assert native.unusable_reason(q, q, q, None, None).startswith("needs a plain sliding window")
    assert native.unusable_reason(q.half(), q.half(), q.half(), None, (4, 4)) == \
        "runs fp32 and bf16 only (input torch.float16)"
    assert native.unusable_reason(q, q.half(), q, None, (4, 4)) == \
        "needs q, k, v of one dtype (got torch.float32, torch.float16, torch.float32)"
    monkeypatch.setattr(native, "bf16_supported", lambda: False)
    assert native.unusable_reason(q.bfloat16(), q.bfloat16(), q.bfloat16(), None, (4, 4)) == \
        "runs bf16 only on CPUs with AVX512-BF16 instructions (this CPU lacks them; fp32 runs)"
    narrow = torch.randn(1, 1, 64, 8)
    assert native.unusable_reason(narrow, narrow, narrow, None, (4, 4)) == \
        "needs head dimensions that are multiples of 16 (got 8, 8)"
    holes = torch.zeros(1, 64, dtype=torch.bool)
    holes[0, 3] = True
    if native.library() is not None:
        assert native.unusable_reason(q, q, q, holes, (4, 4)) == "key_padding_mask must pad at the end of each sequence"
    with pytest.raises(ValueError, match=r"backend='native' cannot run this input \(blocked: usable; dense: usable; "
                                         r"native: needs head dimensions that are multiples of 16 \(got 8, 8\)"):
        core_attn.build_attention("local", window=4, backend="native")(narrow, narrow, narrow)


def test_without_a_compiler_the_reason_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_LIB", None)
    monkeypatch.setattr(native, "_LIB_ERROR", None)
    monkeypatch.setattr(native, "_isa", lambda: "AVX2")
    monkeypatch.setenv("CC", "no-such-cc")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    q = torch.randn(1, 1, 64, 32)
    assert native.unusable_reason(q, q, q, None, (4, 4)) == (
        "the kernel could not be built: no C compiler: 'no-such-cc' not found (install gcc, e.g. "
        "`apt-get install gcc`, or set CC)")
    attn = core_attn.build_attention("local", window=4)
    assert attn.select_backend(q, q, q) == "blocked"
    with pytest.raises(ValueError, match="the native kernel cannot run this input: the kernel could not be built"):
        native.band_attention(q, q, q, 4, 4)


@needs_native
def test_compiled_kernel_is_cached_and_rebuilt_atomically(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = native._compile("AVX2")
    assert first.parent == tmp_path / "core_attn" and first.is_file()
    mtime = first.stat().st_mtime_ns
    assert native._compile("AVX2") == first and first.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary file left behind


def _forked_run(queue):
    torch.set_num_threads(2)  # two workers: through the pool
    q = torch.randn(2, 2, 64, 16)
    queue.put(float(native.band_attention(q, q, q, 4, 4).abs().sum()))


@needs_native
def test_a_forked_child_runs_the_kernel_on_its_own_threads():
    """A DataLoader worker or a fork-started process does not inherit the parent's pool threads: the kernel
    must start its own there instead of queueing work nobody runs."""
    import multiprocessing

    q = torch.randn(2, 2, 64, 16)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        native.band_attention(q, q, q, 4, 4)  # the parent's pool exists
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_forked_run, args=(queue,))
        child.start()
        child.join(60)
        alive = child.is_alive()
        if alive:
            child.kill()
        assert not alive and child.exitcode == 0 and queue.get(timeout=5) > 0
    finally:
        torch.set_num_threads(threads)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kept_and_recomputed_probabilities_give_the_same_gradients(dtype, monkeypatch):
    """Training keeps the forward's probabilities within the blocked kernel's limit; past it (here: a limit
    of 0) the backward recomputes them from the row log-sum-exp."""
    if dtype == torch.bfloat16 and not native.bf16_supported():
        pytest.skip("the bf16 kernel needs a CPU with AVX512-BF16")
    from core_attn import kernels

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 140, 32, generator=g).to(dtype) for _ in range(3))
    kept, kept_grads = _grads(lambda q, k, v: native.band_attention(q, k, v, 12, 7), q, k, v)
    monkeypatch.setattr(kernels, "SAVED_PROBS_BYTES", 0)
    monkeypatch.setattr(kernels, "SAVED_PROBS_SHARE", 0.0)
    assert not native._keep_probs(q, 1)
    again, again_grads = _grads(lambda q, k, v: native.band_attention(q, k, v, 12, 7), q, k, v)
    assert torch.equal(kept, again)
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for a, b in zip(kept_grads, again_grads):
        torch.testing.assert_close(a, b, **tol)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_any_contiguous_key_range_per_query_matches_reference(dtype):
    """The C kernels take one key range per query, not only a sliding window: ranges that jump back and forth
    (the bf16 backward then keeps all of dK and dV until the end) and empty ones."""
    if dtype == torch.bfloat16 and not native.bf16_supported():
        pytest.skip("the bf16 kernel needs a CPU with AVX512-BF16")
    n, d = 170, 32
    g = torch.Generator().manual_seed(5)
    i = torch.arange(n, dtype=torch.int32)
    lo = (n - 1 - i - 20).clamp(min=0)[None]  # a window running backwards over the keys
    lo[0, 100:] = torch.randint(0, n, (n - 100,), generator=g, dtype=torch.int32)  # then anywhere
    hi = (lo + torch.randint(0, 60, (1, n), generator=g, dtype=torch.int32)).clamp(max=n)
    hi[0, 40:45] = lo[0, 40:45]  # queries that see nothing
    j = torch.arange(n)
    mask = (j[None, :] >= lo[0, :, None]) & (j[None, :] < hi[0, :, None])
    q, k, v = (torch.randn(2, 2, n, d, generator=g).to(dtype) for _ in range(3))
    out, grads = _grads(lambda q, k, v: native._BandAttention.apply(q, k, v, lo, hi, d ** -0.5, True, None,
                                                                    native.BLOCK_Q), q, k, v)
    ref, ref_grads = _grads(lambda q, k, v: reference_attention(q, k, v, mask=mask).nan_to_num(),
                            q.double(), k.double(), v.double())
    assert out[:, :, 40:45].abs().max() == 0
    tol = 1e-4 if dtype == torch.float32 else 0.03
    for got, want in zip([out, *grads], [ref, *ref_grads]):
        assert (got.double() - want).abs().max().item() < tol


@needs_bf16
def test_bf16_with_padding_at_the_end_is_close_to_the_reference():
    n = 150
    pad = torch.zeros(2, n, dtype=torch.bool)
    pad[0, 120:] = True
    pad[1, 30:] = True  # queries from 30 + 9 on see only padding keys
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 2, n, 32, generator=g).bfloat16() for _ in range(3))
    out, grads = _grads(lambda q, k, v: native.band_attention(q, k, v, 9, 9, key_padding_mask=pad), q, k, v)
    ref, ref_grads = _grads(lambda q, k, v: reference_attention(q, k, v, mask=_window(n, 9, 9),
                                                                key_padding_mask=pad).nan_to_num(),
                            q.double(), k.double(), v.double())
    assert out[1, :, 39:].abs().max() == 0 and grads[1][1, :, 30:].abs().max() == 0
    for got, want in zip([out, *grads], [ref, *ref_grads]):
        assert (got.double() - want).abs().max().item() < 0.03


def _bigbird_errors(attn, q, k, v, pad, reference_dtype=torch.float64):
    n = q.shape[2]
    g = torch.randn(q.shape[:-1] + (v.shape[-1],), generator=torch.Generator().manual_seed(2)).to(q.dtype)
    ins = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = attn(*ins, key_padding_mask=pad)
    grads = torch.autograd.grad(out, ins, g)
    ref_in = [t.detach().to(reference_dtype).requires_grad_() for t in (q, k, v)]
    ref = reference_attention(*ref_in, mask=attn.pattern(n).dense_mask(n), key_padding_mask=pad).nan_to_num()
    ref_grads = torch.autograd.grad(ref, ref_in, g.to(reference_dtype))
    return [(a.double() - b.double()).abs().max().item() for a, b in zip([out, *grads], [ref, *ref_grads])]


@needs_native
@pytest.mark.parametrize("n,block,causal,padded", [(1000, 64, False, False), (700, 32, True, True),
                                                   (520, 16, False, True), (2048, 64, True, False)])
def test_bigbird_runs_its_blocks_on_native_and_matches_reference(n, block, causal, padded):
    """BigBird runs on the native kernel as ranges of keys per query block: the window, global and random key
    blocks, and every key for the global query blocks."""
    attn = core_attn.build_attention("bigbird", block_size=block, causal=causal, backend="native")
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(2, 2, n, 32, generator=g) for _ in range(3))
    pad = None
    if padded:
        pad = torch.zeros(2, n, dtype=torch.bool)
        pad[1, n - 70:] = True
    assert max(_bigbird_errors(attn, q, k, v, pad)) < 1e-4


@needs_native
def test_auto_picks_native_for_bigbird_at_long_lengths_with_one_gradient_for_packed_input():
    n, h, d = 4096, 2, 32
    attn = core_attn.build_attention("bigbird", block_size=64)
    packed = torch.randn(1, n, 3, h, d).permute(2, 0, 3, 1, 4).detach().requires_grad_()
    assert attn.select_backend(*packed.unbind(0)) == "native"
    out = attn(*packed.unbind(0), packed=packed)
    dout = torch.randn_like(out)
    out.backward(dout)
    assert packed.grad.stride() == packed.stride()
    split = [t.detach().clone().requires_grad_() for t in packed.unbind(0)]
    attn(*split).backward(dout)
    torch.testing.assert_close(packed.grad, torch.stack([t.grad for t in split]), atol=0, rtol=0)


@needs_bf16
def test_bigbird_bf16_on_native_is_as_close_as_blocked():
    n = 1024
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, n, 64, generator=g).bfloat16() for _ in range(3))
    auto = core_attn.build_attention("bigbird", block_size=64, backend="native")
    blocked = core_attn.build_attention("bigbird", block_size=64, backend="blocked")
    for err, their in zip(_bigbird_errors(auto, q, k, v, None), _bigbird_errors(blocked, q, k, v, None)):
        assert err < 0.03 and err <= 1.25 * their + 1e-3, (err, their)


@needs_native
def test_block_patterns_native_cannot_run_fall_back_to_blocked():
    q = torch.randn(1, 2, 512, 32)
    small = core_attn.build_attention("bigbird", block_size=8)  # key blocks of 8: not whole vectors
    assert small.select_backend(q, q, q) == "blocked"
    with pytest.raises(ValueError, match=r"native: needs a plain sliding window \(local without global tokens or "
                                         r"dilation\) or bigbird with blocks of a multiple of 16 tokens"):
        core_attn.build_attention("bigbird", block_size=8, backend="native")(q, q, q)
    strided = core_attn.build_attention("sparse_strided", stride=32)
    assert strided.select_backend(q, q, q) == "blocked"
