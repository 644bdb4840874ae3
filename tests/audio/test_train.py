"""train(cfg) in-process on a tiny synthetic corpus; evaluate with the long-form comparison; configs."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from audio.evaluate import run
from tests.audio.conftest import TINY_AUDIO
from tests.training.tiny import compose_config


def test_train_writes_metrics_and_checkpoints(trained):
    assert trained["status"] == "ok" and trained["app"] == "audio" and trained["variant"] == "local"
    assert trained["metric_name"] == "test/wer" and 0.0 <= trained["metric"]
    assert {"test/wer", "test/cer", "test/loss"} <= set(trained["test"])
    assert trained["last_ckpt"] and (trained["output_dir"] / "metrics.json").is_file()


def test_checkpoint_carries_the_training_words_and_tests_with_them(trained):
    from audio.data import read_manifest
    from audio.decoding import lexicon_words

    ckpt = torch.load(trained["last_ckpt"], map_location="cpu", weights_only=False)
    train_manifest = next((trained["data_dir"] / "audio" / "synthetic").glob("*/train.jsonl"))
    words = lexicon_words([seg.text for seg in read_manifest(train_manifest)])
    assert ckpt["lexicon"] == words and len(words) > 20
    assert ckpt["hyper_parameters"]["decoder"] == "lexicon"  # the default test decoding


@pytest.mark.parametrize("decoder", ["greedy", "lexicon"])
def test_test_warps_keep_each_utterances_best_scoring_transcript(trained, decoder):
    from audio.data import collate, load_audio, read_manifest
    from audio.decoding import scored_texts
    from audio.module import SpeechRecognizer

    module = SpeechRecognizer.load_from_checkpoint(trained["last_ckpt"], map_location="cpu", decoder=decoder).eval()
    assert module.test_warps == [0.9, 1.0, 1.1]  # the default
    module.test_decoder = module.make_test_decoder()  # lexicon: the checkpoint's words
    segs = read_manifest(next((trained["data_dir"] / "audio" / "synthetic").glob("*/test.jsonl")))[:4]
    batch = collate([(w, module.tokenizer.encode(s.text), s.text) for s, w in
                     ((s, load_audio(s, 16000)) for s in segs)])
    with torch.no_grad():
        lp, n = module(batch["audio"], batch["audio_lens"])
        got = module.warped_texts(batch, lp, n)
        each = [scored_texts(module.test_decoder, module.net(batch["audio"], batch["audio_lens"], warp=w)[0], n,
                             module.tokenizer) for w in module.test_warps]
    # the best-scoring warp's transcript, an empty one only when every warp's is empty
    best = [max([each[k][i] for k in range(3) if each[k][i][0].strip()] or [each[k][i] for k in range(3)],
                key=lambda t: t[1])[0] for i in range(len(segs))]
    assert got == best
    with pytest.raises(ValueError, match=r"test_warps=3.0 is out of range; expected 0.5 <= test_warps <= 2.0"):
        SpeechRecognizer.load_from_checkpoint(trained["last_ckpt"], map_location="cpu", test_warps=[1.0, 3.0])
    module.test_warps = [1.0]
    assert module.warped_texts(batch, lp, n) == [t for t, _ in scored_texts(module.test_decoder, lp, n, module.tokenizer)]


def test_lexicon_file_given_at_training_travels_in_the_checkpoint(trained, tmp_path):
    from audio.module import SpeechRecognizer

    ckpt = torch.load(trained["last_ckpt"], map_location="cpu", weights_only=False)
    words = tmp_path / "words.txt"
    words.write_text("cat\nsat\n")
    ckpt["hyper_parameters"]["lexicon"] = str(words)  # as if trained with module.lexicon=<file>
    torch.save(ckpt, tmp_path / "m.ckpt")
    assert SpeechRecognizer.load_from_checkpoint(tmp_path / "m.ckpt", map_location="cpu").words == ["cat", "sat"]
    words.unlink()  # elsewhere, without the file: the checkpoint's words
    module = SpeechRecognizer.load_from_checkpoint(tmp_path / "m.ckpt", map_location="cpu")
    assert module.words == ckpt["lexicon"] and module.find_lexicon() == ckpt["lexicon"]
    ckpt["lexicon"] = None
    torch.save(ckpt, tmp_path / "m.ckpt")
    module = SpeechRecognizer.load_from_checkpoint(tmp_path / "m.ckpt", map_location="cpu")
    with pytest.raises(FileNotFoundError, match=r"lexicon='.*words\.txt': no such file"):
        module.find_lexicon()


def test_oov_rate():
    from audio.module import oov_rate

    assert oov_rate(["the", "cat"], ["The cat sat.", "the dog"]) == 0.4 and oov_rate(["a"], []) == 0.0


def test_evaluate_overrides_the_decoder(trained, tmp_path):
    cfg = compose_config("audio_eval", [f"ckpt_path={trained['last_ckpt']}", "extras.print_config=false",
                                        "module.decoder=greedy", "module.test_warps=[1.0]", "longform.chunk_seconds=6",
                                        "longform.overlap_seconds=1"], tmp_path)
    metrics = run(cfg)
    assert metrics["longform"]["decoder"] == "greedy" and metrics["longform"]["warps"] == [1.0]
    assert 0.0 <= metrics["test"]["test/wer"]
    cfg = compose_config("audio_eval", [f"ckpt_path={trained['last_ckpt']}", "extras.print_config=false",
                                        "module.decoder=beems"], tmp_path)
    with pytest.raises(ValueError, match=r"decoder='beems' is not allowed; expected one of \['greedy', 'beam', 'lexicon'\]"):
        run(cfg)


def test_evaluate_adds_long_form_comparison(trained, tmp_path):
    cfg = compose_config("audio_eval", [f"ckpt_path={trained['last_ckpt']}", "extras.print_config=false",
                                        "longform.chunk_seconds=6", "longform.overlap_seconds=1"], tmp_path)
    metrics = run(cfg)
    lf = metrics["longform"]
    assert lf["recordings"] == 1 and lf["utterances"] >= 2
    for key in ("segments", "full", "chunked"):
        assert 0.0 <= lf[key]["wer"] and 0.0 <= lf[key]["cer"]
    assert lf["full"]["real_time_factor"] > 0 and "full_minus_segments_wer_points" in lf
    assert lf["decoder"] == "lexicon" and lf["warps"] == [0.9, 1.0, 1.1]  # the checkpoint's test decoding
    assert json.loads((tmp_path / "metrics.json").read_text())["longform"] == lf


@pytest.mark.parametrize("overrides", [[], ["attention=dense"], ["attention=local", "model.encoder.positions=rotary"],
                                       ["model=audio_conformer_medium"]])
def test_configs_build_the_model(overrides, tmp_path):
    cfg = compose_config("audio", [*TINY_AUDIO, *overrides], tmp_path)
    module = instantiate(cfg.module, _recursive_=False, _convert_="all")
    assert module.net.vocab_size == 29


def test_default_attention_is_local_with_a_global_token(tmp_path):
    cfg = compose_config("audio", [], tmp_path)
    assert cfg.attention.window == 64 and list(cfg.attention.global_tokens) == [0]
    assert cfg.model.encoder.subsampling == 4 and cfg.monitor == "val/wer"
    other = compose_config("audio", ["attention=linear"], tmp_path)
    assert "window" not in other.attention  # the audio settings apply to `local` only


def test_vocab_mismatch_is_a_clear_error(tmp_path):
    cfg = compose_config("audio", [*TINY_AUDIO, "model.vocab_size=30"], tmp_path)
    with pytest.raises(InstantiationException, match=r"model.vocab_size=30 but the character vocabulary has 29 tokens"):
        instantiate(cfg.module, _recursive_=False, _convert_="all")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(corpus_dir, tmp_path):
    from tests.ops.helpers import POISON_AT_4, assert_nonfinite_stops_and_keeps_last_good

    cfg = compose_config("audio", [*TINY_AUDIO, f"paths.data_dir={corpus_dir}", *POISON_AT_4], tmp_path / "run")
    assert_nonfinite_stops_and_keeps_last_good(cfg)
