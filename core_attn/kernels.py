"""The eager block-sparse attention kernel (forward and backward) behind every pattern variant.

:func:`block_sparse_attention` runs one :class:`~core_attn.patterns.Part`: queries in blocks, each block
visiting a short list of key blocks gathered from a (possibly permuted) sequence. It is a custom
autograd function in the manner of FlashAttention: the forward keeps only the output and the row
log-sum-exp, the backward recomputes the scores block by block, so memory grows with the number of
visited pairs in one chunk, not with the whole pattern. :func:`pattern_attention` runs all parts of a
pattern and merges them exactly through their log-sum-exps.

References: Dao et al. 2022 (FlashAttention) for the recompute-in-backward scheme; Milakov &
Gimelshein 2018 for merging partial softmaxes.
"""

from __future__ import annotations

import math
import os
import threading

import torch
from torch import Tensor

from core_attn.patterns import Part, Pattern

# Elements of one chunk's score tensor (B * H * blocks * block_q * keys); ~8M fp32 = 32 MB.
CHUNK_ELEMENTS = 1 << 23
# Training keeps one part's softmax probabilities for the backward pass (else the backward recomputes
# them, one more score matmul, mask and exp: ~25% of a local layer's fwd+bwd at 64k tokens) up to the
# larger of SAVED_PROBS_BYTES and SAVED_PROBS_SHARE of the memory available when the forward runs, so
# layers keep theirs while memory lasts and the last quarter is never taken; 0 and 0 always recompute.
# The share can also be set for a whole process with the environment variable CORE_ATTN_SAVED_PROBS_SHARE.
SAVED_PROBS_BYTES = 512 << 20


def _share_from_env(name: str = "CORE_ATTN_SAVED_PROBS_SHARE", default: float = 0.25,
                    what: str = "training may keep softmax probabilities in; 0: always recompute them") -> float:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"{name}={text!r} must be a number between 0 and 1 (the share of the available memory "
                         f"{what})")
    return share


SAVED_PROBS_SHARE = _share_from_env()
# A plan keeps its hidden-pair masks across calls up to this size (computing them was ~10% of a local
# forward); inputs with a key padding mask recompute theirs every call.
MASK_CACHE_BYTES = 96 << 20
# CPU scratch buffers (saved probabilities, padded K/V, score chunks) are kept for later calls up to the
# larger of WORKSPACE_BYTES and WORKSPACE_SHARE of the memory available (counting what the workspace holds)
# when a buffer would exceed WORKSPACE_BYTES; WORKSPACE_BYTES = 0 turns the reuse off, WORKSPACE_SHARE = 0
# keeps the fixed limit (environment: CORE_ATTN_WORKSPACE_SHARE). A fresh buffer costs a page fault per
# 4 KiB on first touch: ~0.7 s of page faults per 16k local forward+backward here (its probabilities alone
# are 335 MB), and at 64k tokens a layer's buffers (~3.5 GB) outgrow the fixed limit.
WORKSPACE_BYTES = 1 << 30
WORKSPACE_SHARE = _share_from_env("CORE_ATTN_WORKSPACE_SHARE", 0.25,
                                  "the kernels' workspace may keep for later calls; 0: at most WORKSPACE_BYTES")
# bf16 inputs: scores, saved probabilities and score gradients stay in bf16 between the bf16 matmuls (the
# products are rounded to bf16 by the matmul either way); softmax runs in fp32 inside torch's kernel, the
# row log-sum-exp and the key/value gradient accumulators are fp32, and recomputed probabilities are
# computed in fp32. False: fp32 score buffers with a widening copy after every product and a narrowing
# copy before every matmul (five score-sized copies per forward+backward).
BF16_SCORES = True


class _Workspace:
    """Scratch buffers reused across calls (CPU only; the CUDA caching allocator already reuses memory).

    The workspace owns each buffer; :meth:`take` hands out a view of one that nobody else references
    (its storage's use count is 1: every tensor or view a caller or an autograd graph still holds counts),
    so a buffer comes back by itself when the last view dies: after a backward pass has released the
    saved probabilities, when activation checkpointing drops them, never while ``retain_graph`` keeps
    them. Buffers beyond ``WORKSPACE_BYTES`` in all are plain allocations, freed as usual."""

    def __init__(self):
        self.owned: list[Tensor] = []  # uint8 buffers
        self.lock = threading.Lock()

    @staticmethod
    def _idle(raw: Tensor) -> bool:
        return torch._C._storage_Use_Count(raw.untyped_storage()._cdata) == 1

    def take(self, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A 1-D tensor of ``numel`` elements, uninitialised."""
        if (device.type != "cpu" or WORKSPACE_BYTES <= 0 or torch.compiler.is_compiling() or torch.jit.is_tracing()
                or not _USE_COUNT):
            return torch.empty(numel, dtype=dtype, device=device)
        nbytes = numel * _itemsize(dtype)
        with self.lock:
            idle = [r for r in self.owned if self._idle(r)]
            fits = [r for r in idle if nbytes <= r.numel() <= 2 * nbytes]
            if fits:  # the smallest idle buffer that fits
                return min(fits, key=lambda r: r.numel())[:nbytes].view(dtype)
            total = sum(r.numel() for r in self.owned)
            limit = self.limit(total + nbytes, total, device)
            for r in sorted(idle, key=lambda r: r.numel()):  # make room: drop idle buffers that do not fit
                if total + nbytes <= limit:
                    break
                self.owned = [o for o in self.owned if o is not r]
                total -= r.numel()
            if total + nbytes > limit:
                return torch.empty(numel, dtype=dtype, device=device)
            raw = torch.empty(nbytes, dtype=torch.uint8, device=device)
            self.owned.append(raw)
            return raw.view(dtype)

    @staticmethod
    def limit(wanted: int, owned: int, device: torch.device) -> int:
        """Bytes the workspace may own: WORKSPACE_BYTES, or up to WORKSPACE_SHARE of the available memory
        (plus what it owns) when ``wanted`` exceeds that; memory is only read in that case."""
        if wanted <= WORKSPACE_BYTES:
            return WORKSPACE_BYTES
        return _memory_limit(WORKSPACE_BYTES, WORKSPACE_SHARE, device, held=owned)

    def clear(self) -> None:
        with self.lock:
            self.owned = []


_USE_COUNT = hasattr(torch._C, "_storage_Use_Count")
WORKSPACE = _Workspace()


def empty_workspace() -> None:
    """Free the scratch buffers kept for later calls (as ``torch.cuda.empty_cache`` does on GPU)."""
    WORKSPACE.clear()


# Linear layers take their outputs (and, in training, their input gradients) from the workspace above this
# many output elements: smaller ones come from malloc's pools, which already reuse their memory.
LINEAR_WORKSPACE_ELEMENTS = 1 << 20


class _WorkspaceLinear(torch.autograd.Function):
    """``F.linear`` whose output and input gradient are workspace buffers (see :func:`linear`)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        x2 = x.reshape(-1, x.shape[-1])
        y = WORKSPACE.take(x2.shape[0] * weight.shape[0], x.dtype, x.device).view(x2.shape[0], weight.shape[0])
        if bias is None:
            torch.mm(x2, weight.t(), out=y)
        else:
            torch.addmm(bias, x2, weight.t(), out=y)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = WORKSPACE.take(dy2.shape[0] * weight.shape[1], dy.dtype, dy.device).view(dy2.shape[0], -1)
            torch.mm(dy2, weight, out=dx)
            dx = dx.view(x.shape)
        if ctx.needs_input_grad[1]:
            dw = dy2.t().mm(x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0)
        return dx, dw, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; on CPU, a large output and its input gradient come from the workspace.

    A fresh buffer above glibc's mmap threshold (32 MB) is page-faulted in on first touch every step: at
    64k tokens a width-512 attention layer's projections allocate ~770 MB per training step that way.
    Under CPU autocast the operands are cast as autocast casts them (floating tensors other than fp64 to
    its dtype) and multiplied the same way. Eager CPU calls only; tracing or compiling this is ``F.linear``."""
    if (x.device.type != "cpu" or WORKSPACE_BYTES <= 0 or not _USE_COUNT or torch.compiler.is_compiling()
            or torch.jit.is_tracing() or x.numel() // max(x.shape[-1], 1) * weight.shape[0] < LINEAR_WORKSPACE_ELEMENTS):
        return torch.nn.functional.linear(x, weight, bias)
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        operands = [t for t in (x, weight, bias) if t is not None]
        if not all(t.is_floating_point() and t.dtype != torch.float64 for t in operands):
            return torch.nn.functional.linear(x, weight, bias)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast("cpu", enabled=False):
            return _WorkspaceLinear.apply(x, weight, bias)
    if x.dtype != weight.dtype or (bias is not None and bias.dtype != x.dtype):
        return torch.nn.functional.linear(x, weight, bias)
    return _WorkspaceLinear.apply(x, weight, bias)


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can take on ``device``: on CPU, Linux's ``MemAvailable`` capped by the cgroup's
    (container's) limit; on CUDA, free device memory plus what the caching allocator holds unused; ``None``
    where unknown."""
    try:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        if device.type != "cpu":
            return None
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        try:  # cgroup v2: a container's limit (\"max\" when unlimited)
            with open("/sys/fs/cgroup/memory.max") as f:
                limit = f.read().strip()
            if limit.isdigit():
                with open("/sys/fs/cgroup/memory.current") as f:
                    avail = min(avail, int(limit) - int(f.read().strip()))
        except OSError:
            pass
        return max(0, avail)
    except (OSError, StopIteration, ValueError, RuntimeError):
        return None


def _memory_limit(fixed: int, share: float, device: torch.device, held: int = 0) -> int:
    """The larger of ``fixed`` bytes and ``share`` of the memory available on ``device`` plus ``held`` (memory the
    caller holds and could give back); ``fixed`` when the share is 0 or the available memory unknown."""
    if share <= 0:
        return fixed
    avail = available_bytes(device)
    return fixed if avail is None else max(fixed, int(share * (avail + held)))


def saved_probs_limit(device: torch.device) -> int:
    """Bytes of probabilities a training forward keeps for its backward (see ``SAVED_PROBS_SHARE``)."""
    return _memory_limit(SAVED_PROBS_BYTES, SAVED_PROBS_SHARE, device)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics and gradient accumulators: fp32 for half types, fp64 stays fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _score_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores, probabilities and their gradients: bf16 inputs keep them in bf16 (``BF16_SCORES``), as the
    matmuls produce them; everything else, and traced runs (whose softmax takes separate passes), in
    :func:`_acc_dtype`."""
    if dtype == torch.bfloat16 and BF16_SCORES and not torch.compiler.is_compiling():
        return dtype
    return _acc_dtype(dtype)


def _chunk_blocks(b: int, h: int, block_q: int, keys: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, b * h * block_q * keys))


def _chunk_mask(part_mask, q_pos_b: Tensor, k_pos_b: Tensor, idx: Tensor, s: int, e: int,
                key_pad: Tensor | None) -> tuple[Tensor, Tensor]:
    """The boolean mask (Bm, Hm, c, bq, C * bk) of chunk [s, e) and the clamped key-block index."""
    blk = idx[..., s:e, :]
    valid_blk = blk >= 0
    blk0 = blk.clamp(min=0)
    kp = k_pos_b[..., blk0, :]  # (.., c, C, bk)
    kp = torch.where(valid_blk[..., None], kp, -1).flatten(-2)  # (.., c, C*bk)
    qp = q_pos_b[..., s:e, :]  # (.., c, bq)
    qi, kj = qp[..., :, None], kp[..., None, :]
    m = part_mask(qi, kj) & (kj >= 0) & (qi >= 0)
    if key_pad is not None:  # (B, n + 1): slot n is the padding position
        kp_i = torch.where(kp >= 0, kp, key_pad.shape[1] - 1)
        if kp_i.dim() == 2:  # positions shared by the batch: (B, 1, c, C*bk)
            pad = key_pad[:, kp_i][:, None]
        else:  # positions per batch element and head (LSH): (B, H, c, C*bk)
            bidx = torch.arange(key_pad.shape[0], device=kp.device).view(-1, *([1] * (kp_i.dim() - 1)))
            pad = key_pad[bidx, kp_i]
        m = m & ~pad[..., None, :]
    while m.dim() < 5:
        m = m[None]
    return m, blk0


def band_offset(kv_index: Tensor) -> int | None:
    """``o0`` when every listed key block of row r, column c is ``r + c + o0`` (a band, as local and
    BigBird-window plans are); ``None`` otherwise. Bands read their key blocks through a strided view
    (no gather) and accumulate key gradients by slices."""
    if kv_index.dim() != 2:
        return None
    rows, cols = kv_index.shape
    base = kv_index - torch.arange(rows, device=kv_index.device)[:, None] - torch.arange(cols, device=kv_index.device)
    vals = base[kv_index >= 0]
    if vals.numel() == 0 or not bool((vals == vals[0]).all()):
        return None
    return int(vals[0])


def _chunks(bh: int, nqb: int, cq: int) -> list[tuple[int, int, int, int]]:
    """Chunks (bh0, bh1, r0, r1) of the flattened (B * H, query blocks) grid, at most ``cq`` blocks each:
    whole rows of several heads when a head has at most ``cq`` blocks, else pieces of one head's row."""
    if nqb <= cq:
        g = max(1, cq // nqb)
        return [(s, min(bh, s + g), 0, nqb) for s in range(0, bh, g)]
    return [(i, i + 1, s, min(nqb, s + cq)) for i in range(bh) for s in range(0, nqb, cq)]


class _Keys:
    """Key (or value) blocks of one head-flattened tensor x (B * H, Lk, D), as each query block sees
    them: a strided window view for bands (no copy), a gather otherwise; and the matching scatter-add
    of gradients."""

    def __init__(self, x: Tensor, kv_index: Tensor, block_k: int, band: int | None):
        """x: (B, H, Lk, D), any strides."""
        b, h, lk, d = x.shape
        bh = b * h
        self.nkb, self.bk, self.d, self.band, self.kv_index = lk // block_k, block_k, d, band, kv_index
        self.cols = kv_index.shape[1]
        self.buf: Tensor | None = None
        if band is None:
            self.x = x.reshape(bh, self.nkb, block_k, d).contiguous()  # rows gathered as flat blocks
            self.lead = 0
        elif torch.compiler.is_compiling():  # pad whole blocks so that every row's window exists
            self.lead, tail = self._pads(kv_index.shape[0], band)
            self.x = torch.nn.functional.pad(x.reshape(bh, lk, d), (0, 0, self.lead * block_k, tail * block_k))
        else:  # the same, copied once from x's own layout into a reused buffer (no zero-fill of it all)
            self.lead, tail = self._pads(kv_index.shape[0], band)
            rows = (self.lead + self.nkb + tail) * block_k
            self.x = WORKSPACE.take(bh * rows * d, x.dtype, x.device).view(bh, rows, d)
            self.x[:, :self.lead * block_k].zero_()
            self.x[:, rows - tail * block_k:].zero_()
            self.x[:, self.lead * block_k:self.lead * block_k + lk].view(b, h, lk, d).copy_(x)

    def _pads(self, nqb: int, band: int) -> tuple[int, int]:
        """Blocks before and after the sequence that rows r + band .. r + band + cols - 1 reach."""
        return max(0, -band), max(0, nqb - 1 + band + self.cols - self.nkb)

    def window(self, i: int, r0: int, r1: int) -> Tensor:
        """Head i, query blocks r0..r1-1 -> (r1 - r0, cols * bk, D)."""
        if self.band is None:
            blk = self.kv_index[r0:r1].clamp(min=0).reshape(-1)
            if torch.compiler.is_compiling():
                return self.x[i, blk].reshape(r1 - r0, self.cols * self.bk, self.d)
            # gathered into one reused buffer (a window is consumed before the next is taken): fresh
            # tensors this size cost page faults that made the gather ~7x slower (measured)
            if self.buf is None or self.buf.numel() < blk.numel() * self.bk * self.d:
                self.buf = WORKSPACE.take(blk.numel() * self.bk * self.d, self.x.dtype, self.x.device)
            flat = self.x[i].view(self.nkb, self.bk * self.d)
            out = self.buf[:blk.numel() * self.bk * self.d].view(blk.numel(), self.bk * self.d)
            return torch.index_select(flat, 0, blk, out=out).view(r1 - r0, self.cols * self.bk, self.d)
        # offsets from the padded tensor itself (storage offset 0), which exporters translate faithfully
        start = self.x.storage_offset() + i * self.x.shape[1] * self.d + (r0 + self.band + self.lead) * self.bk * self.d
        return self.x.as_strided((r1 - r0, self.cols * self.bk, self.d), (self.bk * self.d, self.d, 1), start)

    def product_t(self, a: Tensor, i: int, r0: int, r1: int, out: Tensor, alpha: float = 1.0) -> Tensor:
        """out (c, bq, cols * bk) = alpha * a @ window(i, r0, r1)^T for a (c, bq, D): the scores q k^T, or dout v^T.

        bf16 bands on CPU multiply column by column, each key block a slice of the padded band: torch's bf16
        (oneDNN) bmm copies any operand that is neither contiguous nor a transposed contiguous batch, so the
        overlapping windows were copied on every call (measured at 16k, 2 threads: 3.5 vs 4.7-5.4 ms per
        head and chunk). Each product is the same dot product over D either way."""
        if (self.band is None or a.dtype != torch.bfloat16 or out.dtype != a.dtype or a.device.type != "cpu"
                or torch.compiler.is_compiling()):
            return _bmm(a, self.window(i, r0, r1).transpose(1, 2), out, alpha)
        c = r1 - r0
        a = _contiguous(a)  # once, not once per column
        blocks = self.x[i].view(-1, self.bk, self.d)
        first = r0 + self.band + self.lead
        for o in range(self.cols):
            kt = blocks[first + o:first + o + c].transpose(1, 2)  # (c, D, bk): a transposed contiguous batch
            _bmm(a, kt, out[..., o * self.bk:(o + 1) * self.bk], alpha)
        return out

    def grad_buffer(self, dtype: torch.dtype) -> Tensor:
        shape = (self.x.shape[0], self.x.shape[1] // self.bk if self.band is not None else self.nkb, self.bk * self.d)
        return WORKSPACE.take(math.prod(shape), dtype, self.x.device).view(shape).zero_()

    def scatter(self, acc: Tensor, i: int, r0: int, r1: int, contrib: Tensor) -> None:
        """acc (B * H, blocks, bk * D) += contributions (r1 - r0, cols * bk, D) of head i's blocks (bands: in any
        floating dtype, widened by the add itself)."""
        c = r1 - r0
        contrib = contrib.reshape(c, self.cols, self.bk * self.d)
        if self.band is None:
            acc[i].index_add_(0, self.kv_index[r0:r1].clamp(min=0).reshape(-1), contrib.reshape(c * self.cols, -1))
            return
        for o in range(self.cols):  # column o of rows r0..r1-1 is the slice of blocks r0 + o + band ...
            first = r0 + o + self.band + self.lead
            acc[i, first:first + c].add_(contrib[:, o])

    def unpad(self, acc: Tensor) -> Tensor:
        """The gradient buffer without the band's padding blocks: (B * H, Lk, D)."""
        if self.band is not None:
            acc = acc[:, self.lead:self.lead + self.nkb]
        return acc.reshape(acc.shape[0], self.nkb * self.bk, self.d)


class _Rows:
    """Head i = b * H + h of a (B, H, L, D) tensor as (L / block, block, D), a view whatever the tensor's
    strides: the layer's q, k, v arrive as views of one (B, L, 3, H, D) projection, and a reshape to
    (B * H, ...) would copy them when B > 1."""

    def __init__(self, x: Tensor, block: int):
        self.x, self.h, self.block = x, x.shape[1], block

    def __getitem__(self, i: int) -> Tensor:
        return self.x[i // self.h, i % self.h].unflatten(0, (-1, self.block))


def _new_heads(b: int, h: int, n: int, d: int, like: Tensor) -> Tensor:
    """An uninitialised (B, H, N, D) result laid out as (B, N, H, D): the layer's merge of heads
    (transpose + reshape to (B, N, H * D)) is then a view, not a copy. From the workspace: a result is
    a buffer nobody else can take while the caller holds it (see :class:`_Workspace`)."""
    if torch.compiler.is_compiling():
        return like.new_empty(b, h, n, d)
    return WORKSPACE.take(b * n * h * d, like.dtype, like.device).view(b, n, h, d).transpose(1, 2)


def _bmm(a: Tensor, b: Tensor, buf: Tensor, alpha: float = 1.0) -> Tensor:
    """alpha * (a @ b) written into ``buf`` (a reused buffer: fresh tensors this size cost page faults on
    CPU); half-precision inputs multiply in their own dtype and are widened into the buffer."""
    if a.dtype == buf.dtype:
        if alpha == 1.0:
            return torch.bmm(a, b, out=buf)
        return torch.baddbmm(buf, a, b, beta=0.0, alpha=alpha, out=buf)  # beta=0: buf's old values ignored
    # half inputs: the product in their dtype, into a reused scratch buffer (a fresh one per call cost page
    # faults), then widened into buf
    half = WORKSPACE.take(buf.numel(), a.dtype, a.device).view(buf.shape)
    if alpha == 1.0:
        torch.bmm(a, b, out=half)
    else:
        torch.baddbmm(half, a, b, beta=0.0, alpha=alpha, out=half)
    return buf.copy_(half)


def _contiguous(x: Tensor) -> Tensor:
    """``x`` itself when contiguous, else a contiguous copy in a reused buffer."""
    if x.is_contiguous():
        return x
    return WORKSPACE.take(x.numel(), x.dtype, x.device).view(x.shape).copy_(x)


def _narrow(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` in ``dtype`` (itself when it already is), through a reused buffer rather than a fresh tensor."""
    if x.dtype == dtype:
        return x
    return WORKSPACE.take(x.numel(), dtype, x.device).view(x.shape).copy_(x)


def _scores(qb: _Rows, keys: _Keys, bh0: int, bh1: int, r0: int, r1: int, out: Tensor, scale: float) -> Tensor:
    """scale * q k^T of heads bh0..bh1-1, query blocks r0..r1-1, into ``out`` (heads, c, bq, C * bk): one
    routine for the forward, its exact-lse fallback and the recomputing backward, so all see equal scores."""
    for i in range(bh0, bh1):
        keys.product_t(qb[i][r0:r1], i, r0, r1, out[i - bh0], scale)
    return out


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _column_runs(hide: Tensor) -> list[tuple[int, int]]:
    """Runs [lo, hi) of key columns where ``hide`` (.., C * bk) hides something: a band hides pairs
    in its first and last key blocks only, so the rest of the scores need no masking pass."""
    cols = hide.reshape(-1, hide.shape[-1]).any(0).tolist()
    runs, start = [], None
    for j, hidden in enumerate(cols + [False]):
        if hidden and start is None:
            start = j
        elif not hidden and start is not None:
            runs.append((start, j))
            start = None
    return runs if len(runs) <= 4 else [(runs[0][0], runs[-1][1])]


MAX_MASK_SEGMENTS = 8  # more distinct block segments than this: mask the union of their columns instead


def _block_segments(hide: Tensor) -> list[tuple[int, int, list[tuple[int, int]]]] | None:
    """Runs [j0, j1) of consecutive query blocks of ``hide`` (.., c, bq, C * bk) whose rows hide the same key
    columns, each with those column runs (:func:`_column_runs`); ``None`` past ``MAX_MASK_SEGMENTS``."""
    cols = hide.flatten(0, 1).any(0).any(1)  # (c, C * bk): the columns any row of block j hides
    same = (cols[1:] == cols[:-1]).all(-1).tolist()
    starts = [0] + [j + 1 for j, eq in enumerate(same) if not eq]
    if len(starts) > MAX_MASK_SEGMENTS:
        return None
    ends = starts[1:] + [cols.shape[0]]
    return [(j0, j1, _column_runs(hide[..., j0:j1, :, :])) for j0, j1 in zip(starts, ends)]


def _bias(hide: Tensor, dtype: torch.dtype) -> Tensor:
    """The additive 0 / -inf bias of ``hide`` (blocks, bq, width): (1, bq, width) when every block hides the same
    pairs (broadcast by the add), else one per block (always when tracing: the test reads tensor values)."""
    if hide.shape[0] > 1 and not torch.compiler.is_compiling() and bool((hide == hide[:1]).all()):
        hide = hide[:1]
    return torch.zeros(hide.shape, dtype=dtype, device=hide.device).masked_fill_(hide, float("-inf"))


class _Hidden:
    """The pairs a block range hides, applied to its scores as -inf: an additive 0/-inf bias when one
    mask serves every head (adding is several times faster than ``masked_fill_`` on CPU), else a
    boolean mask per head."""

    def __init__(self, hide: Tensor, dtype: torch.dtype):
        # per run of query blocks (segments [j0, j1) of the block range): the column runs its rows hide; a
        # band's first and last blocks also hide the padding before and after the sequence, its inner blocks
        # only the edge triangles, so masking by segment skips the columns a block hides nowhere. Past
        # MAX_MASK_SEGMENTS one segment masks the union; torch.export / torch.compile cannot branch on tensor
        # values, so there one segment masks every column
        if torch.compiler.is_compiling():
            self.segments = [(0, hide.shape[2], [(0, hide.shape[-1])])]
        else:
            self.segments = _block_segments(hide) or [(0, hide.shape[2], _column_runs(hide))]
        self.shared = hide.shape[0] * hide.shape[1] == 1
        if self.shared:
            # a segment whose blocks hide the same pairs shares one (1, bq, width) bias, broadcast over them
            self.bias = [[_bias(hide[0, 0, j0:j1, :, lo:hi], dtype) for lo, hi in runs]
                         for j0, j1, runs in self.segments]
            self.hide = None
            self.nbytes = sum(b.numel() * b.element_size() for seg in self.bias for b in seg)
        else:
            self.hide = hide  # (Bm, Hm, c, bq, C * bk) bool
            self.nbytes = hide.numel()
        # per row: a visible column (the first), whose score and probability give the row's log-sum-exp
        # without two max passes over the scores; rows with no visible key (dead) are listed apart
        # (only eager runs use them: traced runs take separate softmax passes, see the forward)
        self.ref = self.dead = None
        self.any_dead = False
        if not torch.compiler.is_compiling():
            visible = ~hide
            self.ref = visible.to(torch.uint8).argmax(-1, keepdim=True)  # (Bm, Hm, c, bq, 1)
            self.dead = ~visible.any(-1, keepdim=True)
            self.any_dead = bool(self.dead.any())
            self.nbytes += self.ref.numel() * 9

    def _per_head(self, t: Tensor, h: int, bh0: int, bh1: int) -> Tensor:
        """t (Bm, Hm, ...) -> (heads bh0..bh1-1 or 1, ...)."""
        bm, hm = t.shape[:2]
        if bm * hm == 1:
            return t[0]
        idx = torch.arange(bh0, bh1, device=t.device)
        bi = torch.div(idx, h, rounding_mode="floor") if bm > 1 else torch.zeros_like(idx)
        hi_ = torch.remainder(idx, h) if hm > 1 else torch.zeros_like(idx)
        return t[bi, hi_]

    def rows(self, sc: Tensor, h: int, bh0: int, bh1: int) -> tuple[Tensor, Tensor]:
        """The reference column per row expanded to sc's rows, and the dead rows (broadcastable)."""
        ref = self._per_head(self.ref, h, bh0, bh1).expand(*sc.shape[:-1], 1)
        return ref, self._per_head(self.dead, h, bh0, bh1)

    def apply(self, sc: Tensor, h: int, bh0: int, bh1: int) -> None:
        """sc: (heads bh0..bh1-1, c, bq, C * bk) scores of this block range."""
        if self.shared:
            for (j0, j1, runs), biases in zip(self.segments, self.bias):
                for (lo, hi), bias in zip(runs, biases):
                    sc[:, j0:j1, :, lo:hi].add_(bias)
            return
        hide = self._per_head(self.hide, h, bh0, bh1)  # (heads, c, bq, C * bk)
        for j0, j1, runs in self.segments:
            for lo, hi in runs:
                sc[:, j0:j1, :, lo:hi].masked_fill_(hide[:, j0:j1, :, lo:hi], float("-inf"))


def _chunk_hidden(masks: dict, part_mask, q_pos_b: Tensor, k_pos_b: Tensor, kv_index: Tensor, key_pad,
                  r0: int, r1: int, dtype: torch.dtype, persist: dict | None = None) -> _Hidden:
    """The hidden pairs of query blocks r0..r1-1, computed once per block range and kept for the
    backward pass (``masks``) and, within ``MASK_CACHE_BYTES``, for later calls (``persist``)."""
    if (r0, r1) not in masks:
        key = (r0, r1, dtype)
        if persist is not None and key in persist:
            masks[(r0, r1)] = persist[key]
        else:
            m, _ = _chunk_mask(part_mask, q_pos_b, k_pos_b, kv_index, r0, r1, key_pad)
            hidden = masks[(r0, r1)] = _Hidden(~m, dtype)
            if persist is not None and persist.get("bytes", 0) + hidden.nbytes <= MASK_CACHE_BYTES:
                persist[key] = hidden
                persist["bytes"] = persist.get("bytes", 0) + hidden.nbytes
    return masks[(r0, r1)]


class _BlockSparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, q_pos, k_pos, kv_index, block_q, block_k, part_mask, key_pad, scale, band, training,
                persist):
        ctx.packed = None
        return _forward(ctx, q, k, v, q_pos, k_pos, kv_index, block_q, block_k, part_mask, key_pad, scale, band,
                        training, persist)

    @staticmethod
    def backward(ctx, dout, dlse):
        return (*_backward(ctx, dout, dlse), None, None, None, None, None, None, None, None, None, None, None)


class _PackedBlockSparseAttention(torch.autograd.Function):
    """The same over q, k, v given as one (3, B, H, N, D) tensor (a view of the layer's qkv projection):
    the backward writes dq, dk, dv into one gradient with the input's strides, so the projection's
    backward reads it as is (three separate gradients cost a stack and a relayout copy, ~5% of a layer)."""

    @staticmethod
    def forward(ctx, qkv, q_pos, k_pos, kv_index, block_q, block_k, part_mask, key_pad, scale, band, training,
                persist):
        ctx.packed = (qkv.shape, qkv.stride())
        q, k, v = qkv.unbind(0)
        return _forward(ctx, q, k, v, q_pos, k_pos, kv_index, block_q, block_k, part_mask, key_pad, scale, band,
                        training, persist)

    @staticmethod
    def backward(ctx, dout, dlse):
        return (_backward(ctx, dout, dlse), None, None, None, None, None, None, None, None, None, None, None)


def _forward(ctx, q, k, v, q_pos, k_pos, kv_index, block_q, block_k, part_mask, key_pad, scale, band, training,
             persist):
    b, h, lq, d = q.shape
    lk, dv = k.shape[2], v.shape[-1]
    bh, nqb, nkb = b * h, lq // block_q, lk // block_k
    acc, sdt = _acc_dtype(q.dtype), _score_dtype(q.dtype)
    # the softmax scale is applied by the score matmul itself (baddbmm's alpha): no scaled copy of q,
    # which at long lengths is a whole activation (512 MB at 1M tokens x 128 channels)
    qb = _Rows(q, block_q)
    keys = _Keys(k, kv_index, block_k, band)
    vals = _Keys(v, kv_index, block_k, band)
    q_pos_b = q_pos.view(*q_pos.shape[:-1], nqb, block_q)
    k_pos_b = k_pos.view(*k_pos.shape[:-1], nkb, block_k)
    ck = kv_index.shape[-1] * block_k
    out = _new_heads(b, h, lq, dv, q)
    outb = _Rows(out, block_q)
    lse = torch.empty(bh, nqb, block_q, dtype=acc, device=q.device)
    cq = _chunk_blocks(1, 1, block_q, ck)
    chunks = _chunks(bh, nqb, cq)
    # Training keeps the probabilities when they fit (saved_probs_limit): the backward then skips
    # recomputing scores, mask and exp, a third of its work; otherwise it recomputes.
    need = bh * nqb * block_q * ck * _itemsize(sdt)
    keep = training and (need <= SAVED_PROBS_BYTES or (not torch.compiler.is_compiling()
                                                       and need <= saved_probs_limit(q.device)))
    if keep:  # back to the workspace once the graph releases it
        probs = WORKSPACE.take(bh * nqb * block_q * ck, sdt, q.device).view(bh, nqb, block_q, ck)
    else:
        scores = WORKSPACE.take(min(cq, bh * nqb) * block_q * ck, sdt, q.device)
    masks: dict = {}
    fused_softmax = not torch.compiler.is_compiling()  # exporters do not take the aliased out= call
    for chunk in chunks:
        bh0, bh1, r0, r1 = chunk
        c = r1 - r0
        hidden = _chunk_hidden(masks, part_mask, q_pos_b, k_pos_b, kv_index, key_pad, r0, r1, sdt, persist)
        sc = probs[bh0:bh1, r0:r1] if keep else scores[:(bh1 - bh0) * c * block_q * ck].view(bh1 - bh0, c, block_q, ck)
        _scores(qb, keys, bh0, bh1, r0, r1, sc, scale)
        hidden.apply(sc, h, bh0, bh1)
        if fused_softmax:
            # torch's softmax kernel in place (max, exp + sum, scale: one vectorised routine; measured
            # 25 vs 33 ms for 10M scores on one core against separate sub/exp/sum/div passes); the
            # log-sum-exp follows from one visible column j per row: p_j = exp(s_j - lse)
            ref, dead = hidden.rows(sc, h, bh0, bh1)
            s_ref = sc.gather(-1, ref).to(acc)
            p = torch.ops.aten._softmax.out(sc, -1, False, out=sc)
            p_ref = p.gather(-1, ref).to(acc)
            lse_c = s_ref - p_ref.log()
            if hidden.any_dead:  # rows with no visible key: softmax gives NaN there
                p.masked_fill_(dead, 0.0)
                lse_c.masked_fill_(dead, float("-inf"))
            low = p_ref < 1e-30  # j's probability underflows (scores ~70 apart): recompute these rows
            if hidden.any_dead:
                low &= ~dead
            if bool(low.any()):
                full = _scores(qb, keys, bh0, bh1, r0, r1, torch.empty_like(sc), scale)
                hidden.apply(full, h, bh0, bh1)
                lse_c = torch.where(low, full.to(acc).logsumexp(-1, keepdim=True), lse_c)
            lse[bh0:bh1, r0:r1] = lse_c.squeeze(-1)
        else:
            mx = sc.amax(-1, keepdim=True)
            mx.masked_fill_(torch.isinf(mx), 0.0)  # rows with no visible key: exp(-inf) = 0 below
            p = sc.sub_(mx).exp_()
            l = p.sum(-1, keepdim=True)
            lse[bh0:bh1, r0:r1] = (mx + l.log()).squeeze(-1)
            p.div_(l.clamp_min(1e-30))
        pv = _narrow(p, v.dtype)
        for i in range(bh0, bh1):
            torch.bmm(pv[i - bh0], vals.window(i, r0, r1), out=outb[i][r0:r1])
    lse = lse.view(b, h, lq)
    ctx.save_for_backward(q, k, v, kv_index, out, lse, probs if keep else None)
    ctx.masks, ctx.meta = masks, (block_q, block_k, scale, chunks, band, q_pos_b, k_pos_b, key_pad, part_mask)
    # where the probabilities are kept, so are the keys and values in the kernel's layout (a padded band, or
    # flat blocks; 2 D numbers per query against C * bk probabilities, a fifth at D = 64, w = 256): the
    # backward reads them without copying them again
    ctx.kv = (keys, vals) if keep else None
    ctx.set_materialize_grads(False)  # an unused lse gets no zero-filled gradient to multiply
    return out, lse


def _backward(ctx, dout, dlse):
    """(dq, dk, dv), or for a packed input one (3, B, H, N, D) gradient with the input's strides."""
    q, k, v, kv_index, out, lse, probs = ctx.saved_tensors
    block_q, block_k, scale, chunks, band, q_pos_b, k_pos_b, key_pad, part_mask = ctx.meta
    b, h, lq, dv = out.shape
    bh, nqb, d, lk = b * h, lq // block_q, q.shape[3], k.shape[2]
    qb = _Rows(q, block_q)  # the scale is applied by the matmuls (alpha), as in forward
    acc, sdt = _acc_dtype(q.dtype), _score_dtype(q.dtype)
    ck = kv_index.shape[-1] * block_k
    lse_safe = lse.masked_fill(torch.isinf(lse), 0.0).view(bh, nqb, block_q, 1)  # no visible key
    # dL/dscores = p * (dp - rowsum(dp * p) + dlse), and rowsum(dp * p) = rowsum(dout * out)
    # (FlashAttention's D term): one (B, H, Lq) vector instead of a pass over the scores.
    if dout is None:  # only the lse was used
        dout = torch.zeros_like(out)
        delta = torch.zeros(b, h, lq, dtype=acc, device=out.device)
    else:  # half inputs: the products in their dtype (no widened copies of dout and out), summed in fp32
        delta = (dout * out).sum(-1, dtype=acc)
    if dlse is not None:
        delta = delta - dlse.to(acc)
    delta = delta.view(bh, nqb, block_q, 1).to(sdt)  # bf16 scores: a mixed-dtype pass would cost two casts
    doutb = _Rows(dout, block_q)
    if ctx.kv is not None:
        keys, vals = ctx.kv
        ctx.kv = None
    else:
        keys = _Keys(k, kv_index, block_k, band)
        vals = _Keys(v, kv_index, block_k, band)
    grad = None
    if ctx.packed is not None:  # the input's strides: a permutation of a dense layout
        shape, stride = ctx.packed
        grad = WORKSPACE.take(math.prod(shape), q.dtype, q.device).as_strided(shape, stride)
    dq = _new_heads(b, h, lq, d, q) if grad is None else grad[0]
    dqb = _Rows(dq, block_q)
    dk, dvv = keys.grad_buffer(acc), vals.grad_buffer(acc)
    cq = max(ch[3] - ch[2] for ch in chunks) * max(ch[1] - ch[0] for ch in chunks)
    pbuf = None if probs is not None else WORKSPACE.take(cq * block_q * ck, acc, q.device)
    dpbuf = WORKSPACE.take(cq * block_q * ck, sdt, q.device)
    cmax = max(ch[3] - ch[2] for ch in chunks)
    # key/value gradient products: a band adds them to the fp32 accumulators straight from the input dtype
    # (half products widened by the add itself, not by a separate copy); gathered plans scatter them in acc
    pdt = q.dtype if band is not None else acc
    dk_buf = WORKSPACE.take(cmax * ck * d, pdt, q.device).view(cmax, ck, d)
    dv_buf = WORKSPACE.take(cmax * ck * dv, pdt, q.device).view(cmax, ck, dv)
    for chunk in chunks:
        bh0, bh1, r0, r1 = chunk
        c, nh = r1 - r0, bh1 - bh0
        ds = dpbuf[:nh * c * block_q * ck].view(nh, c, block_q, ck)
        for i in range(bh0, bh1):
            vals.product_t(doutb[i][r0:r1], i, r0, r1, ds[i - bh0])
        if probs is not None:
            p = probs[bh0:bh1, r0:r1]
        else:  # recompute the probabilities
            hidden = _chunk_hidden(ctx.masks, part_mask, q_pos_b, k_pos_b, kv_index, key_pad, r0, r1, acc)
            p = _scores(qb, keys, bh0, bh1, r0, r1, pbuf[:nh * c * block_q * ck].view(nh, c, block_q, ck), scale)
            hidden.apply(p, h, bh0, bh1)
            p.sub_(lse_safe[bh0:bh1, r0:r1]).exp_()
        pl = _narrow(p, q.dtype)
        ds.sub_(delta[bh0:bh1, r0:r1]).mul_(pl if pl.dtype == ds.dtype else p)
        dsl = _narrow(ds, q.dtype)
        for i in range(bh0, bh1):
            # scores = scale * q k^T: dq = scale * ds k, dk = scale * ds^T q
            _bmm(dsl[i - bh0], keys.window(i, r0, r1), dqb[i][r0:r1], scale)
            vals.scatter(dvv, i, r0, r1, _bmm(pl[i - bh0].transpose(1, 2), doutb[i][r0:r1], dv_buf[:c]))
            keys.scatter(dk, i, r0, r1, _bmm(dsl[i - bh0].transpose(1, 2), qb[i][r0:r1], dk_buf[:c], scale))
    dk = keys.unpad(dk).view(b, h, lk, d)
    dvv = vals.unpad(dvv).view(b, h, lk, dv)
    if grad is not None:
        grad[1].copy_(dk)
        grad[2].copy_(dvv)
        return grad
    return dq, dk.to(k.dtype), dvv.to(v.dtype)


def block_sparse_attention(q: Tensor, k: Tensor, v: Tensor, part: Part, part_mask=None,
                           key_pad: Tensor | None = None, scale: float | None = None,
                           cache_masks: bool = False, packed: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Attention over the pairs of one part, in the part's visiting order.

    Args:
        q, k, v: (B, H, Lq, D), (B, H, Lk, D), (B, H, Lk, Dv), already gathered in visiting order.
        part: the plan (block sizes, key-block lists, original positions).
        part_mask: predicate over original positions (default ``part.mask``).
        key_pad: (B, n + 1) bool, True = padded key; the last slot stands for positions of -1.
        scale: softmax scale (default ``1 / sqrt(D)``).
        cache_masks: keep the hidden-pair masks in ``part.mask_cache`` for later calls; only valid when
            ``part_mask`` is a fixed function of the part (as :func:`pattern_attention` makes it).
        packed: (3, B, H, Lq, D) with ``(q, k, v) == packed.unbind(0)``: gradients go to ``packed`` as one
            tensor with its strides instead of to q, k and v.

    Returns:
        ``out`` (B, H, Lq, Dv) and ``lse`` (B, H, Lq) in fp32; rows with no visible key give 0 and -inf.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if part.band is None:  # computed once per plan; False = not a band
        offset = band_offset(part.kv_index)
        part.band = False if offset is None else offset
    band = None if part.band is False else part.band
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    persist = part.mask_cache if cache_masks and key_pad is None and not torch.compiler.is_compiling() else None
    meta = (part.q_pos, part.k_pos, part.kv_index, part.block_q, part.block_k, part_mask or part.mask, key_pad,
            scale, band)
    if packed is not None and not torch.compiler.is_compiling():
        training = torch.is_grad_enabled() and packed.requires_grad
        return _PackedBlockSparseAttention.apply(packed, *meta, training, persist)
    return _BlockSparseAttention.apply(q, k, v, *meta, training, persist)


def _take(x: Tensor, pos: Tensor, identity: bool, n: int) -> Tensor:
    """Rows of x (B, H, n, D) at positions ``pos`` (-1 -> a zero row)."""
    if identity:
        pad = pos.numel() - n
        return torch.nn.functional.pad(x, (0, 0, 0, pad)) if pad else x
    rows = x.index_select(2, pos.clamp(min=0))  # only the rows taken are copied, never all of x
    valid = pos >= 0
    if not torch.compiler.is_compiling() and bool(valid.all()):
        return rows
    return rows * valid[:, None].to(rows.dtype)


def _place(y: Tensor, pos: Tensor, identity: bool, n: int, fill: float) -> Tensor:
    """Inverse of :func:`_take` for outputs: y (B, H, L, ...) in visiting order -> (B, H, n, ...)."""
    if identity:
        return y[:, :, :n]
    shape = list(y.shape)
    shape[2] = n + 1
    base = y.new_full(shape, fill)
    return base.index_copy(2, torch.where(pos >= 0, pos, n), y)[:, :, :n]


def merge_partials(outs: list[Tensor], lses: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Combine softmax attention over disjoint key sets: weights exp(lse_p - lse) (exact)."""
    if len(outs) == 1:
        return outs[0], lses[0]
    # Not torch.logsumexp: its backward is NaN on rows where every partial is -inf (a query that sees
    # no key at all). The shift mx is a constant of the result, so detaching it is exact.
    stacked = torch.stack(lses)  # (P, ...)
    mx = stacked.amax(0).detach()
    mx = torch.where(torch.isinf(mx), torch.zeros_like(mx), mx)
    w = torch.exp(stacked - mx)  # 0 for -inf partials
    total = w.sum(0)
    seen = total > 0
    total = torch.where(seen, total, torch.ones_like(total))
    out = None
    for o, wp in zip(outs, w):
        term = o * (wp / total).unsqueeze(-1).to(o.dtype)
        out = term if out is None else out + term
    lse = torch.where(seen, mx + total.log(), torch.full_like(mx, float("-inf")))
    return out, lse


def pattern_attention(q: Tensor, k: Tensor, v: Tensor, pattern: Pattern,
                      key_padding_mask: Tensor | None = None, scale: float | None = None,
                      parts: list[Part] | None = None, packed: Tensor | None = None) -> Tensor:
    """Exact attention restricted to ``pattern`` (self-attention: q, k, v share the length N).

    Args:
        q, k, v: (B, H, N, D).
        pattern: the sparsity pattern; causal patterns also hide j > i.
        key_padding_mask: (B, N) bool, True marks padding keys (``torch.nn.MultiheadAttention``'s rule).
        parts: precomputed ``pattern.parts(N)`` (cached by the attention modules).
        packed: optional (3, B, H, N, D) tensor with ``(q, k, v) == packed.unbind(0)`` (the layer's qkv
            projection): a pattern of one part in natural order then sends one gradient to it.

    Returns:
        (B, H, N, Dv); a query that sees no key gets zeros.
    """
    n = q.shape[2]
    parts = pattern.parts(n, q.device) if parts is None else parts
    key_pad = None
    if key_padding_mask is not None:
        key_pad = torch.nn.functional.pad(key_padding_mask.to(torch.bool), (0, 1), value=True)
    outs, lses, row_parts = [], [], []
    for p, part in enumerate(parts):
        earlier = [pp.mask for pp in parts[:p]]

        def part_mask(i, j, part=part, earlier=earlier):
            if part.exact and not earlier and not pattern.is_causal:  # every listed pair is visible:
                return (i >= 0) & (j >= 0)  # only padding (-1) is hidden, no position arithmetic
            m = part.mask(i, j)
            for em in earlier:  # each pair belongs to the first part that visits it
                m = m & ~em(i, j)
            if pattern.is_causal:
                m = m & (j <= i)
            return m

        qp = _take(q, part.q_pos, part.identity_q, n)
        kp = _take(k, part.k_pos, part.identity_k, n)
        vp = _take(v, part.k_pos, part.identity_k, n)
        one = (packed is not None and len(parts) == 1 and part.identity_q and part.identity_k
               and part.q_pos.numel() == n and part.k_pos.numel() == n)  # no padding to whole blocks
        o, lse = block_sparse_attention(qp, kp, vp, part, part_mask, key_pad, scale, cache_masks=True,
                                        packed=packed if one else None)
        few_rows = not part.identity_q and part.q_pos.dim() == 1 and not torch.compiler.is_compiling()
        if few_rows and part.rows.numel() < n // 2:
            row_parts.append((part.rows, o[:, :, part.row_slots], lse[:, :, part.row_slots]))
            continue
        outs.append(_place(o, part.q_pos, part.identity_q, n, 0.0))
        lses.append(_place(lse, part.q_pos, part.identity_q, n, float("-inf")))
    if not outs:  # only few-row parts: place the first one in full
        rows, o, lse = row_parts.pop(0)
        outs.append(_place(o, rows, False, n, 0.0))
        lses.append(_place(lse, rows, False, n, float("-inf")))
    out, lse = merge_partials(outs, lses)
    # Parts that cover a few rows (global tokens' rows) merge on those rows only: a full-size placement
    # and merge would cost several passes over (B, H, N, D) for a handful of queries.
    for rows, o, l in row_parts:
        merged_o, merged_l = merge_partials([out.index_select(2, rows), o], [lse.index_select(2, rows), l])
        out, lse = out.index_copy(2, rows, merged_o), lse.index_copy(2, rows, merged_l)
    return out
