"""Short inputs: the block-sparse kernel against the pattern's dense mask, the rule ``backend="auto"`` uses.

    python benchmarks/short_inputs.py                                  # local window 64 + global token 0
    python benchmarks/short_inputs.py --variant bigbird --kwargs '{"block_size": 16}' --lengths 64,128,256,512

Times forward + backward of ``backend="blocked"`` and ``backend="dense"`` side by side at each length
(median of ``--repeats``), prints the pattern's density and which one ``auto`` picks. ``auto`` picks
``dense`` when the density is at least ``PatternAttention.AUTO_DENSE_MIN_DENSITY`` (N <= AUTO_DENSE_MAX_N):
the ratio column should cross 1 near that density. Defaults are the audio app's training shapes
(batch 16, 4 heads of 36: 40 ms frames of utterances of a few seconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import core_attn


def time_fwdbwd(attn, q, k, v, repeats: int) -> float:
    def step():
        attn(q, k, v).sum().backward()

    step()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="local")
    p.add_argument("--kwargs", default='{"window": 64, "global_tokens": [0]}', help="JSON keyword arguments")
    p.add_argument("--lengths", default="64,128,192,256,384,512,1024")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=36)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    kw = json.loads(a.kwargs)
    rows = []
    print(f"{a.variant} {kw}, fwd+bwd, B={a.batch} H={a.heads} D={a.head_dim}, {torch.get_num_threads()} threads")
    print(f"{'N':>6} {'density':>8} {'blocked ms':>11} {'dense ms':>9} {'dense/blocked':>14} {'auto':>8}")
    for n in (int(x) for x in a.lengths.split(",")):
        torch.manual_seed(0)
        q, k, v = (torch.randn(a.batch, a.heads, n, a.head_dim, requires_grad=True) for _ in range(3))
        auto = core_attn.build_attention(a.variant, **kw)
        ms = {b: 1e3 * time_fwdbwd(core_attn.build_attention(a.variant, backend=b, **kw), q, k, v, a.repeats)
              for b in ("blocked", "dense")}
        row = {"n": n, "density": auto.density(n), "blocked_ms": ms["blocked"], "dense_ms": ms["dense"],
               "ratio": ms["dense"] / ms["blocked"], "auto": auto.select_backend(q, k, v)}
        rows.append(row)
        print(f"{n:>6} {row['density']:>8.2f} {row['blocked_ms']:>11.1f} {row['dense_ms']:>9.1f} "
              f"{row['ratio']:>14.2f} {row['auto']:>8}", flush=True)
    return rows


if __name__ == "__main__":
    main()
