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

``infer.mode=stream`` runs the model over each sequence ``infer.step`` bases at a time with the halo its
receptive field needs (:meth:`genomics.model.SequenceTransformer.stream`): the same bits as one pass, in
memory that does not grow with the sequence (local attention without global tokens; other variants are
refused with the reason). ``infer.fasta=<file>`` scores the records of a FASTA instead of the data
region, and ``infer.bedgraph=true`` writes the bits of every base to ``<run dir>/<name>.bits.bedgraph``
as they are computed (base 0 of a record has no context and no value).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from core_attn.training.atomic import write_json_atomic
from core_attn.training.callbacks import peak_memory_mb, reset_peak_memory
from core_attn.training.cli import CONF_DIR, run
from core_attn.training.runtime import load_run_config
from core_attn.training.train import variant_name
from core_attn.validation import check_choice
from core_attn.training.atomic import open_atomic
from genomics.data import GenomeDataModule
from genomics import formats
from genomics.io import iter_records
from genomics.module import CausalLM, target_bits
from genomics.predict import output_prefix
from genomics.tokenizers import SPECIALS

log = logging.getLogger(__name__)
REGIONS = ("test", "genome")
PRECISIONS = ("32", "bf16")
MODES = ("one_pass", "stream")


def first_bases(named: Iterable[tuple[str, np.ndarray]], length: int | None) -> list[tuple[str, np.ndarray]]:
    """The (name, tokens) pairs cut to ``length`` bases in all (``None``: all of them), those of fewer than
    2 bases (nothing to score) left out; stops reading ``named`` once ``length`` is reached."""
    out, left = [], None if length is None else int(length)
    for name, tokens in named:
        if left is not None:
            if left <= 1:
                break
            tokens = tokens[:left]
            left -= len(tokens)
        if len(tokens) > 1:
            out.append((name, tokens))
    return out


def sequences(dm: GenomeDataModule, region: str, length: int | None) -> list[np.ndarray]:
    """Token arrays to score: each stretch of the test region, or the records concatenated (``genome``);
    cut to ``length`` bases in total when given."""
    segs = dm.load_segments()  # also reads dm.record_tokens
    if region == "test":
        seqs = [s.tokens for s in segs["test"]]
    else:  # every record, in file order, joined end to end
        seqs = [np.concatenate(dm.record_tokens)]
    return [tokens for _, tokens in first_bases(((region, s) for s in seqs), length)]


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


@torch.inference_mode()
def score_stream(module: CausalLM, tokens: np.ndarray, precision: str, step: int,
                 on_bits: Callable[[np.ndarray], None] | None = None) -> tuple[float, int]:
    """:func:`score` computed ``step`` positions at a time (:meth:`SequenceTransformer.stream`), the input read
    in pieces of ``step`` tokens; ``on_bits`` receives the bits of bases 1 .. L-1 in order, piece by piece."""
    n = len(tokens) - 1  # inputs 0 .. L-2 predict bases 1 .. L-1
    chunks = (torch.from_numpy(tokens[s:min(s + step, n)].astype(np.int64))[None] for s in range(0, n, step))
    total, done = 0.0, 0
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for out in module.net.stream(chunks, step=step):
            m = out.shape[1]
            bits = target_bits(out[0], torch.from_numpy(tokens[done + 1:done + 1 + m].astype(np.int64)))
            total += float(bits.sum())
            if on_bits is not None:
                on_bits(bits.numpy())
            done += m
    return total, n


def _load(cfg: DictConfig) -> tuple[CausalLM, GenomeDataModule, dict[str, Any]]:
    icfg = cfg.infer
    if icfg.ckpt_path:
        stored = load_run_config(icfg.ckpt_path)
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
    mode = check_choice("infer.mode", icfg.get("mode", "one_pass"), MODES)
    if icfg.get("bedgraph") and mode != "stream":
        raise ValueError("infer.bedgraph=true writes bits as they are computed: it needs infer.mode=stream")
    module, dm, info = _load(cfg)
    named = _fasta_records(icfg.fasta, dm, icfg.length) if icfg.get("fasta") else \
        [(f"{region}_{i}", s) for i, s in enumerate(sequences(dm, region, icfg.length))]
    out_dir = Path(cfg.paths.output_dir)
    bedgraph = out_dir / f"{output_prefix(icfg.fasta or region)}.bits.bedgraph" if icfg.get("bedgraph") else None
    reset_peak_memory()
    bits, count, longest, t0 = 0.0, 0, 0, time.perf_counter()
    with ExitStack() as stack:  # the bedGraph is moved into place only when every sequence went through
        track = stack.enter_context(open_atomic(bedgraph)) if bedgraph is not None else None
        if track is not None:
            formats.write_bedgraph_header(track, f"{Path(str(icfg.fasta or region)).name} bits",
                                          "-log2 p(base | preceding bases), longattn")
        for name, s in named:
            writer = formats.BedGraphWriter(track, name, offset=1) if track is not None else None
            if mode == "stream":
                b, c = score_stream(module, s, precision, int(icfg.step), writer.write if writer else None)
            else:
                b, c = score(module, s, precision, icfg.chunk)
            if writer is not None:
                writer.close()
            bits, count, longest = bits + b, count + c, max(longest, len(s))
    seconds = time.perf_counter() - t0
    metrics: dict[str, Any] = {"status": "ok", "app": cfg.get("app"), **info, "region": region, "mode": mode,
                               **({"fasta": str(icfg.fasta)} if icfg.get("fasta") else {}),
                               **({"step": int(icfg.step)} if mode == "stream" else {}),
                               **({"bedgraph": str(bedgraph)} if bedgraph is not None else {}),
                               "precision": precision, "chunk": icfg.chunk, "sequences": len(named), "longest": longest,
                               "bases": count, "bpb": bits / count, "seconds": round(seconds, 2),
                               "trained": bool(icfg.ckpt_path), "threads": torch.get_num_threads(), **peak_memory_mb()}
    if region == "test" and icfg.length is None and icfg.baseline and not icfg.get("fasta"):
        base = dm.markov_baseline()
        metrics.update(markov_bpb=base["test_bpb"], markov_order=base["order"])
    metrics["peak_memory_mb"] = metrics["cuda_peak_memory_mb"] or metrics["peak_rss_mb"]
    out = Path(cfg.paths.output_dir) / "metrics.json"
    write_json_atomic(out, metrics)
    print(OmegaConf.to_yaml(OmegaConf.create({k: v for k, v in metrics.items() if v is not None})))
    return metrics


def _fasta_records(path: str, dm: GenomeDataModule, length: int | None) -> list[tuple[str, np.ndarray]]:
    """(id, tokens) of the records of a FASTA with the model's tokenizer (at most ``length`` bases in all)."""
    if not Path(str(path)).is_file():
        raise FileNotFoundError(f"infer.fasta={str(path)!r}: no such file (pass infer.fasta=<a FASTA / FASTA.gz>)")
    out = first_bases(((rec.id, rec.tokens) for rec in iter_records(path, dm.tokenizer)), length)
    if not out:
        raise ValueError(f"infer.fasta={str(path)!r} holds no record of at least 2 bases to score")
    return out


@hydra.main(config_path=str(CONF_DIR), config_name="genomics_infer", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Returns bits per base."""
    return infer(cfg).get("bpb")


if __name__ == "__main__":
    run(main, "genomics_infer")  # Hydra's errors plus "did you mean" for mistyped overrides
