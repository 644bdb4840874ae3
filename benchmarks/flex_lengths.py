"""How the ``flex`` backend (what ``backend="auto"`` runs on CUDA) copes with a new length every batch.

Training on speech or proteins pads each batch to its longest item, so the attention sees a different N
(and a different key padding mask) at every step. FlexAttention is compiled with ``dynamic=False``: each
new N may recompile, and past torch._dynamo's recompile limit a compiled function falls back to eager
code. This script runs one local-window layer (fwd+bwd) over a sequence of batch lengths, twice, and
prints the time of each call and the number of compiled frames, against the ``blocked`` and ``dense``
backends on the same batches:

    python benchmarks/flex_lengths.py --device cuda [--lengths 300,517,811,...]
"""

from __future__ import annotations

import argparse
import time

import torch

import core_attn
from core_attn.bench import synchronize


def run(backend: str, lengths: list[int], device: str, heads: int = 4, dim: int = 64, batch: int = 8) -> list[float]:
    attn = core_attn.build_attention("local", window=64, global_tokens=[0], backend=backend).to(device)
    times = []
    for n in lengths:
        q, k, v = (torch.randn(batch, heads, n, dim, device=device, requires_grad=True) for _ in range(3))
        kpm = torch.zeros(batch, n, dtype=torch.bool, device=device)
        kpm[batch // 2:, n - n // 4:] = True  # half the batch is a quarter shorter
        synchronize(torch.device(device))
        t0 = time.perf_counter()
        attn(q, k, v, key_padding_mask=kpm).sum().backward()
        synchronize(torch.device(device))
        times.append(1e3 * (time.perf_counter() - t0))
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--lengths", default="300,517,811,1024,1290,1555,1999,2300,2741,3001,3500,4000")
    a = p.parse_args()
    lengths = [int(x) for x in a.lengths.split(",")]
    from torch._dynamo.utils import counters

    for backend in ("flex", "blocked", "dense"):
        counters.clear()
        first = run(backend, lengths, a.device)
        second = run(backend, lengths, a.device)
        frames = dict(counters["stats"])
        print(f"{backend}: first pass ms " + " ".join(f"{t:.0f}" for t in first))
        print(f"{backend}: second pass ms " + " ".join(f"{t:.1f}" for t in second))
        print(f"{backend}: dynamo stats {frames}")
        if a.device.startswith("cuda"):
            print(f"{backend}: peak allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
            torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()
