"""Streaming DNA LM inference against one pass: per-base bits on the same bases, max |difference|.

    python benchmarks/genomics_stream.py genome.fa --length 1000000 [--ckpt last.ckpt] [--step 16384]

Scores the first ``--length`` bases of the FASTA's first record with the causal DNA LM twice: in one
forward pass (``genomics.infer.score``'s path, position-wise layers in chunks) and streamed
(``infer.mode=stream``), and prints the largest per-base difference in bits, the two totals and the times.
Without ``--ckpt`` the ``genomics_dna_lm`` network has random weights (exactness does not need training).
Memory at two lengths is measured separately, one process per length:
``python -m genomics.infer experiment=genomics_dna_lm infer.fasta=genome.fa infer.mode=stream infer.length=N``.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from core_attn.training.cli import CONF_DIR
from genomics.infer import score_stream
from genomics.io import iter_records
from genomics.module import CausalLM, target_bits
from genomics.tokenizers import DNATokenizer


def one_pass_bits(module: CausalLM, tokens: np.ndarray, chunk: int) -> np.ndarray:
    """(L-1,) bits of bases 1 .. L-1 in one forward pass."""
    x = torch.from_numpy(tokens.astype(np.int64))[None]
    with torch.inference_mode():
        return target_bits(module.net.forward_long(x[:, :-1], chunk=chunk)[0], x[0, 1:]).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("fasta", help="a FASTA file; its first record is scored")
    ap.add_argument("--length", type=int, default=1_000_000, help="bases to score (default 1,000,000)")
    ap.add_argument("--ckpt", default=None, help="a genomics CausalLM checkpoint (default: random weights)")
    ap.add_argument("--step", type=int, default=16384, help="bases per streamed step")
    ap.add_argument("--chunk", type=int, default=65536, help="one pass: positions per position-wise step")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.ckpt:
        module = CausalLM.load_from_checkpoint(args.ckpt, map_location="cpu").eval()
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("genomics", ["experiment=genomics_dna_lm"])
        module = instantiate(cfg.module, _recursive_=False, _convert_="all").eval()
    tokens = next(iter_records(args.fasta, DNATokenizer())).tokens[:args.length]
    t0 = time.perf_counter()
    ref = one_pass_bits(module, tokens, args.chunk)
    t1 = time.perf_counter()
    pieces: list[np.ndarray] = []
    total, count = score_stream(module, tokens, "32", args.step, pieces.append)
    t2 = time.perf_counter()
    got = np.concatenate(pieces)
    print(f"cpu: {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}")
    print(f"bases scored: {count} (one pass {len(ref)})")
    print(f"max |stream - one pass| per base: {np.abs(got - ref).max():.3g} bits")
    print(f"bits per base: one pass {ref.mean():.6f}, stream {total / count:.6f}")
    print(f"seconds: one pass {t1 - t0:.1f}, stream {t2 - t1:.1f} (step {args.step})")


if __name__ == "__main__":
    main()
