"""Streaming execution: the outputs of one pass over an input of any length, in memory bounded by a chunk.

A stack of local layers has a finite receptive field: with sliding-window attention of ``w`` keys on each
side in each of ``L`` blocks, output ``i`` reads inputs ``i - L w .. i + L w`` and nothing else (everything
else in a block acts position by position). So the stack can run over a slice of the input holding the
outputs wanted plus a *halo* of that receptive field on each side: outputs near the slice's cut edges are
wrong (they miss keys beyond the cut), but the error moves inward by at most one window per block and
never reaches the outputs kept. The outputs kept are then exactly those of one pass (same positions for
rotary and learned embeddings, :func:`position_offset`), while memory holds one slice, not the sequence.

:func:`receptive_field` derives the halo from the model (each block's window and dilation); parts that
need the whole sequence (global tokens, BigBird's random blocks, strided patterns, kernel and low-rank
approximations, dense attention) raise an error naming the block and the reason. :func:`stream` runs any
per-position function with a known reach over an iterator of input chunks; :func:`stream_encoder` does it
for a :class:`core_attn.layers.TransformerEncoder`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor, nn

from core_attn.validation import check_int
from core_attn.attention.local import LocalAttention


class Reach(NamedTuple):
    """How far an output position reads its input: ``left`` positions before it, ``right`` after it."""

    left: int
    right: int

    def __add__(self, other: Reach) -> Reach:  # type: ignore[override]  # stacked layers: reaches add up
        return Reach(self.left + other.left, self.right + other.right)


def attention_reach(attention: nn.Module) -> Reach:
    """The reach of one attention variant, or ``ValueError`` saying why it needs the whole sequence."""
    name = getattr(attention, "name", type(attention).__name__)
    if isinstance(attention, LocalAttention):
        if attention.global_tokens:
            raise ValueError(f"attention={name} with global_tokens={attention.global_tokens}: a global token reads "
                             "every position, so no output is final before the input ends; stream without global "
                             "tokens")
        d = attention.dilation
        return Reach(attention.window_left * d, attention.window_right * d)
    why = {"dense": "every query reads every key",
           "bigbird": "its random and global blocks connect positions any distance apart",
           "sparse_fixed": "its summary columns connect positions any distance apart",
           "sparse_strided": "its strided heads connect positions any distance apart",
           "lsh": "its hash buckets gather keys from the whole sequence",
           "perceiver": "its latents read the whole sequence",
           "hierarchical": "its coarse levels summarise the whole sequence"}.get(
        name, "it mixes every position into every output (a kernel, low-rank or content-based approximation)")
    raise ValueError(f"attention={name} cannot be streamed exactly: {why}; streaming needs a bounded receptive "
                     "field (attention=local without global tokens)")


def receptive_field(encoder: nn.Module) -> Reach:
    """The summed reach of the attention of every block of ``encoder`` (anything with ``.blocks`` whose
    blocks hold ``attn.attention``); errors name the block."""
    total = Reach(0, 0)
    for i, block in enumerate(encoder.blocks):
        try:
            total = total + attention_reach(block.attn.attention)
        except ValueError as e:
            raise ValueError(f"block {i}: {e}") from None
    return total


@contextmanager
def position_offset(module: nn.Module, offset: int):
    """Within the block, ``module``'s positional parts (rotary tables, learned embeddings) treat the first
    input position as absolute position ``offset``."""
    parts = [m for m in module.modules() if hasattr(m, "position_offset")]
    saved = [m.position_offset for m in parts]
    for m in parts:
        m.position_offset = int(offset)
    try:
        yield module
    finally:
        for m, value in zip(parts, saved):
            m.position_offset = value


def stream(forward: Callable[[Tensor, int], Tensor], chunks: Iterable[Tensor], *, reach: Reach, step: int,
           dim: int = 1) -> Iterator[Tensor]:
    """Run ``forward`` over an input arriving in ``chunks`` (any sizes along ``dim``) and yield its outputs
    along ``dim`` in order, ``step`` positions at a time (the last piece shorter), each equal to the
    corresponding slice of ``forward`` over the whole input.

    ``forward(x, offset)`` maps a slice ``x`` of the input starting at absolute position ``offset`` to one
    output per position along ``dim``; an output must depend only on inputs at most ``reach.left`` before
    and ``reach.right`` after it (a slice's ends are treated as the sequence's ends, as in one pass). Each
    call sees at most ``reach.left + step + reach.right`` positions; the input kept between calls is
    ``reach.left`` positions plus what has not been consumed yet.
    """
    check_int("step", step, min_value=1)
    buf: Tensor | None = None  # input positions buf_start .. buf_start + len - 1
    buf_start = done = 0  # first buffered position; outputs already yielded

    def run(stop: int) -> Tensor:  # outputs done .. stop-1 from the buffered input
        lo = max(done - reach.left, buf_start)
        hi = min(stop + reach.right, buf_start + buf.shape[dim])
        out = forward(buf.narrow(dim, lo - buf_start, hi - lo), lo)
        return out.narrow(dim, done - lo, stop - done)

    for piece in chunks:
        buf = piece if buf is None else torch.cat([buf, piece], dim=dim)
        while buf_start + buf.shape[dim] >= done + step + reach.right:  # the next step's halo has arrived
            yield run(done + step)
            done += step
            keep_from = max(done - reach.left, buf_start)  # drop what no later output reads
            buf = buf.narrow(dim, keep_from - buf_start, buf.shape[dim] - (keep_from - buf_start)).clone()
            buf_start = keep_from
    if buf is None:
        return
    end = buf_start + buf.shape[dim]
    while done < end:  # the input has ended: the rest has no right halo beyond the end
        stop = min(done + step, end)
        yield run(stop)
        done = stop


def check_step(encoder: nn.Module, step: int) -> int:
    """``step`` when every slice :func:`stream` cuts is at least as long as the widest attention window of
    ``encoder`` (the variants refuse shorter inputs); else ``ValueError`` with the smallest step allowed."""
    span = max(max(attention_reach(b.attn.attention)) for b in encoder.blocks)
    if check_int("step", step, min_value=1) < span:
        raise ValueError(f"step={step} is shorter than the widest attention window ({span} positions); use "
                         f"step >= {span}")
    return step


def stream_encoder(encoder: nn.Module, chunks: Iterable[Tensor], *, step: int = 4096) -> Iterator[Tensor]:
    """:func:`stream` for a :class:`core_attn.layers.TransformerEncoder` (eval mode, no padding) over chunks
    of (B, n_i, C) embeddings: yields (B, step, C) outputs (the last shorter) equal to one pass's."""
    reach = receptive_field(encoder)
    check_step(encoder, step)

    def forward(x: Tensor, offset: int) -> Tensor:
        with position_offset(encoder, offset):
            return encoder(x)

    yield from stream(forward, chunks, reach=reach, step=step, dim=1)
