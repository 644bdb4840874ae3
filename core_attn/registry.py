"""The attention registry: one name per variant, shared by file, class and config.

``register_attention("local")`` on ``LocalAttention`` in ``core_attn/attention/local.py`` makes it
buildable as ``build_attention("local", ...)`` and selectable as ``attention=local`` in Hydra.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core_attn.validation import did_you_mean

_REGISTRY: dict[str, type] = {}


def register_attention(name: str) -> Callable[[type], type]:
    """Class decorator that registers an attention variant under ``name``."""

    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"attention variant {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_attention() -> list[str]:
    """Every registered attention variant, sorted."""
    return sorted(_REGISTRY)


def get_attention_class(name: str) -> type:
    """The class registered under ``name``; ``ValueError`` with a suggestion when unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown attention variant {name!r}; expected one of {list_attention()}.{did_you_mean(name, _REGISTRY)}"
        ) from None


def build_attention(name: str, **kwargs: Any):
    """Build the attention variant registered under ``name`` with keyword hyper-parameters.

    Example:
        >>> attn = build_attention("local", window=128)
    """
    cls = get_attention_class(name)
    try:
        return cls(**kwargs)
    except TypeError as e:  # unknown keyword: name it and list the accepted ones
        import inspect

        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        bad = [k for k in kwargs if k not in params]
        if bad:
            hint = did_you_mean(bad[0], params)
            raise ValueError(
                f"attention {name!r} got unknown hyper-parameter {bad[0]!r}; accepted: {params}.{hint}"
            ) from None
        raise e


def variant_table() -> str:
    """The Markdown table of every registered variant that README.md shows under "Variants", read from
    each class: ``summary``, ``exactness`` (or yes / approximate from ``exact``), ``time_complexity`` and
    ``memory_complexity``. ``python -m core_attn.attention`` prints it."""
    rows = ["| key | family | exact? | time (training) | memory (training) |", "|---|---|---|---|---|"]
    for name in list_attention():
        cls = _REGISTRY[name]
        exact = cls.exactness or ("yes" if cls.exact else "approximate")
        rows.append(f"| `{name}` | {cls.summary} | {exact} | {_math(cls.time_complexity)} | "
                    f"{_math(cls.memory_complexity)} |")
    return "\n".join(rows) + "\n"


def _math(complexity: str) -> str:
    """``O(N sqrt N + (N/s)^2)`` as README writes it: ``O(N √N + (N/s)²)``."""
    return complexity.replace("sqrt ", "√").replace("^2", "²").replace("^3", "³")
