"""Predictions of a genomics checkpoint for every record of a FASTA, in genome browser formats.

    python -m genomics.predict genome.fa ckpt_path=outputs/genomics/.../checkpoints/last.ckpt
    python -m genomics.predict fasta=genome.fa.gz ckpt_path=... out_dir=pred threshold=0.7 min_length=90
    python -m genomics.predict genes.fa ckpt_path=<a 16S classifier> out_dir=pred

What is written depends on the checkpoint's task (its module, read from the run config stored in it):

- ``CausalLM`` (DNA language model): ``<prefix>.bits.bedgraph``, the bits of each base given the ones
  before it (``-log2 p``) for bases 1 .. L-1 of each record (the first base has no context).
- ``TokenClassifier`` (per-base annotation): ``<prefix>.gff3`` and ``<prefix>.bed``, the runs of bases
  whose probability of the trained feature (``CDS``) is at least ``threshold`` and that are at least
  ``min_length`` long, scored by their mean probability; with ``probabilities=true`` also
  ``<prefix>.prob.bedgraph``, the probability of every base. With ``decode=orf`` (the default for a
  checkpoint trained with ``module.decode=orf``) the features are instead the open reading frames its
  ORF decoder keeps (:class:`genomics.baselines.OrfDecoder`, settings chosen on validation and stored in
  the checkpoint), with strand and phase, scored by the mean probability over each.
- ``SequenceClassifier``: ``<prefix>.labels.tsv``, per record its id, predicted label, its probability
  and one ``p_<label>`` column per class.

Records are read one at a time (FASTA, gzipped FASTA or GenBank, :func:`genomics.io.iter_records`, with
the checkpoint's tokenizer). Per-base tasks run in windows of the checkpoint's ``data.window`` bases
(``window=...`` to change it) tiled as evaluation tiles them (:class:`genomics.datasets.GenomeTiles`:
consecutive windows, the last aligned to the record's end), ``batch_size`` windows per forward pass, so
memory depends on the window, not on the record. Record classification reads a centre crop of
``data.max_len`` bases, as evaluation does. Every output file is written to a temporary file and moved
into place at the end (``open_atomic``): a failed run leaves no partial output. Config
``conf/genomics_predict.yaml``; a positional FASTA path becomes ``fasta=<path>``.
"""

from __future__ import annotations

import csv
import logging
import re
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from core_attn.training.atomic import open_atomic, write_json_atomic
from core_attn.training.callbacks import peak_memory_mb, reset_peak_memory
from core_attn.training.cli import CONF_DIR, positional_overrides, run
from core_attn.training.runtime import load_checkpoint, run_config
from core_attn.validation import check_choice, check_float, check_int
from genomics import formats
from genomics.baselines import OrfDecoder
from genomics.datasets import RecordCrops
from genomics.io import ON_ERROR, Skipped, iter_records
from genomics.module import CLASS_NAMES_KEY, GenomicsModule, per_base

log = logging.getLogger(__name__)
PREDICT_DECODES = ("threshold", "orf")
TASKS = {"CausalLM": "lm", "TokenClassifier": "annotate", "SequenceClassifier": "classify"}
SEQUENCE_SUFFIXES = (".fa", ".fasta", ".fna", ".ffn", ".fas", ".gb", ".gbk", ".gbff", ".genbank")


# -- the checkpoint ----------------------------------------------------------------------------------
def load(ckpt_path: str | Path) -> tuple[GenomicsModule, str, dict[str, Any], list[str] | None]:
    """(module in eval mode, task ``lm|annotate|classify``, stored run config, stored class names or None).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint, a checkpoint of another app, or of a genomics task without predictions.
    """
    ckpt = load_checkpoint(ckpt_path)
    stored = run_config(ckpt)
    path = Path(str(ckpt_path))
    target = str((stored.get("module") or {}).get("_target_") or "")
    module_name = target.rsplit(".", 1)[-1]
    allowed = ", ".join(f"genomics.module.{name}" for name in TASKS)
    if not target.startswith("genomics.module."):
        raise ValueError(f"ckpt_path={str(path)!r} is not a checkpoint of the genomics app (its stored module is "
                         f"{target or 'missing'!r}); genomics.predict reads {allowed}")
    if module_name not in TASKS:
        raise ValueError(f"ckpt_path={str(path)!r} is a {module_name} checkpoint, which has no per-base or per-record "
                         f"predictions to write; genomics.predict reads {allowed}")
    module = GenomicsModule.load_from_checkpoint(str(path), map_location="cpu").eval()
    return module, TASKS[module_name], stored, ckpt.get(CLASS_NAMES_KEY)


def class_names(stored: dict[str, Any], saved: list[str] | None, num_classes: int) -> list[str]:
    """The labels in output order: those the checkpoint saved, else the training data's (read again when
    its file is there, as training found them), else ``0 .. C-1``."""
    if saved:
        return list(saved)
    try:
        dm = instantiate(stored["data"])
        dm.setup()
        return list(dm.classes)
    except (KeyError, OSError, ValueError) as e:
        log.warning("the checkpoint stores no class names and its training data cannot be read (%s); "
                    "labels are the class indices", e)
        return [str(i) for i in range(num_classes)]


def _decoder(module: GenomicsModule, decode: str | None, ckpt_path: str | Path) -> OrfDecoder | None:
    """The ORF decoder to use for an annotation checkpoint (``None``: threshold the probabilities)."""
    stored = getattr(module, "orf_decoder", None)
    if decode == "orf" and stored is None:
        raise ValueError(f"decode=orf but ckpt_path={str(ckpt_path)!r} stores no ORF decoder (it was trained with "
                         "module.decode=argmax); retrain with module.decode=orf or pass decode=threshold")
    return stored if decode in (None, "orf") else None


# -- model outputs ---------------------------------------------------------------------------------
@torch.inference_mode()
def classify(module: GenomicsModule, records: list[np.ndarray], *, max_len: int) -> np.ndarray:
    """(R, C) class probabilities of records (a centre crop of ``max_len`` tokens each, as evaluation reads)."""
    crops = RecordCrops(records, None, max_len=max_len, train=False)
    items = [crops[i] for i in range(len(crops))]
    logits = module(torch.stack([it["tokens"] for it in items]), torch.stack([it["pad"] for it in items]))
    return logits.float().softmax(dim=-1).numpy()


# -- the job -----------------------------------------------------------------------------------------
def output_prefix(fasta: str | Path) -> str:
    """The input's name without ``.gz`` and its sequence suffix (``ecoli.fa.gz`` -> ``ecoli``)."""
    name = Path(fasta).name
    name = name[:-3] if name.lower().endswith(".gz") else name
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and f".{suffix.lower()}" in SEQUENCE_SUFFIXES and stem else name


def _window(option: int | None, stored_data: dict[str, Any], task: str, patch_size: int) -> int:
    key = "max_len" if task == "classify" else "window"
    window = option if option is not None else stored_data.get(key)
    if window is None:
        raise ValueError(f"window=null and the checkpoint stores no data.{key}; pass window=<bases>")
    check_int("window", window, min_value=1)
    if window % patch_size:
        raise ValueError(f"window={window} is not a multiple of the model's patch_size={patch_size}")
    return window


def _outputs(out: Path, prefix: str, task: str, probabilities: bool) -> dict[str, Path]:
    names = {"lm": {"bits": "bits.bedgraph"}, "classify": {"labels": "labels.tsv"},
             "annotate": {"gff3": "gff3", "bed": "bed", **({"prob": "prob.bedgraph"} if probabilities else {})}}
    return {kind: out / f"{prefix}.{suffix}" for kind, suffix in names[task].items()}


def predict(*, fasta: str, ckpt_path: str, out_dir: str = ".", prefix: str | None = None, window: int | None = None,
            batch_size: int | None = None, bin: int = 1, digits: int = 3, threshold: float = 0.5,
            min_length: int = 1, feature_type: str = "CDS", probabilities: bool = False, on_error: str = "raise",
            threads: int | None = None, decode: str | None = None) -> dict[str, Any]:
    """Predict every record of ``fasta`` with the checkpoint ``ckpt_path``; write the task's files.

    Args:
        fasta: a FASTA, gzipped FASTA or GenBank file.
        ckpt_path: a ``CausalLM``, ``TokenClassifier`` or ``SequenceClassifier`` checkpoint of the genomics app.
        out_dir: where the files go (created).
        prefix: the files' names, ``<prefix>.<kind>``; ``None``: the input's name without its suffixes.
        window: bases per window (per-base tasks) or per crop (classification); ``None``: the checkpoint's
            ``data.window`` / ``data.max_len``.
        batch_size: windows or records per forward pass; ``None``: the checkpoint's ``data.batch_size``.
        bin: bedGraph: one value per ``bin`` bases (their mean).
        digits: bedGraph: values rounded to this many decimals; neighbours with equal values are merged.
        threshold: annotation: a base is in a feature when its probability is at least this.
        min_length: annotation: shorter runs are not reported.
        feature_type: annotation: the GFF3 type and BED name stem (the feature the model was trained on).
        probabilities: annotation: also write the per-base probability as bedGraph.
        on_error: ``raise`` on a bad record (foreign character, empty, duplicate id) or ``skip`` and count it.
        threads: torch intra-op threads (``None``: torch's default).
        decode: annotation: ``threshold`` (runs of bases at or above ``threshold``) or ``orf`` (the open
            reading frames the checkpoint's ORF decoder keeps; ``threshold`` and ``min_length`` unused);
            ``None``: ``orf`` when the checkpoint stores an ORF decoder, else ``threshold``.

    Returns:
        ``{"task", "records", "bases", "files": {kind: path}, "lines": {kind: data lines (features for GFF3
        and BED, records for the TSV)}, "seconds", "skipped", "peak_rss_mb", ...}``.
    """
    check_choice("on_error", on_error, ON_ERROR)
    check_int("bin", bin, min_value=1)
    check_int("digits", digits, min_value=0, max_value=12)
    check_float("threshold", threshold, min_value=0.0, max_value=1.0)
    check_int("min_length", min_length, min_value=1)
    if not re.fullmatch(r"[A-Za-z0-9_.:^*$@!+?|-]+", str(feature_type)):
        raise ValueError(f"feature_type={feature_type!r} must be one word of letters, digits and _.:^*$@!+?|- "
                         "(a GFF3 type such as CDS or gene)")
    if not fasta or not Path(fasta).is_file():
        raise FileNotFoundError(f"fasta={str(fasta)!r}: no such file (pass fasta=<a FASTA / FASTA.gz / GenBank file>)")
    if threads:
        torch.set_num_threads(check_int("threads", threads, min_value=1))
    if decode is not None:
        check_choice("decode", decode, PREDICT_DECODES)
    module, task, stored, saved_names = load(ckpt_path)
    decoder = _decoder(module, decode, ckpt_path) if task == "annotate" else None
    data = stored.get("data") or {}
    window = _window(window, data, task, module.net.patch_size)
    batch_size = check_int("batch_size", batch_size if batch_size is not None else data.get("batch_size") or 1,
                           min_value=1)
    tokenizer = instantiate(data).tokenizer if data.get("_target_") else None
    if tokenizer is None:
        raise ValueError(f"ckpt_path={str(ckpt_path)!r} stores no data config (data._target_), so its tokenizer is "
                         "unknown; checkpoints written by python -m genomics.train store it")
    files = _outputs(Path(out_dir), prefix or output_prefix(fasta), task, probabilities)
    skipped = Skipped()
    records = iter_records(fasta, tokenizer, on_error=on_error, skipped=skipped)
    reset_peak_memory()
    t0 = time.perf_counter()
    with ExitStack() as stack:  # the files are moved into place only when every record went through
        handles = {kind: stack.enter_context(open_atomic(path)) for kind, path in files.items()}
        if task == "classify":
            names = class_names(stored, saved_names, module.net.num_outputs)
            counts = _write_labels(handles["labels"], module, records, names, max_len=window, batch_size=batch_size)
        else:
            counts = _write_tracks(handles, module, records, task=task, window=window, batch_size=batch_size,
                                   bin=bin, digits=digits, threshold=threshold, min_length=min_length,
                                   feature_type=feature_type, title=Path(fasta).name, decoder=decoder,
                                   tokenizer=tokenizer)
    skipped.report(str(fasta))
    result = {"status": "ok", "app": "genomics_predict", "task": task, "fasta": str(fasta), "ckpt_path": str(ckpt_path),
              "window": window, "batch_size": batch_size, **counts, "skipped": skipped.total(),
              **({"decode": "orf", "orf_decoder": decoder.as_dict()} if decoder is not None else {}),
              "files": {k: str(v) for k, v in files.items()}, "seconds": round(time.perf_counter() - t0, 2),
              "threads": torch.get_num_threads(), **peak_memory_mb()}
    return result


def _write_tracks(handles: dict, module: GenomicsModule, records, *, task: str, window: int, batch_size: int,
                  bin: int, digits: int, threshold: float, min_length: int, feature_type: str,
                  title: str, decoder: OrfDecoder | None = None, tokenizer=None) -> dict[str, Any]:
    """Per-base tasks: the bedGraph tracks and, for annotation, the GFF3 and BED features, record by record."""
    lines = dict.fromkeys(handles, 0)
    if "bits" in handles:
        formats.write_bedgraph_header(handles["bits"], f"{title} bits", "-log2 p(base | preceding bases), longattn")
    if "prob" in handles:
        formats.write_bedgraph_header(handles["prob"], f"{title} {feature_type}", f"p({feature_type}), longattn")
    if "gff3" in handles:
        handles["gff3"].write(formats.GFF3_HEADER)
    n_records = n_bases = 0
    for rec in records:
        values = per_base(module, rec.tokens, task=task, window=window, batch_size=batch_size)
        n_records, n_bases = n_records + 1, n_bases + len(rec)
        if task == "lm":  # base 0 has no context: the track starts at base 1
            lines["bits"] += formats.write_bedgraph(handles["bits"], rec.id, values[1:], offset=1, bin=bin,
                                                    digits=digits)
            continue
        if "prob" in handles:
            lines["prob"] += formats.write_bedgraph(handles["prob"], rec.id, values, bin=bin, digits=digits)
        strands = None
        if decoder is None:
            starts, ends, scores = formats.threshold_features(values, threshold=threshold, min_length=min_length)
        else:  # rows (start, end, codons, strand, mean p), in genome order
            kept = decoder.keep(decoder.orfs(tokenizer.decode(rec.tokens), strand=True), values)
            kept = kept[np.lexsort((kept[:, 1], kept[:, 0]))]
            starts, ends, strands = (kept[:, j].astype(np.int64) for j in (0, 1, 3))
            scores = kept[:, 4]
        ids = formats.feature_ids(rec.id, feature_type, len(starts))
        lines["gff3"] += formats.write_gff3(handles["gff3"], rec.id, len(rec), starts, ends, scores, ids,
                                            feature_type=feature_type, strands=strands)
        lines["bed"] += formats.write_bed(handles["bed"], rec.id, starts, ends, scores, ids, strands=strands)
    return {"records": n_records, "bases": n_bases, "lines": lines}


def _write_labels(f, module: GenomicsModule, records, names: list[str], *, max_len: int,
                  batch_size: int) -> dict[str, Any]:
    """Record classification: the TSV of labels and class probabilities, ``batch_size`` records at a time."""
    if len(names) != module.net.num_outputs:
        raise ValueError(f"the checkpoint names {len(names)} classes ({names[:4]}...) but its model has "
                         f"{module.net.num_outputs} outputs")
    writer = csv.writer(f, delimiter="\t", lineterminator="\n")
    writer.writerow(["id", "label", "probability", *(f"p_{name}" for name in names)])
    n_records = n_bases = 0

    def flush(batch: list) -> None:
        probs = classify(module, [r.tokens for r in batch], max_len=max_len)
        for rec, p in zip(batch, probs):
            best = int(p.argmax())
            writer.writerow([rec.id, names[best], f"{p[best]:.6f}", *(f"{x:.6f}" for x in p)])

    batch = []
    for rec in records:
        batch.append(rec)
        n_records, n_bases = n_records + 1, n_bases + len(rec)
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    return {"records": n_records, "bases": n_bases, "lines": {"labels": n_records}}


def report(result: dict[str, Any]) -> str:
    """The lines ``main`` prints: what was read and each file written."""
    out = [f"{result['task']}: {result['records']} records, {result['bases']} bases from {result['fasta']} in "
           f"{result['seconds']} s (peak RSS {result['peak_rss_mb']} MiB)"]
    units = {"gff3": "features", "bed": "features", "labels": "records"}
    out += [f"wrote {path} ({result['lines'][kind]} {units.get(kind, 'lines')})"
            for kind, path in result["files"].items()]
    return "\n".join(out)


# -- the command line ----------------------------------------------------------------------------------
def fasta_overrides(argv: list[str]) -> list[str]:
    """Rewrite a positional path (an existing file, or a name with a sequence suffix) as ``fasta=<path>``."""
    return positional_overrides(argv, "fasta", lambda a: Path(a).is_file() or output_prefix(a) != Path(a).name)


# an absolute path: Hydra resolves a relative one against the package when main() is called in-process
@hydra.main(config_path=str(CONF_DIR), config_name="genomics_predict",
            version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    result = predict(fasta=cfg.fasta, ckpt_path=cfg.ckpt_path, out_dir=cfg.out_dir or cfg.paths.output_dir,
                     prefix=cfg.prefix, window=cfg.window, batch_size=cfg.batch_size, bin=cfg.bin, digits=cfg.digits,
                     threshold=cfg.threshold, min_length=cfg.min_length, feature_type=cfg.feature_type,
                     probabilities=cfg.probabilities, on_error=cfg.on_error, threads=cfg.threads,
                     decode=cfg.decode)
    write_json_atomic(Path(cfg.paths.output_dir) / "metrics.json", result)
    print(report(result))


def main() -> None:
    """``python -m genomics.predict [genome.fa] ckpt_path=... [out_dir=...] [threshold=...]``."""
    sys.argv = [sys.argv[0], *fasta_overrides(sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    run(main, "genomics_predict")  # Hydra's errors plus "did you mean" for mistyped overrides
