"""Built-in synthetic data, generated deterministically from a seed: no download needed.

- :func:`write_genome`: a GenBank genome of genes (codon usage, start/stop codons, both strands) between
  low-order Markov intergenic stretches, with nearby paralog copies; CDS features mark the genes. A model
  that sees the reading frame and the copies beats a low-order Markov chain on it.
- :func:`write_proteins`: a FASTA of protein families (members mutated from a family ancestor), so
  context predicts masked residues better than residue frequencies do.
- :func:`write_labelled`: a FASTA of DNA sequences of a few classes (class-specific Markov chains and
  motifs), the label in the header (``class=<name>``).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from core_attn.training.atomic import open_atomic
from core_attn.validation import check_int

BASES = np.array(list("ACGT"))
CODONS = ["".join(c) for c in itertools.product("ACGT", repeat=3)]
STOPS = ("TAA", "TAG", "TGA")
SENSE = [c for c in CODONS if c not in STOPS]
AMINO = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
_COMP = str.maketrans("ACGT", "TGCA")


def _markov_sample(rng: np.random.Generator, trans: np.ndarray, length: int, order: int) -> str:
    """A string sampled from an order-``order`` chain with transition table ``trans`` (4**order, 4)."""
    out = list(rng.choice(BASES, size=order))
    ctx = sum("ACGT".index(b) * 4 ** (order - 1 - i) for i, b in enumerate(out))
    cum = trans.cumsum(axis=1)
    for u in rng.random(length - order):
        b = int(np.searchsorted(cum[ctx], u * cum[ctx, -1]))
        b = min(b, 3)
        out.append("ACGT"[b])
        ctx = (ctx * 4 + b) % (4 ** order)
    return "".join(out[:length])


def _mutate(rng: np.random.Generator, seq: str, rate: float, alphabet: np.ndarray) -> str:
    arr = np.array(list(seq))
    hit = rng.random(len(arr)) < rate
    arr[hit] = rng.choice(alphabet, size=int(hit.sum()))
    return "".join(arr)


def genome_sequence(length: int, seed: int = 0) -> tuple[str, list[tuple[int, int, int]]]:
    """A synthetic genome of ``length`` bases and its genes as ``(start, end, strand)`` (0-based, end exclusive)."""
    check_int("length", length, min_value=100)
    rng = np.random.default_rng(seed)
    trans = rng.dirichlet(np.full(4, 0.5), size=4 ** 3)  # intergenic order-3 chain
    usage = rng.dirichlet(np.full(len(SENSE), 0.3))  # skewed codon usage
    parts: list[str] = []
    genes: list[tuple[int, int, int]] = []
    recent: list[str] = []
    pos = 0
    while pos < length:
        gap = int(rng.integers(50, 400))
        parts.append(_markov_sample(rng, trans, gap, 3))
        pos += gap
        if recent and rng.random() < 0.2:  # a paralog: a mutated copy of a recent gene
            body = _mutate(rng, recent[int(rng.integers(len(recent)))], 0.03, BASES)
        else:
            n_codons = int(rng.integers(60, 400))
            body = "ATG" + "".join(rng.choice(SENSE, size=n_codons, p=usage)) + str(rng.choice(STOPS))
        recent = (recent + [body])[-4:]
        strand = 1 if rng.random() < 0.5 else -1
        parts.append(body if strand == 1 else body.translate(_COMP)[::-1])
        genes.append((pos, pos + len(body), strand))
        pos += len(body)
    seq = "".join(parts)[:length]
    return seq, [g for g in genes if g[1] <= length]


def write_genome(path: str | Path, *, length: int = 200_000, seed: int = 0, record_id: str = "synthetic") -> Path:
    """Write :func:`genome_sequence` as a GenBank file with one CDS feature per gene."""
    from Bio.Seq import Seq
    from Bio.SeqFeature import FeatureLocation, SeqFeature
    from Bio.SeqIO import write
    from Bio.SeqRecord import SeqRecord

    seq, genes = genome_sequence(length, seed)
    rec = SeqRecord(Seq(seq), id=record_id, name=record_id[:16], description=f"synthetic genome, seed {seed}")
    rec.annotations["molecule_type"] = "DNA"
    for i, (s, e, strand) in enumerate(genes):
        rec.features.append(SeqFeature(FeatureLocation(s, e, strand=strand), type="CDS",
                                        qualifiers={"locus_tag": [f"syn_{i:05d}"]}))
    return _write(path, lambda f: write([rec], f, "genbank"))


def write_proteins(path: str | Path, *, num_families: int = 40, per_family: int = 25, seed: int = 0) -> Path:
    """Write a FASTA of ``num_families * per_family`` proteins: each family's members are its ancestor
    with 15% of residues substituted and a random crop of the ends."""
    from Bio.Seq import Seq
    from Bio.SeqIO import write
    from Bio.SeqRecord import SeqRecord

    rng = np.random.default_rng(seed)
    freqs = rng.dirichlet(np.full(len(AMINO), 2.0))
    records = []
    for fam in range(num_families):
        ancestor = "M" + "".join(rng.choice(AMINO, size=int(rng.integers(80, 500)), p=freqs))
        for m in range(per_family):
            member = _mutate(rng, ancestor, 0.15, AMINO)
            a, b = int(rng.integers(0, 10)), len(member) - int(rng.integers(0, 10))
            records.append(SeqRecord(Seq(member[a:b]), id=f"fam{fam:03d}_{m:03d}", description=f"family={fam}"))
    order = rng.permutation(len(records))
    return _write(path, lambda f: write([records[i] for i in order], f, "fasta"))


def write_labelled(path: str | Path, *, num_classes: int = 4, per_class: int = 100, length: int = 600,
                   seed: int = 0) -> Path:
    """Write a FASTA of DNA sequences of ``num_classes`` classes, header ``<id> class=<name>``: each class
    has its own order-2 chain and plants its own 8-base motif a few times per sequence."""
    from Bio.Seq import Seq
    from Bio.SeqIO import write
    from Bio.SeqRecord import SeqRecord

    rng = np.random.default_rng(seed)
    shared = rng.dirichlet(np.full(4, 1.0), size=16)
    records = []
    for c in range(num_classes):
        trans = 0.7 * shared + 0.3 * rng.dirichlet(np.full(4, 1.0), size=16)
        motif = "".join(rng.choice(BASES, size=8))
        for i in range(per_class):
            n = int(rng.integers(length * 3 // 4, length + 1))
            seq = list(_markov_sample(rng, trans, n, 2))
            for _ in range(3):
                at = int(rng.integers(0, n - len(motif)))
                seq[at:at + len(motif)] = _mutate(rng, motif, 0.1, BASES)
            records.append(SeqRecord(Seq("".join(seq)), id=f"s{c}_{i:04d}", description=f"class=c{c}"))
    order = rng.permutation(len(records))
    return _write(path, lambda f: write([records[i] for i in order], f, "fasta"))


def _write(path: str | Path, writer) -> Path:
    """Write through a temporary file and rename, so an interrupted run never leaves half a file."""
    with open_atomic(path) as f:
        writer(f)
    return Path(path)
