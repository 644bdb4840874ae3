"""``python -m core_attn.viz``: pattern pictures, run in-process."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from matplotlib.image import imread  # noqa: E402

from core_attn import build_attention, get_attention_class, list_attention, reference_attention  # noqa: E402
from core_attn.attention import AttentionBase, PatternAttention  # noqa: E402
from core_attn.viz import draw_pattern, main, parse_sets, pattern_variants  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png_picture(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = imread(path)  # (H, W, 4) floats
    assert pixels.ndim == 3 and pixels[..., :3].std() > 0.05  # not a blank/uniform image


def test_cli_draws_one_variant(tmp_path, capsys):
    out = tmp_path / "sub" / "local.png"
    assert main(["local", "--n", "128", "--out", str(out), "--set", "window=8", "--set", "global_tokens=[0]"]) == 0
    _assert_png_picture(out)
    printed = capsys.readouterr().out
    assert "local: window=8" in printed and "global_tokens=[0]" in printed
    # the title carries the exact density of the mask
    mask = build_attention("local", window=8, global_tokens=[0]).dense_mask(128)
    assert f"density {100 * mask.float().mean().item():.3g}%" in printed


def test_draw_pattern_title_and_picture_follow_the_mask(tmp_path):
    narrow, wide = tmp_path / "narrow.png", tmp_path / "wide.png"
    t1 = draw_pattern(build_attention("local", window=2), 64, narrow)
    t2 = draw_pattern(build_attention("local", window=16), 64, wide)
    assert t1.startswith("local: window=2,") and "density" in t1
    dark = [(1 - imread(p)[..., :3].mean(-1) > 0.5).mean() for p in (narrow, wide)]
    assert dark[1] > dark[0] * 2  # a wider window paints more of the picture


def test_cli_all_draws_every_pattern_variant(tmp_path):
    names = pattern_variants()
    assert "local" in names and "dense" not in names
    assert main(["--all", "--outdir", str(tmp_path), "--n", "512"]) == 0
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted(names)
    for p in tmp_path.glob("*.png"):
        assert p.read_bytes()[:8] == PNG_MAGIC


def test_cli_unknown_variant_suggests(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["lokal", "--out", str(tmp_path / "x.png")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown attention variant 'lokal'" in err and "Did you mean 'local'?" in err  # from the registry
    assert not (tmp_path / "x.png").exists()


def test_cli_non_pattern_variant_is_refused(tmp_path, capsys):
    others = [n for n in list_attention() if not issubclass(get_attention_class(n), PatternAttention)]
    if "linear" in others:
        name = "linear"
    elif others:
        name = others[0]
    else:
        pytest.skip("no non-pattern variant is registered yet")
    with pytest.raises(SystemExit) as exc:
        main([name, "--n", "64", "--out", str(tmp_path / "x.png")])
    assert exc.value.code == 2
    assert f"attention {name!r}" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


class _NoPattern(AttentionBase):
    """An unregistered non-pattern variant (keeps the registry clean)."""

    def forward(self, q, k, v, key_padding_mask=None):
        return reference_attention(q, k, v, key_padding_mask=key_padding_mask)


def test_draw_pattern_refuses_non_pattern(tmp_path):
    with pytest.raises(ValueError, match=r"\(_NoPattern\) has no exact sparsity mask to draw; only pattern variants"):
        draw_pattern(_NoPattern(), 16, tmp_path / "x.png")


def test_draw_pattern_checks_n(tmp_path):
    with pytest.raises(ValueError, match=r"n=0 is out of range; expected 1 <= n <= 8192"):
        draw_pattern(build_attention("local", window=2), 0, tmp_path / "x.png")


def test_parse_sets():
    got = parse_sets(["window=64", "ratio=0.5", "causal=true", "flag=False", "tokens=[0, -1]", "kind=abc", "e=a=b"])
    assert got == {"window": 64, "ratio": 0.5, "causal": True, "flag": False, "tokens": [0, -1], "kind": "abc",
                   "e": "a=b"}
    with pytest.raises(ValueError, match=r"--set expects key=value; got 'window'"):
        parse_sets(["window"])


@pytest.mark.parametrize("argv, message", [
    (["local"], "--out FILE.png is required"),
    (["local", "--all"], "give either one VARIANT"),
    ([], "give either one VARIANT"),
    (["--all", "--set", "window=3"], "--set applies to one variant"),
    (["local", "--out", "x.png", "--set", "windw=3"], "unknown hyper-parameter 'windw'.*Did you mean 'window'"),
])
def test_cli_usage_errors(argv, message, capsys):
    import re

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert re.search(message, capsys.readouterr().err)
