"""A variant declares on its class what the benchmark and README need: its budget, its FLOP model, its
table row. Adding one is its file plus its ``conf/attention/<name>.yaml``, shown here with a toy."""

import pathlib

import pytest
import torch
from hydra.utils import instantiate

from core_attn import registry
from core_attn.attention.base import AttentionBase
from core_attn.bench import BUDGETS
from core_attn.bench import runner as bench
from core_attn.registry import build_attention, register_attention, variant_table
from tests.training.tiny import compose_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
START, END = "<!-- variants:start -->\n", "<!-- variants:end -->"

# Budget at --window 256 and forward FLOPs of the layer at N = 1024 and 4096 (python -m core_attn.bench's
# numbers), pinned so that moving a FLOP model or a budget cannot change what the benchmark reports.
SAVED = {
    "adaptive_span": ({"max_span": 256, "span_init": 1.0}, 3353346048.0, 13413384192.0),
    "bigbird": ({"block_size": 64, "num_window_blocks": 3, "num_global_blocks": 2, "num_random_blocks": 3},
                3338665984.0, 13807648768.0),
    "dense": ({}, 4294967296.0, 42949672960.0),
    "hierarchical": ({"segment_size": 256}, 2684387328.0, 10737942528.0),
    "linear": ({"feature_map": "elu"}, 2283798528.0, 9135194112.0),
    "linformer": ({"k": 256}, 3221225472.0, 12884901888.0),
    "local": ({"window": 256}, 3088580608.0, 12758548480.0),
    "lsh": ({"bucket_size": 128, "n_hashes": 2}, 3254779904.0, 13421772800.0),
    "nystrom": ({"num_landmarks": 64}, 2587885568.0, 10036969472.0),
    "perceiver": ({"num_latents": 256}, 3355443200.0, 13019119616.0),
    "sparse_fixed": ({}, 2279604224.0, 9655287808.0),
    "sparse_strided": ({}, 2342584320.0, 10175512576.0),
    "topk": ({"top_k": 512}, 3758096384.0, 27917287424.0),
}


def _flops(name: str, n: int, window: int = 256) -> float | None:
    kwargs = bench.attention_kwargs(name, n, window)
    pairs, _ = bench.attention_pairs(build_attention(name, **kwargs), n)
    return bench.useful_flops(name, kwargs, n, pairs)


@pytest.mark.parametrize("name", sorted(SAVED))
def test_budgets_and_flop_models_keep_their_numbers(name):
    budget, flops_1k, flops_4k = SAVED[name]
    assert BUDGETS[name](256) == budget
    assert (_flops(name, 1024), _flops(name, 4096)) == (flops_1k, flops_4k)


def test_readme_variant_table_is_generated_from_the_registry():
    text = (ROOT / "README.md").read_text()
    assert text.count(START) == 1 and text.count(END) == 1, "README.md lost its variant table markers"
    block = text[text.index(START) + len(START):text.index(END)]
    assert block == variant_table(), "README's variant table is stale: paste `python -m core_attn.attention`"


class ToyMeanAttention(AttentionBase):
    """Every query reads the mean of the values (a test double, not attention anyone should use)."""

    summary = "mean of the values (toy)"
    time_complexity = memory_complexity = "O(N)"

    def __init__(self, *, scale: float = 1.0, causal: bool = False):
        super().__init__(causal=causal)
        self.scale = scale

    @classmethod
    def bench_settings(cls, window: int) -> dict:
        return {"scale": 2.0}

    @classmethod
    def flops_per_head(cls, n: int, head_dim: int, settings: dict) -> float | None:
        return 2.0 * n * head_dim  # the sum and the broadcast

    def forward(self, q, k, v, key_padding_mask=None):
        return self.scale * v.mean(dim=2, keepdim=True).expand_as(v)


def test_a_new_variant_is_one_class_and_one_yaml(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the toy leaves no trace
    register_attention("toy_mean")(ToyMeanAttention)
    (tmp_path / "attention").mkdir()
    (tmp_path / "attention" / "toy_mean.yaml").write_text(
        f"_target_: {__name__}.ToyMeanAttention\n_partial_: true\nscale: 1.0\ncausal: false\n")

    # the registry builds it
    q = k = v = torch.randn(2, 2, 8, 4)
    out = build_attention("toy_mean", scale=1.0)(q, k, v)
    assert torch.allclose(out, v.mean(2, keepdim=True).expand_as(v))
    # the benchmark runs it at its budget and counts its FLOPs
    assert "toy_mean" in bench.resolve_variants("project")
    assert bench.attention_kwargs("toy_mean", 512, 64) == {"scale": 2.0}
    flops = bench.useful_flops("toy_mean", {"scale": 2.0}, 512, None)
    assert flops == 8.0 * 512 * bench.DIM**2 + bench.HEADS * 2.0 * 512 * bench.HEAD_DIM
    # the README table lists it
    assert "| `toy_mean` | mean of the values (toy) | approximate | O(N) | O(N) |" in variant_table()
    # the attention config group selects it (its YAML on Hydra's search path, as conf/attention/ would be)
    cfg = compose_config("vision", ["attention=toy_mean", f"hydra.searchpath=[file://{tmp_path}]"])
    assert isinstance(instantiate(cfg.attention)(), ToyMeanAttention)


def test_the_toy_left_no_trace():
    assert "toy_mean" not in registry.list_attention() and "toy_mean" not in BUDGETS
