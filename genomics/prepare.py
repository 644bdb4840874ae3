"""Real data sets without the internet at large: Debian's packaged example data, checksum-verified.

``python -m genomics.data prepare NAME`` runs ``apt-get download PKG`` in a temporary folder (no root
needed), unpacks the ``.deb`` with ``dpkg-deb -x``, verifies the SHA-256 of the data file against the
checksum pinned below and copies it to ``<data_dir>/genomics/NAME/``. The built-in synthetic sets
(``builtin_*``) are generated on first use instead.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core_attn.training.atomic import open_atomic
from core_attn.training.debian import fetch_packages, sha256
from core_attn.validation import did_you_mean

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DebianDataset:
    """A data file shipped in a Debian package.

    Attributes:
        package: the Debian package (``apt-get download <package>``).
        member: the file's path inside the package.
        filename: its name under ``<data_dir>/genomics/<name>/``.
        sha256: the pinned checksum of the file.
        description: what it is, for ``python -m genomics.data list``.
    """

    package: str
    member: str
    filename: str
    sha256: str
    description: str


DEBIAN: dict[str, DebianDataset] = {
    "16s": DebianDataset(
        "microbiomeutil-data", "usr/share/microbiomeutil-data/RESOURCES/rRNA16S.gold.fasta", "rRNA16S.gold.fasta",
        "e48d014e85043939d375a9d5ff38c302829c9d3289392f697232e627c5c07517",
        "5,181 near-full-length 16S rRNA genes (RDP 'gold' set) with their taxonomy in the header"),
    "uniprot20k": DebianDataset(
        "mmseqs2-examples", "usr/share/doc/mmseqs2/example-data/DB.fasta.gz", "DB.fasta.gz",
        "92a65aa435f5d3e0f33eb47d87910fe7fc6033a28bf4ed1367094377d791d567",
        "20,000 UniProt proteins (MMseqs2's example database)"),
    "leptospira": DebianDataset(
        "any2fasta-examples", "usr/share/doc/any2fasta/examples/test.gbk.gz", "leptospira.gbk.gz",
        "321919e452f88665a597b5c31813b7b99ab0f60ce3706e25eadd2309f9e3d93b",
        "Leptospira kirschneri str. H1 draft genome, GenBank: 4.59 Mb in 75 contigs, 4,162 CDS features"),
    "lambda": DebianDataset(
        "bowtie2-examples", "usr/share/doc/bowtie2/examples/reference/lambda_virus.fa.gz", "lambda_virus.fa.gz",
        "08fe207fcb4bbe47e80cc7469e68d1f1d8d497a836fe1c09f5a9734d2e4cd9e0",
        "Enterobacteria phage lambda, complete genome (48,502 bases), FASTA"),
}

BUILTIN = {
    "builtin_genome": ("genome.gbk", "synthetic GenBank genome (200 kb) with CDS features"),
    "builtin_proteins": ("proteins.fasta", "synthetic protein families (1,000 proteins)"),
    "builtin_labelled": ("labelled.fasta", "synthetic DNA sequences of 4 classes, label in the header"),
}

HINT = ("Get the real data sets with `python -m genomics.data prepare NAME` (NAME in 16s, uniprot20k, "
        "leptospira, lambda; needs apt-get and Debian's archive), then e.g. "
        "`python -m genomics.train experiment=genomics_classify_16s`.")


def dataset_names() -> list[str]:
    """Every data set name: the Debian ones and the built-in synthetic ones."""
    return list(DEBIAN) + list(BUILTIN)


def _check_name(name: str) -> None:
    if name not in DEBIAN and name not in BUILTIN:
        raise ValueError(f"dataset={name!r} is not a known data set; expected one of {dataset_names()} "
                         f"(or dataset=path with data.path=<file>).{did_you_mean(name, dataset_names())}")


def dataset_path(name: str, data_dir: str | Path) -> Path:
    """The file of data set ``name`` under ``<data_dir>/genomics/<name>/``; built-in sets are generated on
    first use, Debian ones must have been prepared (``FileNotFoundError`` says how)."""
    _check_name(name)
    folder = Path(data_dir) / "genomics" / name
    if name in BUILTIN:
        path = folder / BUILTIN[name][0]
        if not path.is_file():
            _generate(name, path)
        return path
    path = folder / DEBIAN[name].filename
    if not path.is_file():
        raise FileNotFoundError(f"data set {name!r} is not prepared ({path} is missing); run "
                                f"`python -m genomics.data prepare {name} --data-dir {data_dir}`")
    return path


def _generate(name: str, path: Path) -> None:
    from genomics import synthetic

    log.info("generating the built-in data set %s at %s. %s", name, path, HINT)
    if name == "builtin_genome":
        synthetic.write_genome(path, length=200_000, seed=0)
    elif name == "builtin_proteins":
        synthetic.write_proteins(path, num_families=40, per_family=25, seed=0)
    else:
        synthetic.write_labelled(path, num_classes=4, per_class=150, length=600, seed=0)


def prepare(name: str, data_dir: str | Path, *, force: bool = False) -> Path:
    """Fetch data set ``name`` into ``<data_dir>/genomics/<name>/`` and return its file.

    Debian sets: ``apt-get download`` the package into a temporary folder, ``dpkg-deb -x`` it, check the
    file's SHA-256 against the pinned value (a mismatch raises and nothing is copied). Idempotent: a
    present file with the right checksum is kept unless ``force``.
    """
    _check_name(name)
    if name in BUILTIN:
        return dataset_path(name, data_dir)
    ds = DEBIAN[name]
    dest = Path(data_dir) / "genomics" / name / ds.filename
    if dest.is_file() and not force and sha256(dest) == ds.sha256:
        log.info("%s is already prepared at %s", name, dest)
        return dest
    with tempfile.TemporaryDirectory(prefix=f"genomics-{name}-") as tmp:
        root = fetch_packages([ds.package], tmp)
        src = root / ds.member
        if not src.is_file():
            raise RuntimeError(f"{ds.package} has no {ds.member}; the package layout changed")
        got = sha256(src)
        if got != ds.sha256:
            raise RuntimeError(f"checksum mismatch for {ds.member} from {ds.package}: sha256 {got}, expected "
                               f"{ds.sha256}; the packaged data changed, refusing to use it")
        with open(src, "rb") as fin, open_atomic(dest, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    log.info("prepared %s: %s (sha256 verified)", name, dest)
    return dest
