"""Argument checks that produce helpful ``ValueError`` messages: the public validation helpers of ``core_attn``,
used by the attention variants, the runtime and the apps alike.

Every message names the parameter, the value received and what was allowed, so a typo in a
Hydra config surfaces as one readable line instead of a deep stack trace.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["check_choice", "check_float", "check_int", "check_range", "did_you_mean"]


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest allowed name, or an empty string."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        hint = did_you_mean(value, allowed) if isinstance(value, str) else ""
        raise ValueError(f"{name}={value!r} is not allowed; expected one of {allowed}.{hint}")
    return value


def check_int(name: str, value: Any, *, min_value: int | None = None, max_value: int | None = None) -> int:
    """Raise ``ValueError`` unless ``value`` is an int within ``[min_value, max_value]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} must be an integer")
    _check_bounds(name, value, min_value, max_value)
    return value


def check_float(name: str, value: Any, *, min_value: float | None = None, max_value: float | None = None) -> float:
    """Raise ``ValueError`` unless ``value`` is a real number within ``[min_value, max_value]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number")
    _check_bounds(name, value, min_value, max_value)
    return float(value)


def check_range(name: str, value: Any, *, min_value: float | None = None, exclusive_min: bool = False,
                unit: str = "") -> tuple[float, float]:
    """Raise ``ValueError`` unless ``value`` is a pair ``[low, high]`` of numbers with ``low <= high`` and
    ``low >= min_value`` (``>`` with ``exclusive_min``); returns ``(low, high)`` as floats."""
    pair = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    ok = pair is not None and len(pair) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
    if ok and min_value is not None:
        ok = pair[0] > min_value if exclusive_min else pair[0] >= min_value
    if not ok or pair[0] > pair[1]:
        lower = "" if min_value is None else f"{min_value} {'<' if exclusive_min else '<='} "
        shown = pair if pair is not None else value
        raise ValueError(f"{name}={shown!r} must be [low, high]{' ' + unit if unit else ''} with {lower}low <= high")
    return float(pair[0]), float(pair[1])


def _check_bounds(name: str, value: float, lo: float | None, hi: float | None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lo_s = "-inf" if lo is None else lo
        hi_s = "inf" if hi is None else hi
        raise ValueError(f"{name}={value!r} is out of range; expected {lo_s} <= {name} <= {hi_s}")
