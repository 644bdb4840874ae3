"""Small test settings for every registered variant (a new variant must add itself here)."""

import pytest

import core_attn
from core_attn.attention.base import PatternAttention

# name -> list of (kwargs, min_n) small enough for fast tests; min_n = shortest valid input.
SETTINGS = {
    "dense": [({}, 1), ({"causal": True}, 1)],
    "local": [
        ({"window": 5, "block_size": 16}, 8),
        ({"window": 4, "dilation": 3, "block_size": 8}, 16),
        ({"window": 7, "causal": True, "block_size": 16}, 8),
        ({"window": 3, "global_tokens": [0, -1, 5], "block_size": 8}, 8),
        ({"window_left": 2, "window_right": 9, "block_size": 8}, 10),
    ],
    "bigbird": [
        ({"block_size": 8}, 40),
        ({"block_size": 8, "causal": True, "num_random_blocks": 2}, 40),
        ({"block_size": 4, "num_global_blocks": 1, "num_window_blocks": 5}, 24),
    ],
    "sparse_strided": [({}, 4), ({"causal": True}, 4), ({"stride": 5}, 5)],
    "sparse_fixed": [({}, 4), ({"causal": True, "num_summary": 2}, 4), ({"stride": 6, "num_summary": 3}, 6)],
    "lsh": [({"bucket_size": 8, "n_hashes": 2}, 16), ({"bucket_size": 8, "causal": True}, 16)],
    "linear": [({}, 1), ({"feature_map": "favor", "num_features": 32}, 1), ({"causal": True}, 1)],
    "linformer": [({"max_seq_len": 128, "k": 16}, 1)],
    "nystrom": [({"num_landmarks": 8}, 8)],
    "hierarchical": [({"segment_size": 8}, 1), ({"segment_size": 8, "causal": True}, 1)],
    "perceiver": [({"num_latents": 8, "num_heads": 2, "head_dim": 8}, 1)],
    "adaptive_span": [
        ({"num_heads": 3, "max_span": 24, "ramp": 4, "span_init": 0.4, "block_size": 8}, 1),
        ({"num_heads": 3, "max_span": 40, "ramp": 8, "span_init": 0.6, "causal": True}, 1),
    ],
    "topk": [({"top_k": 5, "block_size": 16}, 1), ({"top_k": 9, "causal": True, "block_size": 7}, 1)],
}

# (name, kwargs) of every exact pattern variant's settings, as pytest params with ids "<name>-<i>".
PATTERN_CASES = [
    pytest.param(name, kw, id=f"{name}-{i}")
    for name in core_attn.list_attention()
    if issubclass(core_attn.get_attention_class(name), PatternAttention)
    for i, (kw, _) in enumerate(SETTINGS.get(name, []))
]
