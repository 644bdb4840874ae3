"""Protein MLM perplexity by how close each held-out protein's nearest training relative is.

    python benchmarks/protein_homology.py CKPT [CKPT ...] [--split test] [--out results.json]

For each checkpoint (``genomics_protein_mlm`` or ``genomics_protein_mlm_homologs``), the data module is
rebuilt from the config stored in it, every crop of the split is scored as ``genomics.evaluate`` scores
it (same masks), and the masked residues' negative log-likelihood is summed per protein. Proteins are
grouped by the identity of their nearest training protein (most shared 6-mers, then a BLOSUM62 local
alignment: identical aligned residues / the protein's length; ``none`` when no training protein shares
2 6-mers), and each group's perplexity is printed beside the unigram baseline's on the same residues.
It tells how much of a perplexity comes from held-out proteins with close relatives in training.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from genomics.datasets import IGNORE
from genomics.evaluate import stored_config
from genomics.homologs import find_homologs
from genomics.module import GenomicsModule

BANDS = ((0.0, 0.3, "< 30%"), (0.3, 0.5, "30-50%"), (0.5, 0.8, "50-80%"), (0.8, 1.01, ">= 80%"))


def identity_bands(dm, split: str) -> list[str]:
    """Each record's band of relative identity (or ``none``)."""
    queries, train = dm.records[split], dm.records["train"]
    hits = find_homologs(queries, train, tokens=dm.tokenizer.tokens, k=6, min_shared=2, exclude_self=split == "train")
    out = []
    for q, hit in zip(queries, hits):
        if hit is None:
            out.append("none")
            continue
        j, where = hit
        ok = where >= 0
        ident = float((train[j][where[ok]] == q[ok]).sum()) / max(1, len(q))
        out.append(next(name for lo, hi, name in BANDS if lo <= ident < hi))
    return out


@torch.no_grad()
def per_record(ckpt: str, split: str, batch_size: int) -> tuple[dict, list[str]]:
    stored = stored_config(ckpt)
    module = GenomicsModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = instantiate(stored["data"], _convert_="partial")
    dm.setup()
    unigram = dm.unigram_log_probs()
    ds = dm.datasets[split]
    sums = defaultdict(lambda: np.zeros(3))  # record -> (model nll, unigram nll, residues)
    for start in range(0, len(ds), batch_size):
        idx = list(range(start, min(len(ds), start + batch_size)))
        batch = torch.utils.data.default_collate([ds[i] for i in idx])
        logits = module(batch["tokens"], batch["pad"]).float()
        targets = batch["targets"]
        nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
        for row, i in enumerate(idx):
            chosen = targets[row] != IGNORE
            r = ds.items[i][0]
            sums[r] += (float(nll[row][chosen].sum()), float(-unigram[targets[row][chosen]].sum()),
                        int(chosen.sum()))
    return sums, identity_bands(dm, split)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpts", nargs="+")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    rows = []
    for ckpt in args.ckpts:
        sums, bands = per_record(ckpt, args.split, args.batch_size)
        groups = defaultdict(lambda: np.zeros(3))
        for r, s in sums.items():
            groups[bands[r]] += s
            groups["all"] += s
        counts = defaultdict(int)
        for b in bands:
            counts[b] += 1
        counts["all"] = len(bands)
        print(f"\n{ckpt} ({args.split})")
        print(f"{'relative identity':>18} {'proteins':>9} {'residues':>9} {'model ppl':>10} {'unigram ppl':>12} {'gain':>6}")
        for name in ["none", *(b[2] for b in BANDS), "all"]:
            if name not in groups:
                continue
            model_nll, uni_nll, n = groups[name]
            ppl, uni = math.exp(model_nll / n), math.exp(uni_nll / n)
            rows.append({"ckpt": ckpt, "band": name, "proteins": counts[name], "residues": int(n), "ppl": ppl,
                         "unigram_ppl": uni})
            print(f"{name:>18} {counts[name]:>9} {int(n):>9} {ppl:>10.2f} {uni:>12.2f} {1 - ppl / uni:>6.1%}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
