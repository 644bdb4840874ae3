"""The ``native`` backend: a compiled sliding-window kernel for x86 CPUs, fp32 and (with AVX512-BF16) bf16.

``csrc/band.c`` computes exact sliding-window attention (each query sees one contiguous range of keys)
forward and backward for one (batch, head) slice: blocks of 32 queries against the keys their rows see,
rounded out to 16 columns (~6 % beyond the visible pairs at a 256-key window, where the blocked kernel's
128-row blocks over whole key blocks compute 25 %), register-blocked products, the mask, softmax and exp
fused per row, and a backward that recomputes the probabilities from the row log-sum-exp
(FlashAttention-2, Dao 2023). ``csrc/band_bf16.c`` is the same for bf16 inputs on ``vdpbf16ps`` (fp32
scores, softmax and accumulators; probabilities and score gradients rounded to bf16 before their
products, as bf16 matmuls round their inputs). Slices run on ``torch.get_num_threads()`` threads.

The C file is compiled on first use with the system C compiler (``$CC``, else ``cc``; about a second),
for AVX-512 or AVX2 as the CPU offers, and cached under ``$XDG_CACHE_HOME/core_attn`` (default
``~/.cache/core_attn``). Without a compiler, or on another kind of CPU, :func:`unusable_reason` says so
and ``backend="auto"`` runs the blocked kernel, which computes the same pairs.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("csrc") / "band.c"
SOURCE_BF16 = SOURCE.with_name("band_bf16.c")  # includes band.c; built for AVX-512 CPUs
BLOCK_Q = 32  # queries per block (see the C file)
VECTOR = 16  # head dimensions must be a multiple of this (the kernel's widest vector)
FLAGS = {"AVX512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mavx2", "-mfma"],
         "AVX2": ["-mavx2", "-mfma"]}

NOT_A_BAND = "needs a plain sliding window (local without global tokens or dilation)"
NOT_NATIVE = f"{NOT_A_BAND} or bigbird with blocks of a multiple of {VECTOR} tokens"

_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_LIB_ERROR: str | None = None
_POOL: ThreadPoolExecutor | None = None
_POOL_KEY = (0, 0)  # (threads, process id): a forked child never inherits the parent's pool threads


def _isa() -> str | None:
    cap = torch.backends.cpu.get_cpu_capability()
    return cap if cap in FLAGS else None


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$XDG_CACHE_HOME/core_attn`` (default ``~/.cache/core_attn``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "core_attn"


def _compile(isa: str) -> Path:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler: {cc!r} not found (install gcc, e.g. `apt-get install gcc`, or set CC)")
    flags = ["-O3", "-std=gnu11", "-ffp-contract=fast", "-fPIC", "-shared", *FLAGS[isa]]
    source = SOURCE_BF16 if isa == "AVX512" else SOURCE
    text = SOURCE.read_bytes() + SOURCE_BF16.read_bytes()
    tag = hashlib.sha256(text + " ".join([cc, *flags]).encode()).hexdigest()[:16]
    target = cache_dir() / f"band-{isa.lower()}-{tag}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:  # compiled beside the target, then renamed: processes compiling at once never see half a file
        done = subprocess.run([cc, *flags, "-o", tmp, str(source), "-lm"], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed on {source.name}: {done.stderr.strip()[-400:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i, l, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_float
    lib.band_tile_width.argtypes, lib.band_tile_width.restype = [i, p, p, i, p, i], i
    lib.band_probs_size.argtypes, lib.band_probs_size.restype = [i, p, p, i, p, i], l
    lib.band_scratch.argtypes, lib.band_scratch.restype = [i, i, i, i, i, i], l
    lib.band_forward.argtypes = [i, i, i, p, l, p, l, p, l, p, p, f, i, p, l, p, p, p, p, i]
    lib.band_backward.argtypes = [i, i, i, p, l, p, l, p, l, p, l, p, l, p, p, p, f, i, p, l, p, l, p, l, p, p, p, i]
    if hasattr(lib, "band_forward_bf16"):
        lib.band_scratch_bf16.argtypes, lib.band_scratch_bf16.restype = [i, i, i, i, i, i], l
        lib.band_forward_bf16.argtypes = lib.band_forward.argtypes
        lib.band_backward_bf16.argtypes = lib.band_backward.argtypes
    return lib


def bf16_supported() -> bool:
    """Whether the bf16 kernel runs here: built (for AVX-512) and the CPU has AVX512-BF16 instructions."""
    lib = library()
    return lib is not None and hasattr(lib, "band_forward_bf16") and bool(torch._C._cpu._is_avx512_bf16_supported())


def library() -> ctypes.CDLL | None:
    """The compiled kernel, built on first call; ``None`` when it cannot be (see :func:`unusable_reason`)."""
    global _LIB, _LIB_ERROR
    with _LOCK:
        if _LIB is None and _LIB_ERROR is None:
            isa = _isa()
            if isa is None:
                _LIB_ERROR = (f"needs an x86 CPU with AVX2 or AVX-512 (torch reports "
                              f"{torch.backends.cpu.get_cpu_capability()!r})")
            else:
                try:
                    _LIB = _bind(ctypes.CDLL(str(_compile(isa))))
                except (OSError, RuntimeError) as e:
                    _LIB_ERROR = f"the kernel could not be built: {e}"
        return _LIB


def unusable_reason(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None,
                    band: tuple[int, int] | None, blocks: tuple[Tensor, int] | None = None) -> str | None:
    """``None`` when the native kernel can run this input, else why not: ``band`` for a sliding window,
    else ``blocks`` (:func:`block_ranges` and the query block size) for a block pattern."""
    if band is None and blocks is None:
        return NOT_NATIVE
    if q.device.type != "cpu":
        return f"runs on CPU only (input on {q.device.type})"
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return "cannot be traced or compiled (a foreign function)"
    if not q.dtype == k.dtype == v.dtype:
        return f"needs q, k, v of one dtype (got {q.dtype}, {k.dtype}, {v.dtype})"
    if q.dtype == torch.bfloat16 and library() is not None and not bf16_supported():
        return "runs bf16 only on CPUs with AVX512-BF16 instructions (this CPU lacks them; fp32 runs)"
    if q.dtype not in (torch.float32, torch.bfloat16):
        return f"runs fp32 and bf16 only (input {q.dtype})"
    if q.shape[-1] % VECTOR or v.shape[-1] % VECTOR:
        return f"needs head dimensions that are multiples of {VECTOR} (got {q.shape[-1]}, {v.shape[-1]})"
    if key_padding_mask is not None and _suffix_lengths(key_padding_mask) is None:
        return "key_padding_mask must pad at the end of each sequence"
    if library() is None:
        return _LIB_ERROR
    return None


def _suffix_lengths(mask: Tensor) -> Tensor | None:
    """Valid lengths (B,) when every row of the (B, N) padding mask pads a suffix, else None."""
    mask = mask.to(torch.bool)
    lengths = (~mask).sum(1)
    suffix = torch.arange(mask.shape[1], device=mask.device)[None, :] >= lengths[:, None]
    return lengths if bool((suffix == mask).all()) else None


def key_ranges(n: int, left: int, right: int, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(lo, hi), int32 (B or 1, N): query i sees keys lo <= j < hi."""
    i = torch.arange(n, dtype=torch.int32)
    lo = (i - left).clamp(min=0)[None]
    hi = (i + right + 1).clamp(max=n)[None]
    if lengths is not None:
        hi = torch.minimum(hi, lengths.to(torch.int32)[:, None])
        lo = lo.expand_as(hi)
    return lo.contiguous(), hi.contiguous()


def _pool(size: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_KEY
    with _LOCK:
        key = (size, os.getpid())
        if _POOL is None or _POOL_KEY != key:
            if _POOL is not None and _POOL_KEY[1] == key[1]:
                _POOL.shutdown(wait=False)
            _POOL, _POOL_KEY = ThreadPoolExecutor(size, thread_name_prefix="core_attn"), key
        return _POOL


def _ptr(t: Tensor, b: int, h: int) -> int:
    return t.data_ptr() + (b * t.stride(0) + h * t.stride(1)) * t.element_size()


def _run(slice_fn, b: int, h: int, scratch_floats: int) -> None:
    """``slice_fn(b, h, scratch_ptr)`` for every (batch, head), slices spread over torch's thread count."""
    from core_attn.kernels import WORKSPACE

    workers = max(1, min(torch.get_num_threads(), b * h))
    scratch = WORKSPACE.take(workers * scratch_floats, torch.float32, torch.device("cpu"))

    def work(t: int) -> None:
        ptr = scratch.data_ptr() + t * scratch_floats * 4
        for s in range(t, b * h, workers):
            slice_fn(s // h, s % h, ptr)

    if workers == 1:
        work(0)
        return
    for f in [_pool(workers).submit(work, t) for t in range(workers)]:
        f.result()


def _entry(lib: ctypes.CDLL, name: str, dtype: torch.dtype):
    return getattr(lib, name + ("_bf16" if dtype == torch.bfloat16 else ""))


def _keep_probs(q: Tensor, need: int) -> bool:
    """Training keeps the probabilities (``need`` bytes) for the backward within the blocked kernel's limit
    (the larger of ``kernels.SAVED_PROBS_BYTES`` and ``SAVED_PROBS_SHARE`` of available memory); else it
    recomputes them."""
    from core_attn import kernels

    return need <= kernels.SAVED_PROBS_BYTES or need <= kernels.saved_probs_limit(q.device)


def _forward(ctx, q: Tensor, k: Tensor, v: Tensor, lo: Tensor, hi: Tensor, scale: float, training: bool,
             segs: Tensor | None, block: int) -> Tensor:
    from core_attn.kernels import WORKSPACE, _new_heads

    lib = library()
    kernel, scratch_of = _entry(lib, "band_forward", q.dtype), _entry(lib, "band_scratch", q.dtype)
    b, h, n, d = q.shape
    dv = v.shape[-1]
    out = _new_heads(b, h, n, dv, q)
    lse = torch.empty(b, h, n, dtype=torch.float32)
    seg_ptr, nseg = (None, 0) if segs is None else (segs.data_ptr(), segs.shape[1])
    width = max(lib.band_tile_width(n, lo[i].data_ptr(), hi[i].data_ptr(), block, seg_ptr, nseg)
                for i in range(lo.shape[0]))
    sel = (lambda i: 0) if lo.shape[0] == 1 else (lambda i: i)
    per_slice = max(lib.band_probs_size(n, lo[i].data_ptr(), hi[i].data_ptr(), block, seg_ptr, nseg)
                    for i in range(lo.shape[0]))  # the probabilities of one (batch, head), in q's dtype
    probs = None
    if training and _keep_probs(q, b * h * per_slice * q.element_size()):  # to the workspace once released
        probs = WORKSPACE.take(b * h * per_slice, q.dtype, q.device)

    def one(bi: int, hi_: int, scratch: int) -> None:
        kept = None if probs is None else probs.data_ptr() + (bi * h + hi_) * per_slice * q.element_size()
        kernel(n, d, dv, _ptr(q, bi, hi_), q.stride(2), _ptr(k, bi, hi_), k.stride(2), _ptr(v, bi, hi_),
               v.stride(2), lo[sel(bi)].data_ptr(), hi[sel(bi)].data_ptr(), scale, block,
               _ptr(out, bi, hi_), out.stride(2), _ptr(lse, bi, hi_), scratch, kept, seg_ptr, nseg)

    _run(one, b, h, scratch_of(n, d, dv, block, width, 0))
    ctx.save_for_backward(q, k, v, out, lse, lo, hi, probs, segs)
    ctx.per_slice, ctx.block = per_slice, block
    ctx.scale, ctx.width = scale, width
    return out


def _backward(ctx, dout: Tensor, grad: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    from core_attn.kernels import _new_heads

    lib = library()
    q, k, v, out, lse, lo, hi, probs, segs = ctx.saved_tensors
    kernel, scratch_of = _entry(lib, "band_backward", q.dtype), _entry(lib, "band_scratch", q.dtype)
    b, h, n, d = q.shape
    dv = v.shape[-1]
    if dout.stride(-1) != 1 or dout.dtype != q.dtype:
        dout = dout.to(q.dtype).contiguous()
    seg_ptr, nseg = (None, 0) if segs is None else (segs.data_ptr(), segs.shape[1])
    if grad is not None:
        dq, dk, dvv = grad.unbind(0)
    else:
        dq, dk, dvv = _new_heads(b, h, n, d, q), _new_heads(b, h, n, d, k), _new_heads(b, h, n, dv, v)
    sel = (lambda i: 0) if lo.shape[0] == 1 else (lambda i: i)

    def one(bi: int, hi_: int, scratch: int) -> None:
        kept = None if probs is None else probs.data_ptr() + (bi * h + hi_) * ctx.per_slice * q.element_size()
        kernel(n, d, dv, _ptr(q, bi, hi_), q.stride(2), _ptr(k, bi, hi_), k.stride(2), _ptr(v, bi, hi_),
                          v.stride(2), _ptr(out, bi, hi_), out.stride(2), _ptr(dout, bi, hi_), dout.stride(2),
                          _ptr(lse, bi, hi_), lo[sel(bi)].data_ptr(), hi[sel(bi)].data_ptr(), ctx.scale, ctx.block,
                          _ptr(dq, bi, hi_), dq.stride(2), _ptr(dk, bi, hi_), dk.stride(2), _ptr(dvv, bi, hi_),
                          dvv.stride(2), scratch, kept, seg_ptr, nseg)

    _run(one, b, h, scratch_of(n, d, dv, ctx.block, ctx.width, 1))
    return dq, dk, dvv


class _BandAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, lo, hi, scale, training, segs, block):
        return _forward(ctx, q, k, v, lo, hi, scale, training, segs, block)

    @staticmethod
    def backward(ctx, dout):
        return (*_backward(ctx, dout, None), None, None, None, None, None, None)


class _PackedBandAttention(torch.autograd.Function):
    """The same over q, k, v given as one (3, B, H, N, D) tensor: one gradient with the input's strides
    (see :class:`core_attn.kernels._PackedBlockSparseAttention`)."""

    @staticmethod
    def forward(ctx, qkv, lo, hi, scale, training, segs, block):
        ctx.packed, ctx.dtype = (qkv.shape, qkv.stride()), qkv.dtype
        return _forward(ctx, *qkv.unbind(0), lo, hi, scale, training, segs, block)

    @staticmethod
    def backward(ctx, dout):
        from core_attn.kernels import WORKSPACE

        shape, stride = ctx.packed
        grad = WORKSPACE.take(math.prod(shape), ctx.dtype, dout.device).as_strided(shape, stride)
        _backward(ctx, dout, grad)
        return grad, None, None, None, None, None, None


def band_attention(q: Tensor, k: Tensor, v: Tensor, left: int, right: int, *,
                   key_padding_mask: Tensor | None = None, scale: float | None = None,
                   packed: Tensor | None = None) -> Tensor:
    """Exact sliding-window attention: query i sees keys ``i - left .. i + right`` (not padding).

    Args:
        q, k, v: (B, H, N, D) on CPU, fp32 (or bf16 with AVX512-BF16), D a multiple of 16.
        left, right: keys visible before and after each query (``right = 0``: causal).
        key_padding_mask: (B, N) bool, True = padding; padding must be a suffix of each row.
        scale: softmax scale (default ``1 / sqrt(D)``).
        packed: optional (3, B, H, N, D) tensor with ``(q, k, v) == packed.unbind(0)``: gradients go to it
            as one tensor with its strides.

    Returns:
        (B, H, N, Dv); a query that sees no key gets zeros.
    """
    reason = unusable_reason(q, k, v, key_padding_mask, (left, right))
    if reason is not None:
        raise ValueError(f"the native kernel cannot run this input: {reason}")
    return run_band(q, k, v, left, right, key_padding_mask=key_padding_mask, scale=scale, packed=packed)


def run_band(q: Tensor, k: Tensor, v: Tensor, left: int, right: int, *, key_padding_mask: Tensor | None = None,
             scale: float | None = None, packed: Tensor | None = None) -> Tensor:
    """:func:`band_attention` for an input :func:`unusable_reason` has already accepted (no second check)."""
    lengths = None if key_padding_mask is None else _suffix_lengths(key_padding_mask)
    return _run_attention(q, k, v, *key_ranges(q.shape[2], left, right, lengths), None, BLOCK_Q, scale, packed)


def block_ranges(kv_index: Tensor, block_k: int, n: int, all_keys: tuple[int, ...] = ()) -> Tensor:
    """(query blocks, S, 2) int32 for :func:`run_blocks`: each query block's key blocks (``kv_index``, (query
    blocks, C), -1 = none, each block listed once) as (start, length) ranges of keys, consecutive blocks merged,
    unused slots (0, 0); a range stops at the kernel's padded length (n rounded up to 16). The query blocks
    in ``all_keys`` (negative: from the end) get one range of every key instead."""
    kv = kv_index.cpu()
    valid = kv >= 0
    prev = torch.cat([torch.full_like(kv[:, :1], -2), kv[:, :-1]], 1)
    first = valid & ~((prev >= 0) & (kv == prev + 1))  # a range starts here
    slot = first.cumsum(1) - 1
    rows = torch.arange(kv.shape[0])[:, None].expand_as(kv)
    segs = torch.zeros(kv.shape[0], max(1, int(first.sum(1).max())), 2, dtype=torch.int64)
    segs[rows[first], slot[first], 0] = kv[first] * block_k
    segs[..., 1].index_put_((rows[valid], slot[valid]), torch.full_like(kv[valid], block_k), accumulate=True)
    npad = -(-n // VECTOR) * VECTOR
    segs[..., 1] = torch.minimum(segs[..., 1], npad - segs[..., 0]).clamp(min=0)
    for b in all_keys:
        segs[b] = 0
        segs[b, 0, 1] = npad
    return segs.to(torch.int32).contiguous()


def run_blocks(q: Tensor, k: Tensor, v: Tensor, segs: Tensor, block: int, *, causal: bool = False,
               key_padding_mask: Tensor | None = None, scale: float | None = None,
               packed: Tensor | None = None) -> Tensor:
    """Exact attention where the queries of block b (``block`` rows) see the key ranges ``segs[b]``
    (:func:`block_ranges`: disjoint, lengths multiples of 16), minus the keys after the query when ``causal``
    and a padded suffix; for an input :func:`unusable_reason` has accepted. Arguments and result as for
    :func:`band_attention`."""
    lengths = None if key_padding_mask is None else _suffix_lengths(key_padding_mask)
    n = q.shape[2]
    lo, hi = key_ranges(n, n, 0 if causal else n, lengths)  # every key before the padding (and the query)
    return _run_attention(q, k, v, lo, hi, segs, block, scale, packed)


def _run_attention(q, k, v, lo, hi, segs, block, scale, packed) -> Tensor:
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if packed is not None and packed.stride(-1) == 1:
        training = torch.is_grad_enabled() and packed.requires_grad
        return _PackedBandAttention.apply(packed, lo, hi, scale, training, segs, block)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    return _BandAttention.apply(q, k, v, lo, hi, scale, training, segs, block)
