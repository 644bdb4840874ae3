"""DNA and protein tokenisers: round trips, ambiguity codes, soft-masking, k-mers, reverse complement."""

from __future__ import annotations

import numpy as np
import pytest

from genomics.tokenizers import (SPECIALS, DNATokenizer, InvalidCharacterError, ProteinTokenizer,
                                 build_tokenizer)


def test_dna_round_trip_and_ids():
    tok = DNATokenizer()
    ids = tok.encode("ACGTN")
    assert ids.dtype == np.uint8 and ids.tolist() == [4, 5, 6, 7, 8]
    assert tok.decode(ids) == "ACGTN"
    assert tok.vocab_size == len(SPECIALS) + 5 == 9


def test_iupac_codes_read_as_n_and_u_as_t():
    tok = DNATokenizer()
    assert tok.decode(tok.encode("RYSWKMBDHVryswkmbdhv")) == "N" * 20
    assert tok.decode(tok.encode("ACGU")) == "ACGT"


def test_soft_masking_fold_or_keep():
    assert DNATokenizer(case="fold").decode(DNATokenizer(case="fold").encode("acgtnAr")) == "ACGTNAN"
    keep = DNATokenizer(case="keep")
    assert keep.vocab_size == 14
    assert keep.decode(keep.encode("acgtnAr")) == "acgtnAn"


def test_invalid_character_names_position_and_char():
    with pytest.raises(InvalidCharacterError, match=r"invalid character 'J' at position 3 \(0-based\)") as e:
        DNATokenizer().encode("ACGJT")
    assert e.value.position == 3 and e.value.char == "J"
    with pytest.raises(InvalidCharacterError, match=r"invalid character '-' at position 1"):
        DNATokenizer().encode("A-C")


@pytest.mark.parametrize("k", [2, 3])
def test_kmers_round_trip_and_n_token(k):
    tok = DNATokenizer(k=k)
    assert tok.vocab_size == len(SPECIALS) + 4 ** k + 1
    rng = np.random.default_rng(k)
    seq = "".join(rng.choice(list("ACGT"), size=6 * k))
    ids = tok.encode(seq)
    assert len(ids) == 6 and tok.decode(ids) == seq
    # any k-mer holding an N (or the padded tail) is the single N k-mer token
    assert tok.decode(tok.encode("A" * k + "N" + "C" * (k - 1))) == "A" * k + "N" * k
    assert tok.decode(tok.encode("A" * (k + 1))) == "A" * k + "N" * k  # the partial tail k-mer is N-padded


def test_kmer_options_validated():
    with pytest.raises(ValueError, match=r"k=4 is out of range; expected 1 <= k <= 3"):
        DNATokenizer(k=4)
    with pytest.raises(ValueError, match=r"case='keep' \(soft-masked tokens\) needs k=1"):
        DNATokenizer(k=2, case="keep")
    with pytest.raises(ValueError, match=r"case='fld' is not allowed.*Did you mean 'fold'"):
        DNATokenizer(case="fld")


@pytest.mark.parametrize("k,case", [(1, "fold"), (1, "keep"), (2, "fold"), (3, "fold")])
def test_reverse_complement(k, case):
    tok = DNATokenizer(k=k, case=case)
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGTacgt" if case == "keep" else "ACGT"), size=12))
    ids = tok.encode(seq)
    comp = str.maketrans("ACGTacgt", "TGCAtgca")
    assert tok.decode(tok.reverse_complement(ids)) == seq.translate(comp)[::-1]
    assert np.array_equal(tok.reverse_complement(tok.reverse_complement(ids)), ids)


def test_reverse_complement_known_example():
    tok = DNATokenizer()
    assert tok.decode(tok.reverse_complement(tok.encode("AACGTN"))) == "NACGTT"


def test_protein_round_trip_and_extras():
    tok = ProteinTokenizer()
    seq = "ACDEFGHIKLMNPQRSTVWYXBZUO"
    assert tok.vocab_size == len(SPECIALS) + 25 == 29
    assert tok.decode(tok.encode(seq)) == seq
    assert tok.decode(tok.encode("mkv")) == "MKV"
    assert tok.decode(tok.encode("MKV*")) == "MKV"  # a trailing stop is dropped
    assert len(tok.standard_ids) == 20


def test_protein_invalid_characters():
    with pytest.raises(InvalidCharacterError, match=r"invalid character 'J' at position 1"):
        ProteinTokenizer().encode("MJK")
    with pytest.raises(InvalidCharacterError, match=r"invalid character '\*' at position 1"):
        ProteinTokenizer().encode("M*K")
    with pytest.raises(InvalidCharacterError, match=r"invalid character '\*' at position 2"):
        ProteinTokenizer(strip_stop=False).encode("MK*")


def test_build_tokenizer():
    assert isinstance(build_tokenizer(alphabet="protein"), ProteinTokenizer)
    assert build_tokenizer(alphabet="dna", k=2).k == 2
    with pytest.raises(ValueError, match=r"alphabet='rna' is not allowed"):
        build_tokenizer(alphabet="rna")
    with pytest.raises(ValueError, match=r"k=2 is for DNA k-mers"):
        build_tokenizer(alphabet="protein", k=2)
