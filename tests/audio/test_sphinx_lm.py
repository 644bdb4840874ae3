"""The CMU Sphinx trie language model reader (audio.sphinx_lm): a small model pocketsphinx writes reads back as its
ARPA file, the general English trigram of the pocketsphinx wheel scores as pocketsphinx scores it and sums to one,
and a file of another kind or a cut one fails with what was expected."""

from __future__ import annotations

import math
import random
import re
import struct

import pytest

from audio.sphinx_lm import HEADER, read_sphinx_lm

LOG10_UNIT = math.log10(1.0001)  # pocketsphinx's NGramModel.prob: an int, log base 1.0001, truncated
TINY_ARPA = """\\data\\
ngram 1=5
ngram 2=4
ngram 3=2

\\1-grams:
-1.0000\t</s>
-99\t<s>\t-0.3000
-0.6000\ta\t-0.2000
-0.7000\tb\t-0.1000
-0.9000\tc\t-0.4000

\\2-grams:
-0.2000\t<s> a\t-0.1500
-0.3000\ta b\t-0.0500
-0.4000\tb c
-0.5000\ta </s>

\\3-grams:
-0.1000\t<s> a b
-0.2000\ta b a

\\end\\
"""


def ps_log10(lm, gram: tuple[str, ...]) -> float:
    """pocketsphinx's log10 p(gram[-1] | gram[:-1]): ``prob`` takes the word, then its history most recent first."""
    return lm.prob(list(reversed(gram))) * LOG10_UNIT


def backed_off(model, gram: tuple[str, ...]) -> float:
    """log10 p(gram[-1] | gram[:-1]) with backoff, the way an ARPA model is read."""
    if gram in model[len(gram) - 1]:
        return model[len(gram) - 1][gram][0]
    history = model[len(gram) - 2].get(gram[:-1])
    return (history[1] if history else 0.0) + backed_off(model, gram[1:])


@pytest.fixture(scope="module")
def en_us():
    """The wheel's en-us trigram, read once, and pocketsphinx's own model of it."""
    ps = pytest.importorskip("pocketsphinx")
    from audio.sphinx_lm import pocketsphinx_lm_path

    path = pocketsphinx_lm_path()
    return read_sphinx_lm(path), ps.NGramModel.readfile(str(path))


def test_small_model_reads_back_as_its_arpa(tmp_path):
    ps = pytest.importorskip("pocketsphinx")
    arpa, binary = tmp_path / "tiny.arpa", tmp_path / "tiny.lm.bin"
    arpa.write_text(TINY_ARPA)
    lm = ps.NGramModel.readfile(str(arpa))
    lm.write(str(binary), ps.NGramModel.str_to_type("bin"))
    model = read_sphinx_lm(binary)
    listed = {}
    for line in TINY_ARPA.splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and not line.startswith("ngram"):
            listed[tuple(fields[1].split())] = (float(fields[0]), float(fields[2]) if len(fields) > 2 else None)
    assert [len(g) for g in model] == [5, 5, 2]  # the builder adds "b a", the unlisted suffix of "a b a"
    for gram, (logp, bow) in listed.items():
        got = model[len(gram) - 1][gram]
        assert got[0] == pytest.approx(logp, rel=1e-7, abs=1e-6), gram  # float32
        assert got[1] is None if len(gram) == 3 else got[1] == pytest.approx(bow or 0.0, abs=1e-6), gram
    assert model[1][("b", "a")][1] == 0.0
    assert model[1][("b", "a")][0] == pytest.approx(ps_log10(lm, ("b", "a")), abs=LOG10_UNIT)


def test_en_us_matches_pocketsphinx(en_us):
    model, lm = en_us
    rng = random.Random(0)
    grams = [g for n in (1, 2) for g in rng.sample(list(model[n]), 15)]
    grams += [("conference", "key"), ("the", "pound", "conference")]  # unlisted: backoff
    assert not all(g in model[len(g) - 1] for g in grams[-2:])
    for gram in grams:
        assert backed_off(model, gram) == pytest.approx(ps_log10(lm, gram), abs=LOG10_UNIT + 1e-9), gram
    assert all((w,) in model[0] for w in ("the", "conference", "pound", "key", "<s>", "</s>", "don't"))
    assert model[2][("<s>", "how", "'bout")][1] is None


def test_en_us_sums_to_one(en_us):
    model, _ = en_us
    vocab = [w for (w,) in model[0]]
    for history in (("the",), ("<s>",), ("one", "of")):
        assert history in model[len(history) - 1]
        total = sum(10 ** backed_off(model, (*history, w)) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-2), history


def test_not_a_trie_model(tmp_path):
    path = tmp_path / "model.arpa"
    path.write_text(TINY_ARPA)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: not a CMU Sphinx trie.*'Trie Language Model'"):
        read_sphinx_lm(path)
    cut = tmp_path / "cut.lm.bin"
    cut.write_bytes(HEADER + struct.pack("<B3I", 3, 5, 4, 2) + bytes(100))
    with pytest.raises(ValueError, match=rf"{re.escape(str(cut))}: truncated trie language model: the quantization"):
        read_sphinx_lm(cut)
