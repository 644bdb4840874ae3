"""``benchmarks/asr_peer.py``: both recognisers on the same clips, one table (skips without pocketsphinx)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.audio.conftest import bench_script, tone, write

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pocketsphinx") is None,
                                reason="pocketsphinx is not installed (pip install -e '.[peer]')")


def test_table_of_both_recognisers_on_the_same_clips(trained, tmp_path, capsys):
    write(tmp_path / "a.wav", tone(0.8, freq=300))
    write(tmp_path / "b.wav", tone(1.2, rate=8000, freq=500), rate=8000)  # resampled like our loader does
    m = tmp_path / "test.jsonl"
    m.write_text("".join(json.dumps({"audio": f, "text": "Hello, World"}) + "\n" for f in ("a.wav", "b.wav")))
    assert bench_script("asr_peer").main([str(m), "--ckpt", trained["last_ckpt"], "--option", "decoder=greedy", "--threads", "1",
                         "--out", str(tmp_path / "table.md")]) == 0
    out = json.loads((tmp_path / "table.json").read_text())
    assert out["clips"] == 2 and abs(out["minutes"] - 2.0 / 60) < 1e-3
    assert list(out["rows"]) == ["pocketsphinx", "ours (last.ckpt)"]
    for row in out["rows"].values():
        assert 0 <= row["cer"] and row["rtf"] > 0 and 50 < row["peak_rss_mb"] < 4000
        assert [e["ref"] for e in row["examples"]] == ["hello world", "hello world"]  # one normalisation
    assert "| pocketsphinx |" in capsys.readouterr().out


def test_help():
    with pytest.raises(SystemExit) as e:
        bench_script("asr_peer").parse_args(["--help"])
    assert e.value.code == 0
