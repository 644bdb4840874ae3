"""The built-in speech corpus: English sentences synthesised with ``espeak-ng`` (and ``flite``, on request).

No English text corpus is shipped by Debian's base system or by the wheels this project installs (nltk's
data, for one, is a separate download), so the sentences come from a small deterministic grammar over a
fixed vocabulary of about 850 word forms (subjects, verbs with their tenses, objects, places, times,
numbers). Sentences are drawn without repetition and split so that no test sentence occurs in training;
the words are shared (a character model cannot spell words it never heard). ``sentences_file`` replaces
the grammar with your own text, one sentence per line.

Voices are an espeak-ng accent plus a voice variant (``en-us+m3``); the variants are split into
disjoint train, validation and test sets, so test speech is unseen in both sentence and voice. Training
also gets ``random_voices`` variants of our own (:func:`random_variant`: vocal-tract scaling, formant
heights and widths, pitch range, voicing, breath, a tone curve, an echo, drawn from about the ranges of
espeak-ng's training variants), written to a private copy of espeak-ng's data folder while the corpus is
made and kept in ``<corpus>/voices/``. Speaking rate and pitch are drawn per utterance. Everything is a
pure function of the config and the seed.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from core_attn.errors import ToolError

ESPEAK_HINT = ("install it with `apt-get install espeak-ng` (Debian/Ubuntu), `brew install espeak-ng` (macOS) "
               "or `dnf install espeak-ng` (Fedora), or train on your own data (data=audio_librispeech or "
               "data=audio_manifest)")
FLITE_HINT = "install it with `apt-get install flite`, or drop flite from data.engines"

# -- voices ----------------------------------------------------------------------------------------
ESPEAK_ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
                  "en-us-nyc")
# espeak-ng's voice variants (voices/!v); whispering, croaking and robotic ones are left out.
ESPEAK_VARIANTS = {
    "train": ("m1", "m2", "m4", "m5", "m7", "f1", "f3", "f4", "klatt", "klatt3", "klatt4", "Alex", "Andrea", "Andy",
              "Annie", "Denis", "Gene", "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Michael", "Mike", "Nguyen",
              "adam", "antonio", "aunty", "belinda", "benjamin", "caleb", "david", "ed", "edward", "grandma",
              "iven", "iven3", "john", "linda", "marcelo", "max", "michel", "miguel", "norbert", "pablo", "paul",
              "quincy", "rob", "robert", "steph", "steph3", "travis", "victor"),
    "val": ("m3", "f2", "klatt2", "Gene2", "Mario", "boris", "iven2", "steph2"),
    "test": ("m6", "m8", "f5", "klatt5", "Alicia", "Diogo", "anika", "edward2", "gustave", "grandpa", "iven4",
             "pedro", "sandro", "shelby", "zac"),
}
RANDOM_VARIANT = "rand"  # our generated training variants: rand000, rand001, ...
FLITE_VOICES = {"train": ("kal", "awb", "rms"), "val": ("kal16",), "test": ("slt",)}
RATES = (135, 185)   # espeak-ng words per minute (uniform); 4x-subsampled char CTC needs < ~25 chars/s
PITCHES = (25, 75)   # espeak-ng pitch 0-99 (uniform)
TARGET_RATE = 16000


def _variant_names() -> set[str]:
    out = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1].split("/")[-1] for line in out.splitlines()[1:] if line.strip()}


def check_engines(engines: Sequence[str]) -> None:
    """Raise :class:`~core_attn.errors.ToolError` (a ``RuntimeError``) with an install hint when a requested
    synthesiser is missing."""
    for engine in engines:
        if engine not in ("espeak-ng", "flite"):
            raise ValueError(f"data.engines contains {engine!r}; expected 'espeak-ng' and/or 'flite'")
        if shutil.which(engine) is None:
            hint = ESPEAK_HINT if engine == "espeak-ng" else FLITE_HINT
            raise ToolError(f"the built-in speech corpus needs `{engine}`, which is not installed: {hint}")
    if "espeak-ng" in engines:
        missing = sorted({v for vs in ESPEAK_VARIANTS.values() for v in vs} - _variant_names())
        if missing:
            raise ToolError(f"espeak-ng lacks the voice variants {missing}; install espeak-ng >= 1.50")


def engine_version(engine: str) -> str:
    """The synthesiser's version line (part of the corpus cache key: another version speaks differently)."""
    flag = "--version"
    return subprocess.run([engine, flag], capture_output=True, text=True).stdout.strip().splitlines()[0]


def espeak_data_dir() -> str:
    """The folder of espeak-ng's data (``.../espeak-ng-data``), as its version line reports it."""
    line = engine_version("espeak-ng")
    if "Data at:" not in line:
        raise ToolError(f"`espeak-ng --version` printed {line!r}, which does not say where its data is "
                        "('Data at: <folder>'); random training voices need a copy of that folder "
                        "(or set data.random_voices=0)")
    return line.split("Data at:", 1)[1].strip()


def random_variant(rng: np.random.Generator) -> str:
    """The text of an espeak-ng voice variant file (``voices/!v/<name>``) with random voice parameters.

    Drawn from about the ranges of the training variants in ``ESPEAK_VARIANTS["train"]``, widened: a
    vocal-tract scaling of the formant frequencies F1-F5 (0.85-1.5, each formant jittered by 8%; the
    training variants reach 1.35), formant heights and widths (percent of the default), a pitch range
    (base 55-240 Hz, top 1.15-1.8x the base), voicing and consonant amplitudes (unvoiced consonants
    down to 15%, the training variants to 40%), flutter and roughness; and, each with its own chance,
    breath noise per formant, a tone curve (3-5 points from 100 Hz to 4 kHz) and an echo.
    """
    lines = ["language variant", "gender " + ("female" if rng.random() < 0.5 else "male")]
    base = float(np.exp(rng.uniform(np.log(55), np.log(240))))
    lines.append(f"pitch {base:.0f} {base * rng.uniform(1.15, 1.8):.0f}")
    tract = rng.uniform(0.85, 1.5)
    for k in range(9):
        freq = 100 * (tract if 1 <= k <= 5 else rng.uniform(0.85, 1.4)) * rng.uniform(0.92, 1.08)
        height = rng.uniform(60, 160) if k <= 5 else rng.uniform(0, 130)
        lines.append(f"formant {k} {freq:.0f} {height:.0f} {rng.uniform(50, 180):.0f}")
    lines.append(f"voicing {rng.uniform(30, 200):.0f}")
    lines.append(f"consonants {rng.uniform(40, 150):.0f} {rng.uniform(15, 150):.0f}")
    lines.append(f"flutter {int(rng.integers(0, 13))}")
    lines.append(f"roughness {int(rng.integers(0, 5))}")
    if rng.random() < 0.35:
        lines.append("breath " + " ".join(str(int(b)) for b in rng.integers(0, 16, size=8)))
    if rng.random() < 0.5:
        points = int(rng.integers(3, 6))
        freqs = np.sort(rng.choice(np.arange(100, 4001, 50), size=points, replace=False))
        amps = rng.integers(10, 256, size=points)
        lines.append("tone " + " ".join(f"{f} {a}" for f, a in zip(freqs, amps)))
    if rng.random() < 0.3:
        lines.append(f"echo {int(rng.integers(10, 141))} {int(rng.integers(5, 51))}")
    return "\n".join(lines) + "\n"


def random_variants(n: int, seed: int) -> dict[str, str]:
    """``n`` random training variants, name -> voice file text (deterministic in ``seed``)."""
    rng = np.random.default_rng([seed, 3])
    return {f"{RANDOM_VARIANT}{i:03d}": f"name {RANDOM_VARIANT}{i:03d}\n" + random_variant(rng) for i in range(n)}


def write_espeak_data(dest, variants: dict[str, str]):
    """A private copy of espeak-ng's data folder in ``dest`` with ``variants`` added to ``voices/!v``;
    returns ``dest`` (for ``espeak-ng --path``). Each variant is checked to change the voice: espeak-ng
    silently speaks with the plain voice when a variant file is missing or unreadable."""
    from pathlib import Path

    dest = Path(dest)
    shutil.copytree(espeak_data_dir(), dest / "espeak-ng-data")
    for name, text in variants.items():
        (dest / "espeak-ng-data" / "voices" / "!v" / name).write_text(text)
    plain = synthesize(Utterance("checking the voice", "espeak-ng:en", 160, 50), espeak_path=str(dest))
    for name in variants:
        wave = synthesize(Utterance("checking the voice", f"espeak-ng:en+{name}", 160, 50), espeak_path=str(dest))
        if len(wave) == len(plain) and np.array_equal(wave, plain):
            raise RuntimeError(f"espeak-ng ignored the generated voice variant {name!r} (it spoke with the plain "
                               f"voice); its file: {dest / 'espeak-ng-data' / 'voices' / '!v' / name}")
    return dest


def voices(split: str, engines: Sequence[str], random_voices: int = 0) -> list[str]:
    """The voices of ``split`` (``train``/``val``/``test``): ``espeak-ng:<accent>+<variant>`` or ``flite:<voice>``;
    training also has ``random_voices`` generated variants (``rand000``, ...) in every accent."""
    out = []
    if "espeak-ng" in engines:
        out += [f"espeak-ng:{a}+{v}" for v in ESPEAK_VARIANTS[split] for a in ESPEAK_ACCENTS]
        if split == "train":
            out += [f"espeak-ng:{a}+{RANDOM_VARIANT}{i:03d}" for i in range(random_voices) for a in ESPEAK_ACCENTS]
    if "flite" in engines:
        out += [f"flite:{v}" for v in FLITE_VOICES[split]]
    return out


@dataclass(frozen=True)
class Utterance:
    """What to synthesise: text, voice, speaking rate (words/min) and pitch (0-99)."""

    text: str
    voice: str
    rate: int
    pitch: int


def synthesize(utt: Utterance, sample_rate: int = TARGET_RATE, espeak_path: str | None = None) -> np.ndarray:
    """Speak ``utt`` and return float32 mono samples at ``sample_rate`` (``espeak_path``: a folder holding
    an ``espeak-ng-data`` folder to use instead of the installed one, see :func:`write_espeak_data`)."""
    engine, voice = utt.voice.split(":", 1)
    if engine == "espeak-ng":
        cmd = ["espeak-ng", *(["--path", espeak_path] if espeak_path else []), "-v", voice, "-s", str(utt.rate),
               "-p", str(utt.pitch), "--stdout", utt.text]
    else:  # flite: rate as a duration stretch around its default 170 words/min
        cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={170 / utt.rate:.3f}", "-t", utt.text,
               "-o", "/dev/stdout"]
    wav = subprocess.run(cmd, capture_output=True, check=True).stdout
    data, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    wave = torch.from_numpy(data.mean(axis=1))
    if rate != sample_rate:
        wave = AF.resample(wave, rate, sample_rate)
    return wave.numpy()


# -- the sentence grammar --------------------------------------------------------------------------
def _words(s: str) -> tuple[str, ...]:
    return tuple(s.split())


NAMES = _words("""anna ben carla daniel emma frank grace henry irene jack julia kevin laura martin nina oscar paula
peter rachel simon sarah thomas victor walter alice george helen james lucy maria mark robert susan william david
emily joseph kate michael olivia""")
ANIMALS = _words("dog cat horse bird fish rabbit mouse sheep goat duck lion tiger bear wolf fox owl frog cow pig")
THINGS = _words("""book letter table chair window door lamp clock phone picture bottle basket ball box bag coat
hat shoe key map ticket card cup plate bowl spoon knife bread apple orange cake cheese egg flower tree stone rope
boat car truck bicycle train bus camera computer radio piano guitar paper pencil candle blanket mirror bucket
ladder hammer wheel engine garden house bridge fence road river hill field cloud shirt jacket wallet umbrella
kettle pillow""")
PLURAL_IRREGULAR = {"mouse": "mice", "sheep": "sheep", "fish": "fish", "knife": "knives", "wolf": "wolves",
                    "shelf": "shelves", "child": "children", "man": "men", "woman": "women", "person": "people"}
PEOPLE = _words("man woman child teacher doctor farmer driver student baker nurse pilot painter singer soldier "
                "writer neighbor captain worker cook guard")
PLACES = _words("""kitchen garden station market school library office hospital village city forest beach
harbor museum park church bakery factory island valley mountain lake castle hotel theater airport bank shop
restaurant street""")
ADJECTIVES = _words("""big small old new red blue green yellow black white brown heavy light warm cold soft hard
bright dark quiet loud clean dirty empty full long short young tall strong weak quick slow happy sad busy lazy
rich poor sweet bitter fresh broken wooden golden silver strange famous careful gentle tired hungry angry
proud simple lovely tiny huge narrow wide deep shallow sharp smooth rough wet dry cheap expensive""")
ADVERBS = _words("""quickly slowly carefully quietly loudly happily sadly easily gently suddenly finally
usually often never always sometimes again today yesterday tomorrow early late soon already almost nearly
really certainly probably""")
# (base, third person, past, past participle, -ing)
VERBS = [tuple(v.split(",")) for v in """\
find,finds,found,found,finding see,sees,saw,seen,seeing take,takes,took,taken,taking give,gives,gave,given,giving
bring,brings,brought,brought,bringing buy,buys,bought,bought,buying sell,sells,sold,sold,selling
make,makes,made,made,making break,breaks,broke,broken,breaking carry,carries,carried,carried,carrying
hold,holds,held,held,holding open,opens,opened,opened,opening close,closes,closed,closed,closing
paint,paints,painted,painted,painting clean,cleans,cleaned,cleaned,cleaning wash,washes,washed,washed,washing
fix,fixes,fixed,fixed,fixing move,moves,moved,moved,moving push,pushes,pushed,pushed,pushing
pull,pulls,pulled,pulled,pulling lift,lifts,lifted,lifted,lifting drop,drops,dropped,dropped,dropping
throw,throws,threw,thrown,throwing catch,catches,caught,caught,catching keep,keeps,kept,kept,keeping
leave,leaves,left,left,leaving send,sends,sent,sent,sending hide,hides,hid,hidden,hiding
watch,watches,watched,watched,watching follow,follows,followed,followed,following
visit,visits,visited,visited,visiting call,calls,called,called,calling help,helps,helped,helped,helping
cook,cooks,cooked,cooked,cooking eat,eats,ate,eaten,eating drink,drinks,drank,drunk,drinking
read,reads,read,read,reading write,writes,wrote,written,writing draw,draws,drew,drawn,drawing
build,builds,built,built,building fill,fills,filled,filled,filling check,checks,checked,checked,checking
count,counts,counted,counted,counting borrow,borrows,borrowed,borrowed,borrowing
choose,chooses,chose,chosen,choosing forget,forgets,forgot,forgotten,forgetting
remember,remembers,remembered,remembered,remembering like,likes,liked,liked,liking
want,wants,wanted,wanted,wanting need,needs,needed,needed,needing meet,meets,met,met,meeting
teach,teaches,taught,taught,teaching show,shows,showed,shown,showing steal,steals,stole,stolen,stealing
feed,feeds,fed,fed,feeding cut,cuts,cut,cut,cutting pack,packs,packed,packed,packing
order,orders,ordered,ordered,ordering answer,answers,answered,answered,answering
share,shares,shared,shared,sharing lose,loses,lost,lost,losing""".split()]
INTRANSITIVE = [tuple(v.split(",")) for v in """\
run,runs,ran,run,running walk,walks,walked,walked,walking sleep,sleeps,slept,slept,sleeping
sing,sings,sang,sung,singing dance,dances,danced,danced,dancing swim,swims,swam,swum,swimming
wait,waits,waited,waited,waiting laugh,laughs,laughed,laughed,laughing work,works,worked,worked,working
travel,travels,traveled,traveled,traveling arrive,arrives,arrived,arrived,arriving
listen,listens,listened,listened,listening smile,smiles,smiled,smiled,smiling rest,rests,rested,rested,resting
play,plays,played,played,playing sit,sits,sat,sat,sitting stand,stands,stood,stood,standing
shout,shouts,shouted,shouted,shouting fall,falls,fell,fallen,falling""".split()]
PREPOSITIONS = _words("in near behind under beside above across inside outside through along around past toward")
TIMES = ["in the morning", "in the evening", "at night", "at noon", "after lunch", "before dinner", "last week",
         "next week", "on monday", "on tuesday", "on wednesday", "on thursday", "on friday", "on saturday",
         "on sunday", "last summer", "in the spring", "this winter", "every day", "at midnight", "last year",
         "in april", "in october", "in june", "after the storm", "before sunrise"]
NUMBERS = _words("two three four five six seven eight nine ten eleven twelve fifteen twenty thirty forty fifty "
                 "hundred")
MODALS = _words("will can should must might could would")
CONNECTIVES = _words("because while although before after when until")


class SentenceGrammar:
    """Draws English sentences from a small phrase-structure grammar; a pure function of its ``seed``.

    Each sentence has 5 to about 18 words: statements in three tenses, questions, requests, counts and
    clauses joined by a connective, over the word lists of this module.
    """

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def pick(self, options: Sequence):
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def noun(self, plural: bool = False) -> str:
        n = self.pick(self.pick((THINGS, THINGS, ANIMALS, PEOPLE)))
        if not plural:
            return n
        if n in PLURAL_IRREGULAR:
            return PLURAL_IRREGULAR[n]
        if n.endswith(("s", "sh", "ch", "x")):
            return n + "es"
        if n.endswith("y") and n[-2] not in "aeiou":
            return n[:-1] + "ies"
        return n + "s"

    def noun_phrase(self) -> tuple[str, bool]:
        """(phrase, is_plural)."""
        r = self.rng.random()
        if r < 0.2:
            return self.pick(NAMES), False
        if r < 0.32:
            return f"{self.pick(NUMBERS)} {self.adj()}{self.noun(True)}", True
        plural = self.chance(0.25)
        det = self.pick(("the", "these", "those", "some", "my", "our", "their") if plural else
                        ("the", "the", "a", "this", "that", "my", "your", "his", "her", "our", "every"))
        np_ = f"{det} {self.adj()}{self.noun(plural)}"
        if det == "a" and np_[2] in "aeiou":
            np_ = "an" + np_[1:]
        return np_, plural

    def adj(self) -> str:
        return f"{self.pick(ADJECTIVES)} " if self.chance(0.45) else ""

    def object_phrase(self) -> str:
        np_, _ = self.noun_phrase()
        if self.chance(0.3):
            np_ += f" {self.pick(PREPOSITIONS)} the {self.pick(PLACES)}"
        return np_

    def tail(self) -> str:
        parts = []
        if self.chance(0.35):
            parts.append(f"{self.pick(PREPOSITIONS)} the {self.pick(PLACES)}")
        if self.chance(0.3):
            parts.append(self.pick(TIMES))
        if self.chance(0.2):
            parts.append(self.pick(ADVERBS))
        return (" " + " ".join(parts)) if parts else ""

    def clause(self) -> str:
        subj, plural = self.noun_phrase()
        verb = self.pick(VERBS if self.chance(0.75) else INTRANSITIVE)
        obj = f" {self.object_phrase()}" if verb in VERBS else ""
        form = self.rng.random()
        if form < 0.4:
            vp = verb[2]
        elif form < 0.6:
            vp = verb[0] if plural else verb[1]
        elif form < 0.8:
            vp = f"{self.pick(MODALS)} {verb[0]}"
        elif form < 0.9:
            vp = f"{'were' if plural else 'was'} {verb[4]}"
        else:
            vp = f"{'have' if plural else 'has'} {verb[3]}"
        return f"{subj} {vp}{obj}{self.tail()}"

    def sentence(self) -> str:
        r = self.rng.random()
        if r < 0.55:
            return self.clause()
        if r < 0.7:
            return f"{self.clause()} {self.pick(CONNECTIVES)} {self.clause()}"
        if r < 0.8:
            verb = self.pick(VERBS)
            return f"{self.pick(('did', 'will', 'can', 'should'))} {self.noun_phrase()[0]} {verb[0]} {self.object_phrase()}"
        if r < 0.9:
            verb = self.pick(VERBS)
            return f"please {verb[0]} {self.object_phrase()}{self.tail()}"
        where = f"{self.pick(PREPOSITIONS)} the {self.pick(PLACES)}"
        return f"there {self.pick(('are', 'were'))} {self.pick(NUMBERS)} {self.adj()}{self.noun(True)} {where}"

    def unique(self, n: int, min_words: int = 4) -> list[str]:
        """``n`` distinct sentences of at least ``min_words`` words."""
        seen: set[str] = set()
        out = []
        tries = 0
        while len(out) < n:
            tries += 1
            if tries > 50 * n + 1000:
                raise RuntimeError(f"the grammar could not produce {n} distinct sentences")
            s = self.sentence()
            if len(s.split()) >= min_words and s not in seen:
                seen.add(s)
                out.append(s)
        return out



# -- the corpus ------------------------------------------------------------------------------------
CORPUS_VERSION = 1  # bump when generation changes: a new cache directory is made


@dataclass(frozen=True)
class CorpusSpec:
    """What the built-in corpus contains; its hash names the cache directory.

    Args:
        train / val / test: utterances per split.
        longform_recordings: recordings in the ``long-form`` split (one test voice each).
        longform_minutes: length of each recording in minutes.
        engines: synthesisers, ``espeak-ng`` and/or ``flite``.
        sentences_file: a text file with one sentence per line to use instead of the grammar.
        seed: every choice (sentences, voices, rates, pitches, gaps) derives from it.
        random_voices: generated espeak-ng voice variants added to the training voices (:func:`random_variant`).
        flite_share: with both engines, the share of training utterances spoken by a flite voice (``None``: every
            training voice equally likely, so flite's 3 voices get 3 of several hundred). Validation and test
            keep their voices.
    """

    train: int = 4000
    val: int = 200
    test: int = 300
    longform_recordings: int = 4
    longform_minutes: float = 3.0
    engines: tuple[str, ...] = ("espeak-ng",)
    sentences_file: str | None = None
    seed: int = 0
    random_voices: int = 0
    flite_share: float | None = None

    def key(self) -> str:
        import hashlib
        import json

        versions = [engine_version(e) for e in self.engines]
        fields = dict(self.__dict__)
        if not self.random_voices:  # corpora made before random voices existed keep their folder
            del fields["random_voices"]
        if self.flite_share is None:  # nor does a corpus that draws its voices uniformly
            del fields["flite_share"]
        blob = json.dumps([CORPUS_VERSION, fields, versions], sort_keys=True, default=list)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _sentences(spec: CorpusSpec, n: int) -> list[str]:
    if spec.sentences_file is None:
        return SentenceGrammar(spec.seed).unique(n)
    from audio.text import normalize_text

    with open(spec.sentences_file, encoding="utf-8") as f:
        lines = list(dict.fromkeys(normalize_text(line) for line in f))
    lines = [s for s in lines if len(s.split()) >= 3]
    if len(lines) < n:
        raise ValueError(f"data.sentences_file={spec.sentences_file!r} has {len(lines)} distinct sentences of >= 3 "
                         f"words; the corpus needs {n} (lower data.synthetic.train or add sentences)")
    order = np.random.default_rng(spec.seed).permutation(len(lines))[:n]
    return [lines[i] for i in order]


def plan(spec: CorpusSpec) -> dict[str, list[Utterance]]:
    """The utterances of every split: ``train``/``val``/``test`` and ``long-form`` (one list per recording
    flattened, each recording's utterances sharing one voice, rate and pitch; grouped by :func:`recordings`)."""
    rng = np.random.default_rng(spec.seed + 1)
    per_rec = int(np.ceil(spec.longform_minutes * 60 / 2.0))  # upper bound: utterances last > 2 s
    counts = {"train": spec.train, "val": spec.val, "test": spec.test}
    texts = _sentences(spec, sum(counts.values()) + spec.longform_recordings * per_rec)
    out: dict[str, list[Utterance]] = {}
    start = 0
    for split, n in counts.items():
        pool = voices(split, spec.engines)
        out[split] = [Utterance(t, pool[int(rng.integers(len(pool)))], int(rng.integers(RATES[0], RATES[1] + 1)),
                                int(rng.integers(PITCHES[0], PITCHES[1] + 1))) for t in texts[start:start + n]]
        start += n
    if spec.random_voices and "espeak-ng" in spec.engines:  # its own draws: the other splits stay as they were
        fixed = voices("train", spec.engines)
        known = set(fixed)
        extra = [v for v in voices("train", spec.engines, spec.random_voices) if v not in known]
        share = len(extra) / (len(extra) + len(fixed))
        vrng = np.random.default_rng([spec.seed, 4])
        out["train"] = [replace(u, voice=extra[int(vrng.integers(len(extra)))]) if vrng.random() < share else u
                        for u in out["train"]]
    if spec.flite_share is not None and set(spec.engines) == {"espeak-ng", "flite"}:
        # its own draws again: each training utterance keeps its sentence, rate and pitch, and is given to a flite
        # voice with probability flite_share, else to one of the espeak-ng voices it would have had
        frng = np.random.default_rng([spec.seed, 5])
        flite = [f"flite:{v}" for v in FLITE_VOICES["train"]]
        espeak = voices("train", ("espeak-ng",), spec.random_voices)
        out["train"] = [replace(u, voice=flite[int(frng.integers(len(flite)))]) if frng.random() < spec.flite_share
                        else (u if u.voice.startswith("espeak-ng:") else
                              replace(u, voice=espeak[int(frng.integers(len(espeak)))]))
                        for u in out["train"]]
    pool = voices("test", spec.engines)
    out["long-form"] = []
    for _ in range(spec.longform_recordings):
        voice = pool[int(rng.integers(len(pool)))]
        rate, pitch = int(rng.integers(RATES[0], RATES[1] + 1)), int(rng.integers(PITCHES[0], PITCHES[1] + 1))
        out["long-form"] += [Utterance(t, voice, rate, pitch) for t in texts[start:start + per_rec]]
        start += per_rec
    return out


def build_corpus(folder, spec: CorpusSpec, *, workers: int = 2, log=print) -> None:
    """Synthesise ``spec`` into ``folder``: ``<split>/*.flac`` and ``<split>.jsonl`` manifests for train,
    val, test, ``long-form`` (whole recordings) and ``long-form-segments`` (the same recordings cut per
    utterance with offset/duration), and ``corpus.json`` (spec, sizes, voices, test OOV rate)."""
    import json
    import time
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    folder = Path(folder)
    check_engines(spec.engines)
    utts = plan(spec)
    t0 = time.perf_counter()
    stats: dict = {"spec": {**spec.__dict__, "engines": list(spec.engines)}, "version": CORPUS_VERSION,
                   "engine_versions": [engine_version(e) for e in spec.engines], "splits": {}}

    def write(split: str, i: int, utt: Utterance) -> dict:
        wave = synthesize(utt, espeak_path=espeak_path)
        rel = f"{split}/{i:05d}.flac"
        sf.write(folder / rel, wave, TARGET_RATE, subtype="PCM_16")
        return {"audio": rel, "text": utt.text, "duration": round(len(wave) / TARGET_RATE, 4), "voice": utt.voice,
                "rate": utt.rate, "pitch": utt.pitch}

    # the work runs in the synthesiser processes; the scratch folder holds espeak-ng's data with random voices
    with ThreadPoolExecutor(max(1, workers)) as pool, tempfile.TemporaryDirectory(prefix="longattn-espeak-") as scratch:
        espeak_path = _random_voices(folder, spec, scratch, stats)
        for split in ("train", "val", "test"):
            (folder / split).mkdir(parents=True, exist_ok=True)
            rows = list(pool.map(lambda a: write(split, *a), enumerate(utts[split])))
            _write_jsonl(folder / f"{split}.jsonl", rows)
            stats["splits"][split] = {"utterances": len(rows), "hours": round(sum(r["duration"] for r in rows) / 3600, 3),
                                      "voices": len({r["voice"] for r in rows})}
            log(f"synthesised {split}: {len(rows)} utterances, {stats['splits'][split]['hours']} h "
                f"({time.perf_counter() - t0:.0f} s)")
        waves = list(pool.map(synthesize, utts["long-form"]))
    _write_longform(folder, spec, utts["long-form"], waves, stats)
    train_words = {w for u in utts["train"] for w in u.text.split()}
    test_words = [w for u in utts["test"] for w in u.text.split()]
    stats["test_oov_rate"] = round(sum(w not in train_words for w in test_words) / max(1, len(test_words)), 4)
    stats["test_sentences_in_train"] = len({u.text for u in utts["test"]} & {u.text for u in utts["train"]})
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    (folder / "corpus.json").write_text(json.dumps(stats, indent=2) + "\n")


def _random_voices(folder, spec: CorpusSpec, scratch: str, stats: dict) -> str | None:
    """Write the spec's random training voices to ``<folder>/voices/`` and into a copy of espeak-ng's data in
    ``scratch``; returns that copy's ``--path`` (``None`` without random voices)."""
    if not spec.random_voices or "espeak-ng" not in spec.engines:
        return None
    variants = random_variants(spec.random_voices, spec.seed)
    (folder / "voices").mkdir(parents=True, exist_ok=True)
    for name, text in variants.items():
        (folder / "voices" / name).write_text(text)
    stats["random_voices"] = sorted(variants)
    return str(write_espeak_data(scratch, variants))


def _write_longform(folder, spec: CorpusSpec, utts: list[Utterance], waves: list[np.ndarray], stats: dict) -> None:
    """Concatenate utterances (with 0.3-1.2 s pauses) into recordings of ``longform_minutes``."""
    rng = np.random.default_rng(spec.seed + 2)
    per_rec = len(utts) // max(1, spec.longform_recordings)
    target = int(spec.longform_minutes * 60 * TARGET_RATE)
    (folder / "long-form").mkdir(parents=True, exist_ok=True)
    recs, segs = [], []
    for r in range(spec.longform_recordings):
        pieces, texts, pos = [], [], 0
        for utt, wave in zip(utts[r * per_rec:(r + 1) * per_rec], waves[r * per_rec:(r + 1) * per_rec]):
            if pos + len(wave) > target and pieces:
                break
            gap = np.zeros(int(rng.uniform(0.3, 1.2) * TARGET_RATE), dtype=np.float32)
            rel = f"long-form/{r:03d}.flac"
            segs.append({"audio": rel, "text": utt.text, "offset": round(pos / TARGET_RATE, 4),
                         "duration": round(len(wave) / TARGET_RATE, 4), "voice": utt.voice})
            pieces += [wave, gap]
            texts.append(utt.text)
            pos += len(wave) + len(gap)
        audio = np.concatenate(pieces)
        sf.write(folder / f"long-form/{r:03d}.flac", audio, TARGET_RATE, subtype="PCM_16")
        recs.append({"audio": f"long-form/{r:03d}.flac", "text": " ".join(texts),
                     "duration": round(len(audio) / TARGET_RATE, 4), "voice": utts[r * per_rec].voice,
                     "utterances": len(texts)})
    _write_jsonl(folder / "long-form.jsonl", recs)
    _write_jsonl(folder / "long-form-segments.jsonl", segs)
    stats["splits"]["long-form"] = {"recordings": len(recs), "utterances": len(segs),
                                    "hours": round(sum(r["duration"] for r in recs) / 3600, 3)}


def _write_jsonl(path, rows: list[dict]) -> None:
    import json

    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
