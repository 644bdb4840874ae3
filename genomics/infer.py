"""Long-context inference: the causal DNA LM over a whole sequence in one pass, no windows.

    python -m genomics.infer infer.ckpt_path=outputs/genomics/.../checkpoints/last.ckpt
    python -m genomics.infer infer.ckpt_path=... infer.region=genome infer.length=1000000 infer.precision=bf16
    python -m genomics.infer experiment=genomics_dna_lm infer.region=genome infer.length=1000000   # untrained:
                                                            # time and memory only

Config ``conf/genomics_infer.yaml`` (the ``genomics`` config plus ``infer.*``). With a checkpoint the model
and (unless ``infer.stored_data=false``) the data config come from it; without one the model is built
from the config with random weights, which measures time and memory but not quality. Each sequence
runs under ``torch.inference_mode`` in one forward pass (attention over the whole sequence at once; the
position-wise layers ``infer.chunk`` positions at a time, which bounds their memory); the result (bits per base, the Markov
baseline on the same bases for ``region=test``, seconds, peak memory) is printed and written to
``<run dir>/metrics.json``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from core_attn._checks import check_choice
from core_attn.training.callbacks import CONFIG_KEY, peak_memory_mb, reset_peak_memory
from core_attn.training.cli import run
from core_attn.training.train import variant_name, write_json_atomic
from genomics.data import GenomeDataModule
from genomics.module import CausalLM
from genomics.tokenizers import SPECIALS

log = logging.getLogger(__name__)
REGIONS = ("test", "genome")
PRECISIONS = ("32", "bf16")


def sequences(dm: GenomeDataModule, region: str, length: int | None) -> list[np.ndarray]:
    """Token arrays to score: each stretch of the test region, or the records concatenated (``genome``);
    cut to ``length`` bases in total when given."""
    segs = dm.load_segments()
    if region == "test":
        seqs = [s.tokens for s in segs["test"]]
    else:  # every record, in file order, joined end to end
        seqs = [np.concatenate(dm.record_tokens)]
    if length is not None:
        out, left = [], int(length)
        for s in seqs:
            if left <= 1:
                break
            out.append(s[:left])
            left -= len(out[-1])
        seqs = out
    return [s for s in seqs if len(s) > 1]


@torch.inference_mode()
def score(module: CausalLM, tokens: np.ndarray, precision: str, chunk: int | None = None) -> tuple[float, int]:
    """(total bits, scored positions) of one sequence in one forward pass (positions 1 .. L-1); with
    ``chunk``, the position-wise layers run ``chunk`` positions at a time (``SequenceTransformer.forward_long``)."""
    x = torch.from_numpy(tokens.astype(np.int64))[None]  # (1, L)
    inputs, targets = x[:, :-1], x[:, 1:] - len(SPECIALS)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = module.net.forward_long(inputs, chunk=chunk) if chunk else module(inputs)
        logits = out[..., len(SPECIALS):]  # (1, L-1, S)
    nll = torch.nn.functional.cross_entropy(logits.float()[0], targets[0], reduction="sum")
    return float(nll) / math.log(2.0), targets.numel()


def _load(cfg: DictConfig) -> tuple[CausalLM, GenomeDataModule, dict[str, Any]]:
    icfg = cfg.infer
    if icfg.ckpt_path:
        stored = torch.load(icfg.ckpt_path, map_location="cpu", weights_only=False).get(CONFIG_KEY) or {}
        module = CausalLM.load_from_checkpoint(icfg.ckpt_path, map_location="cpu")
        data_cfg = stored.get("data") if icfg.stored_data and stored.get("data") else cfg.data
        attention = stored.get("attention")
    else:
        log.warning("infer.ckpt_path is not set: random weights (measures time and memory, not quality)")
        module = instantiate(cfg.module, _recursive_=False, _convert_="all")
        data_cfg, attention = cfg.data, cfg.get("attention")
    if not isinstance(module, CausalLM):
        raise ValueError(f"genomics.infer runs the causal DNA LM; the module is {type(module).__name__}")
    dm = instantiate(data_cfg)
    if not isinstance(dm, GenomeDataModule):
        raise ValueError(f"genomics.infer reads a genome (data=genomics_genome); got {type(dm).__name__}")
    return module.eval(), dm, {"variant": variant_name(attention)}


def infer(cfg: DictConfig) -> dict[str, Any]:
    """Score the chosen sequences in one pass each; return (and write) the metrics."""
    icfg = cfg.infer
    region = check_choice("infer.region", icfg.region, REGIONS)
    precision = check_choice("infer.precision", str(icfg.precision), PRECISIONS)
    if icfg.threads:
        torch.set_num_threads(int(icfg.threads))
    torch.manual_seed(cfg.seed or 0)
    module, dm, info = _load(cfg)
    seqs = sequences(dm, region, icfg.length)
    reset_peak_memory()
    bits, count, t0 = 0.0, 0, time.perf_counter()
    for s in seqs:
        b, c = score(module, s, precision, icfg.chunk)
        bits, count = bits + b, count + c
    seconds = time.perf_counter() - t0
    metrics: dict[str, Any] = {"status": "ok", "app": cfg.get("app"), **info, "region": region,
                               "precision": precision, "chunk": icfg.chunk, "sequences": len(seqs), "longest": max(map(len, seqs)),
                               "bases": count, "bpb": bits / count, "seconds": round(seconds, 2),
                               "trained": bool(icfg.ckpt_path), "threads": torch.get_num_threads(), **peak_memory_mb()}
    if region == "test" and icfg.length is None and icfg.baseline:
        base = dm.markov_baseline()
        metrics.update(markov_bpb=base["test_bpb"], markov_order=base["order"])
    metrics["peak_memory_mb"] = metrics["cuda_peak_memory_mb"] or metrics["peak_rss_mb"]
    out = Path(cfg.paths.output_dir) / "metrics.json"
    write_json_atomic(out, metrics)
    print(OmegaConf.to_yaml(OmegaConf.create({k: v for k, v in metrics.items() if v is not None})))
    return metrics


@hydra.main(config_path="../conf", config_name="genomics_infer", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Returns bits per base."""
    return infer(cfg).get("bpb")


if __name__ == "__main__":
    run(main, "genomics_infer")  # Hydra's errors plus "did you mean" for mistyped overrides
