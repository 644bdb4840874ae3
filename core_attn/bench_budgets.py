"""What ``python -m core_attn.bench`` measures: the layer around the attention and each variant's pattern budget.

The bottom of the benchmark harness: :mod:`core_attn.bench` (the runner and its command line) and
:mod:`core_attn.bench_report` (tables, plots, targets) both read it, and it imports neither.
"""

from __future__ import annotations

import re

DIM, HEADS = 512, 8
HEAD_DIM = DIM // HEADS

# The pattern budget of every variant, from --window w (256: local sees 2w + 1 = 513 keys per query).
# Exact patterns: local (w each side); bigbird with 64-token blocks (3 window + 2 global + 3 random = 8
# blocks = 512 keys); sparse_* keep their default stride sqrt(N). Approximations, sized to a
# comparable number of keys or summaries per query: lsh with 2 rounds x (own + previous chunk of w / 2)
# = 2w slots; linformer k = w; hierarchical segments of w; perceiver w latents; nystrom the paper's 64
# landmarks; linear elu features (m = head dim); adaptive_span at its largest spans (max_span w: w + ramp
# - 1 keys each side), topk 2w keys. Registered variants not listed run with their defaults.
BUDGETS = {
    "local": lambda w: {"window": w},
    "bigbird": lambda w: {"block_size": 64, "num_window_blocks": 3, "num_global_blocks": 2, "num_random_blocks": 3},
    "sparse_strided": lambda w: {},
    "sparse_fixed": lambda w: {},
    "dense": lambda w: {},
    "lsh": lambda w: {"bucket_size": max(1, w // 2), "n_hashes": 2},
    "linear": lambda w: {"feature_map": "elu"},
    "linformer": lambda w: {"k": w},
    "nystrom": lambda w: {"num_landmarks": 64},
    "hierarchical": lambda w: {"segment_size": w},
    "perceiver": lambda w: {"num_latents": w},
    "adaptive_span": lambda w: {"max_span": w, "span_init": 1.0},
    "topk": lambda w: {"top_k": 2 * w},
}


def is_linear(complexity: str) -> bool:
    """Whether a ``time_complexity`` string is linear in N: no N^2, (N/s)^2, sqrt or log."""
    return re.search(r"N\s*(\^|²)|N/\w+\)\s*(\^|²)|sqrt|log", complexity) is None
