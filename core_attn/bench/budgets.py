"""What ``python -m core_attn.bench`` measures: the layer around the attention and each variant's pattern budget.

The bottom of the benchmark harness: :mod:`core_attn.bench.runner` (the cases and the command line) and
:mod:`core_attn.bench.report` (tables, plots, targets) both read it, and it imports neither.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, MutableMapping

from core_attn import attention as _attention  # noqa: F401  (registers the variants)
from core_attn.registry import get_attention_class, list_attention

DIM, HEADS = 512, 8
HEAD_DIM = DIM // HEADS


class _Budgets(MutableMapping):
    """``name -> (window -> hyper-parameters)``: each registered variant's ``bench_settings`` (the pattern
    budget from ``--window w``, 256: local sees 2w + 1 = 513 keys per query; approximations are sized to a
    comparable number of keys or summaries per query), plus names set here for variants not registered yet
    (the benchmark reports them "not registered")."""

    def __init__(self) -> None:
        self._pending: dict[str, Callable[[int], dict]] = {}

    def __getitem__(self, name: str) -> Callable[[int], dict]:
        if name not in self._pending and name in list_attention():
            return get_attention_class(name).bench_settings
        return self._pending[name]  # KeyError: neither registered nor pending

    def __setitem__(self, name: str, budget: Callable[[int], dict]) -> None:
        self._pending[name] = budget

    def __delitem__(self, name: str) -> None:
        del self._pending[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list_attention() + [v for v in self._pending if v not in list_attention()])

    def __len__(self) -> int:
        return len(list(iter(self)))


BUDGETS = _Budgets()


def is_linear(complexity: str) -> bool:
    """Whether a ``time_complexity`` string is linear in N: no N^2, (N/s)^2, sqrt or log."""
    return re.search(r"N\s*(\^|²)|N/\w+\)\s*(\^|²)|sqrt|log", complexity) is None
