"""Training-step time of a trained ``adaptive_span`` network against the same network with ``local`` attention
at the span maximum: what learning the spans saves.

    python benchmarks/adaptive_span_step.py genomics --ckpt outputs/genomics/<run>/checkpoints/last.ckpt
    python benchmarks/adaptive_span_step.py vision --ckpt outputs/vision/<run>/checkpoints/last.ckpt --batch 8

Loads the checkpoint's network, reads its learned spans (mean and largest, per layer), and builds its twin:
a deep copy whose every :class:`~core_attn.attention.adaptive_span.AdaptiveSpanAttention` is replaced by
``local`` with ``window = max_span`` (causal as the span variant is). Both then run full training steps
(forward, cross-entropy against random targets, backward, AdamW step) on the same random input of the
checkpoint's training shape (genomics: ``--batch`` x ``data.window`` tokens; vision: ``--batch`` images
of ``data.image_size``), interleaved round robin, ``--repeats`` times after a warm-up; the table gives
the median of each and their ratio, measured side by side in one run. The optimizer steps change the
weights, never the spans' cost: both networks keep their attention pattern fixed for the whole run (the
span network's learned spans are read before the first step; ``span_fraction`` is frozen).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core_attn.attention.adaptive_span import AdaptiveSpanAttention, learned_spans
from core_attn.registry import build_attention
from core_attn.training.callbacks import CONFIG_KEY

APPS = ("genomics", "vision")


def load_network(app: str, ckpt: str) -> tuple[nn.Module, dict]:
    """The checkpoint's network (train mode) and its stored run config."""
    from core_attn.training.export import checkpoint_network

    if app == "genomics":
        from genomics.module import GenomicsModule as cls
    else:
        from vision.module import ImageClassifier as cls
    _, net = checkpoint_network(cls, ckpt)
    config = torch.load(ckpt, map_location="cpu", weights_only=False).get(CONFIG_KEY) or {}
    return net.train(), config


def local_twin(net: nn.Module) -> nn.Module:
    """A deep copy with each adaptive span replaced by ``local`` at its maximum span (same causality)."""
    twin = copy.deepcopy(net)
    for module in twin.modules():
        for name, child in list(module.named_children()):
            if isinstance(child, AdaptiveSpanAttention):
                setattr(module, name, build_attention("local", window=child.max_span, causal=child.causal))
    return twin


def spans(net: nn.Module) -> list[list[float]]:
    """The learned spans in tokens, one list of heads per adaptive-span layer."""
    return [[round(z, 1) for z in layer.tolist()] for layer in learned_spans(net)]


def example(app: str, net: nn.Module, config: dict, batch: int, length: int | None) -> tuple[torch.Tensor, int]:
    """A random input of the training shape and the number of classes the output has."""
    data = config.get("data") or {}
    if app == "genomics":
        n = length or int(data.get("window") or 4096)
        return torch.randint(0, net.vocab_size, (batch, n)), net.vocab_size
    stem = net.patch_embed
    return torch.randn(batch, stem.in_chans, *stem.img_size), net.head.out_features


def step(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, classes: int) -> float:
    """One training step; its wall time in seconds."""
    t0 = time.perf_counter()
    out = net(x)
    target = torch.randint(0, classes, out.shape[:-1], generator=torch.Generator().manual_seed(0))
    loss = F.cross_entropy(out.reshape(-1, classes).float(), target.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("app", choices=APPS)
    p.add_argument("--ckpt", required=True, help="a checkpoint trained with attention=adaptive_span")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=None, help="genomics: tokens per sequence (default: data.window)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    net, config = load_network(args.app, args.ckpt)
    learned = spans(net)
    if not learned:
        raise SystemExit(f"{args.ckpt}: the network has no adaptive_span attention (train it with attention=adaptive_span)")
    max_span = next(m.max_span for m in net.modules() if isinstance(m, AdaptiveSpanAttention))
    for m in net.modules():
        if isinstance(m, AdaptiveSpanAttention):
            m.span_fraction.requires_grad_(False)  # the spans, and so the band computed, stay as learned
    twin = local_twin(net)
    torch.manual_seed(0)
    x, classes = example(args.app, net, config, args.batch, args.length)
    runs = {"adaptive_span": (net, torch.optim.AdamW([q for q in net.parameters() if q.requires_grad], lr=1e-6)),
            f"local (window {max_span})": (twin, torch.optim.AdamW(twin.parameters(), lr=1e-6))}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, (model, opt) in runs.items():  # warm-up (buffers, optimizer state)
        step(model, opt, x, classes)
    for _ in range(args.repeats):
        for name, (model, opt) in runs.items():
            times[name].append(step(model, opt, x, classes))
    med = {name: statistics.median(t) for name, t in times.items()}
    flat = [z for layer in learned for z in layer]
    names = list(runs)
    result = {"ckpt": args.ckpt, "input": list(x.shape), "threads": torch.get_num_threads(), "max_span": max_span,
              "mean_span": round(sum(flat) / len(flat), 1), "largest_span": max(flat), "spans": learned,
              "step_s": {k: round(v, 4) for k, v in med.items()}, "speedup": round(med[names[1]] / med[names[0]], 3)}
    print(f"{args.ckpt}: input {tuple(x.shape)}, {result['threads']} threads, median of {args.repeats} steps each, "
          "interleaved\n")
    print(f"learned spans (tokens, max_span {max_span}): mean {result['mean_span']}, largest {result['largest_span']}; "
          "per layer: " + "; ".join(", ".join(f"{z:g}" for z in layer) for layer in learned) + "\n")
    print("| attention | training step (s) |\n|---|---|")
    for name in names:
        print(f"| {name} | {med[name]:.3f} |")
    print(f"\nadaptive_span step: {result['speedup']:.2f}x faster than local at its maximum span")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
