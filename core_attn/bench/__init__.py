"""The benchmark harness behind ``python -m core_attn.bench``: time and memory of every attention layer
against dense and the peers, side by side in one run.

Modules, each importing only those below it (and :mod:`core_attn`'s public modules, never an app):

* :mod:`core_attn.bench.runner`: the cases, the worker processes, the command line (``main``);
* :mod:`core_attn.bench.report`: comparisons, target checks, console table, CSV, Markdown and plots;
* :mod:`core_attn.bench.peers`: the other libraries' layers built at the same size;
* :mod:`core_attn.bench.budgets`: the layer size and each variant's pattern budget (read from the
  variant classes' ``bench_settings``).

The names below are the harness's public interface (scripts under ``benchmarks/`` and the apps'
benchmarks use them).
"""

from core_attn.bench.budgets import BUDGETS, DIM, HEAD_DIM, HEADS, is_linear
from core_attn.bench.runner import (Config, attention_kwargs, build_layer, main, make_attention, parse_args,
                                    resolve_variants, run_cases, synchronize, useful_flops)

__all__ = ["BUDGETS", "DIM", "HEADS", "HEAD_DIM", "Config", "attention_kwargs", "build_layer", "is_linear", "main",
           "make_attention", "parse_args", "resolve_variants", "run_cases", "synchronize", "useful_flops"]
