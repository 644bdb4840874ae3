"""Pictures of the exact sparsity patterns: ``python -m core_attn.viz VARIANT --n 1024 --out file.png``.

Draws ``attn.dense_mask(n)`` (query rows, key columns, dark = attended) of a :class:`PatternAttention`
variant, titled ``"variant: params, density x%"``. ``--set key=value`` passes hyper-parameters to
:func:`build_attention`; ``--all --outdir docs/patterns`` draws every pattern variant with its defaults.
Pictures of Longformer (Beltagy et al. 2020), BigBird (Zaheer et al. 2020) and Sparse Transformer
(Child et al. 2019) patterns.

matplotlib is imported inside :func:`draw_pattern`, so ``import core_attn`` stays torch-only.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import textwrap
from pathlib import Path
from typing import Any

from core_attn.attention.base import AttentionBase, PatternAttention
from core_attn.errors import run_main
from core_attn.registry import build_attention, get_attention_class, list_attention
from core_attn.validation import check_int

MAX_N = 8192  # the picture materialises an (n, n) mask


def pattern_variants() -> list[str]:
    """Registered variants that compute exact attention over a sparsity pattern (drawable)."""
    return [name for name in list_attention() if issubclass(get_attention_class(name), PatternAttention)]


def _params(attn: AttentionBase) -> str:
    """``key=value`` for each constructor hyper-parameter the instance stores (backend and unset ones left out)."""
    names = [p for p in inspect.signature(type(attn).__init__).parameters if p not in ("self", "backend")]
    shown = [f"{p}={getattr(attn, p)!r}" for p in names if getattr(attn, p, None) is not None]
    return ", ".join(shown) or "defaults"


def draw_pattern(attn: AttentionBase, n: int, out_path: str | Path) -> str:
    """Draw the (n, n) attention mask of ``attn`` into the PNG ``out_path``.

    Args:
        attn: a :class:`PatternAttention` instance (variants with an exact sparsity pattern).
        n: sequence length, 1 <= n <= 8192.
        out_path: the PNG to write (parent folders are created).

    Returns:
        The picture's title, ``"variant: params, density x%"``.

    Raises:
        ValueError: when ``attn`` has no exact mask or ``n`` is out of range or too short for the pattern.
    """
    if not isinstance(attn, PatternAttention):
        raise ValueError(
            f"attention {attn.name!r} ({type(attn).__name__}) has no exact sparsity mask to draw; only pattern "
            f"variants can be drawn: {pattern_variants()}"
        )
    check_int("n", n, min_value=1, max_value=MAX_N)
    mask = attn.dense_mask(n).cpu()  # (n, n) bool, True = attend
    density = 100.0 * mask.float().mean().item()
    title = f"{attn.name}: {_params(attn)}, density {density:.3g}%"

    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: keep `import core_attn` torch-only
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 6.4), dpi=150)  # a bare Figure: no pyplot state, no global backend switch
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # antialiased downsampling keeps one-pixel bands visible when n exceeds the picture's pixels
    ax.imshow(mask.numpy().astype("uint8"), cmap="Greys", vmin=0, vmax=1, interpolation="antialiased")
    ax.set_xlabel("key position j")
    ax.set_ylabel("query position i")
    ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=9)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png")
    return title


def parse_value(text: str) -> Any:
    """A ``--set`` value: a Python literal (int, float, bool, list, None...), ``true``/``false``, else the string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["window=64", "global_tokens=[0]"]`` -> ``{"window": 64, "global_tokens": [0]}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value; got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core_attn.viz", description=__doc__.split("\n\n")[0])
    p.add_argument("variant", nargs="?", help="registered attention variant, e.g. local")
    p.add_argument("--n", type=int, default=1024, help="sequence length (default 1024)")
    p.add_argument("--out", help="PNG to write (one variant)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="hyper-parameter, repeatable")
    p.add_argument("--all", action="store_true", help="draw every pattern variant with its defaults")
    p.add_argument("--outdir", default="docs/patterns", help="folder for --all (default docs/patterns)")
    return p


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns 0, or exits with status 2 and a one-line error."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.all == (args.variant is not None):
        parser.error("give either one VARIANT (with --out) or --all")
    if args.all and args.set:
        parser.error("--set applies to one variant; it cannot be combined with --all")
    if not args.all and not args.out:
        parser.error("--out FILE.png is required when drawing one variant")
    try:
        if args.all:
            for name in pattern_variants():
                out = Path(args.outdir) / f"{name}.png"
                print(f"wrote {out} ({draw_pattern(build_attention(name), args.n, out)})")
        else:
            attn = build_attention(args.variant, **parse_sets(args.set))
            print(f"wrote {args.out} ({draw_pattern(attn, args.n, args.out)})")
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    run_main(main)
