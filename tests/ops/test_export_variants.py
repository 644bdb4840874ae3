"""Every registered variant through each export format on a tiny layer: the table in docs/operations.md.

Slow (a few minutes on 2 CPUs): ``pytest -m slow tests/ops/test_export_variants.py``. A variant added to the registry
without an entry here fails ``test_table_covers_registry`` (fast), so the table stays complete.
"""

from __future__ import annotations

import pytest
import torch

import core_attn.attention  # noqa: F401  (registers the variants)
from core_attn.registry import build_attention, list_attention
from core_attn.training.export import export_model
from tests.conftest import HAS_ONNX

SMALL = {  # tiny hyper-parameters for N=32
    "bigbird": dict(block_size=4, num_window_blocks=3, num_global_blocks=1, num_random_blocks=1),
    "dense": {}, "hierarchical": dict(segment_size=4), "linear": dict(num_features=8),
    "linformer": dict(k=8, max_seq_len=32), "local": dict(window=4), "lsh": dict(bucket_size=4, n_hashes=2),
    "nystrom": dict(num_landmarks=4), "perceiver": dict(num_latents=4, num_heads=2, head_dim=8),
    "sparse_fixed": dict(stride=4), "sparse_strided": dict(stride=4),
    "adaptive_span": dict(num_heads=2, max_span=8, ramp=4, span_init=0.5), "topk": dict(top_k=8, block_size=16),
}
BLOCK_SPARSE = {"local", "bigbird", "sparse_fixed", "sparse_strided", "hierarchical", "lsh", "perceiver"}
DATA_DEPENDENT = {"lsh", "perceiver"}


def _expected(variant: str, fmt: str) -> bool:
    if fmt == "torchscript":
        return variant not in BLOCK_SPARSE
    return variant not in DATA_DEPENDENT


class _Layer(torch.nn.Module):
    """One tensor in (q, k, v stacked), one out: the shape export_model takes."""

    def __init__(self, attention):
        super().__init__()
        self.attention = attention

    def forward(self, qkv):  # (3, B, H, N, D)
        return self.attention(qkv[0], qkv[1], qkv[2])


def test_table_covers_registry():
    assert set(SMALL) == set(list_attention())


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["exported", "onnx", "torchscript"])
@pytest.mark.parametrize("variant", sorted(SMALL))
def test_variant_exports_as_documented(variant, fmt, tmp_path):
    if fmt == "onnx" and not HAS_ONNX:
        pytest.skip("onnx, onnxscript and onnxruntime not installed (pip install -e '.[export]')")
    torch.manual_seed(0)
    layer = _Layer(build_attention(variant, **SMALL[variant])).eval()
    qkv = torch.randn(3, 1, 2, 32, 8)
    if _expected(variant, fmt):
        assert export_model(layer, qkv, fmt, tmp_path / "a") <= 1e-4
    else:
        why = (r"format='torchscript' cannot save this model" if fmt == "torchscript"
               else r"data-dependent|Failed to export the model with torch.export")
        with pytest.raises(Exception, match=why):
            export_model(layer, qkv, fmt, tmp_path / "a")
        assert not list(tmp_path.iterdir())
