"""The flex backend's BlockMask, built a slab of query blocks at a time, equals create_block_mask's."""

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

import core_attn
from core_attn.flex import build_block_mask
from tests.core_attn.variants import PATTERN_CASES

FIELDS = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
          "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices")


@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("name,kw", PATTERN_CASES)
def test_build_block_mask_equals_create_block_mask(name, kw, padded):
    attn = core_attn.build_attention(name, **kw)
    for n in (61, 300):  # one block and a partial one; three blocks and a partial one
        kpm = None
        if padded:
            kpm = torch.zeros(2, n, dtype=torch.bool)
            kpm[1, n - n // 5:] = True
        mask_mod = attn.pattern(n).mask_mod(n, None, kpm)
        batch = 2 if padded else None
        want = create_block_mask(mask_mod, batch, None, n, n, device="cpu")
        for chunk in (1, 1 << 24):  # one query block per slab; all in one slab
            got = build_block_mask(mask_mod, batch, n, "cpu", chunk_elements=chunk)
            for field in FIELDS:
                assert torch.equal(getattr(got, field), getattr(want, field)), field
            assert got.seq_lengths == want.seq_lengths and got.BLOCK_SIZE == want.BLOCK_SIZE


def test_flex_reports_cuda_head_dims_below_16():
    from core_attn.flex import unusable_reason

    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    assert unusable_reason(cuda, True, 8) == "FlexAttention's CUDA kernels need head_dim >= 16; got 8"
    assert unusable_reason(cuda, True, 16) is None
    assert unusable_reason(torch.device("cpu"), False, 8) is None  # the CPU kernels take any head dim
