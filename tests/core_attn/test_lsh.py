"""LSH attention (Reformer) against a plain reference: same hashes, sorted orders and chunk windows
rebuilt with Python lists, the explicit (N, N) visible set of every round, dense softmax over their
union (each key counted once)."""

import math

import pytest
import torch
import torch.nn.functional as F

import core_attn
from core_attn.attention.lsh import LSHAttention
from core_attn.reference import reference_attention


def _slots(order):
    return {item: s for s, item in enumerate(order)}


def _round_mask(attn, bq, bk, n, causal):
    """(n, n) bool: the pairs one round makes visible, from per-position buckets (lists of ints)."""
    bs = attn.bucket_size
    if attn.shared_qk or not causal:
        q_order = [p for _, p in sorted((bq[p], p) for p in range(n))]
        k_order = [p for _, p in sorted((bk[p], p) for p in range(n))]
        q_slot, k_slot, length = _slots(q_order), _slots(k_order), n
    else:  # joint order: (bucket, position, key before query)
        items = sorted([(bk[p], p, 0) for p in range(n)] + [(bq[p], p, 1) for p in range(n)])
        q_slot = {p: s for s, (_, p, t) in enumerate(items) if t == 1}
        k_slot = {p: s for s, (_, p, t) in enumerate(items) if t == 0}
        length = 2 * n
    n_chunks = math.ceil(length / bs)
    qs = torch.tensor([q_slot[p] for p in range(n)])[:, None]  # (n, 1) slot of query i
    ks = torch.tensor([k_slot[p] for p in range(n)])[None, :]  # (1, n) slot of key j
    if causal:
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        same = torch.tensor(bq)[:, None] == torch.tensor(bk)[None, :]
        return same & (j <= i) & (qs - ks <= bs)
    return (qs // bs - ks // bs) % n_chunks <= 1


def _dense(q, k, v, mask, kpm, causal):
    """softmax(q k^T / sqrt(D)) v over ``mask`` in the inputs' dtype (fp64 stays fp64); empty rows -> 0."""
    n = q.shape[2]
    allowed = mask
    if kpm is not None:
        allowed = allowed & ~kpm[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool).tril()
    s = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0) @ v


def lsh_reference(attn, q, k, v, kpm=None):
    """Dense softmax over the union of the rounds' visible sets, from the module's own hashes."""
    b, h, n, _ = q.shape
    keys = F.normalize(q, dim=-1) if attn.shared_qk else k
    nb = attn.num_buckets or 2 * math.ceil(n / attn.bucket_size)
    hq = attn.hash_buckets(q, nb)
    hk = hq if attn.shared_qk else attn.hash_buckets(k, nb)
    pad = torch.zeros(b, n, dtype=torch.bool) if kpm is None else kpm
    union = torch.zeros(b, h, n, n, dtype=torch.bool)
    for bi in range(b):
        for hi in range(h):
            for r in range(attn.n_hashes):
                bq = [nb if pad[bi, p] else int(hq[r, bi, hi, p]) for p in range(n)]
                bk = [nb if pad[bi, p] else int(hk[r, bi, hi, p]) for p in range(n)]
                union[bi, hi] |= _round_mask(attn, bq, bk, n, attn.causal)
    eye = torch.eye(n, dtype=torch.bool)
    mask = union & ~eye if attn.shared_qk else union | eye
    out = _dense(q, keys, v, mask, kpm, attn.causal)
    if attn.shared_qk:  # nothing else visible: the query attends to itself
        seen = mask & ~pad[:, None, None, :]
        if attn.causal:
            seen = seen & torch.ones(n, n, dtype=torch.bool).tril()
        alone = ~seen.any(-1) & ~pad[:, None, :]
        out = torch.where(alone[..., None], v, out)
    return out


def _qkv(b=2, h=2, n=37, d=8, dtype=torch.float32):
    return [torch.randn(b, h, n, d, dtype=dtype, requires_grad=True) for _ in range(3)]


def _padding(b, n):
    kpm = torch.zeros(b, n, dtype=torch.bool)
    kpm[0, 5] = True
    kpm[-1, n - 6:] = True
    return kpm


@pytest.mark.parametrize("n_hashes,padded", [(1, False), (3, True)], ids=["1round", "3rounds-pad"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("shared_qk", [False, True], ids=["qk", "shared"])
def test_matches_reference_with_gradients(shared_qk, causal, n_hashes, padded):
    attn = LSHAttention(bucket_size=4, n_hashes=n_hashes, causal=causal, shared_qk=shared_qk, seed=3)
    q, k, v = _qkv()
    kpm = _padding(2, 37) if padded else None
    out = attn(q, k, v, key_padding_mask=kpm)
    ref = lsh_reference(attn, q, k, v, kpm)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(out)
    inputs = (q, v) if shared_qk else (q, k, v)  # shared_qk ignores k
    for a, r in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-4)


def test_rounds_are_not_all_the_same():
    """The union test above only means something if rounds find different, overlapping key sets."""
    attn = LSHAttention(bucket_size=4, n_hashes=3, seed=3)
    q, k, _ = _qkv()
    hq = attn.hash_buckets(q, 20)
    assert not torch.equal(hq[0], hq[1]) and not torch.equal(hq[1], hq[2])
    one = LSHAttention(bucket_size=4, n_hashes=1, seed=3)
    q, k, v = _qkv()
    assert not torch.allclose(one(q, k, v), attn(q, k, v), atol=1e-3)


def test_fp64_matches_reference():
    attn = LSHAttention(bucket_size=5, n_hashes=2, seed=1)
    q, k, v = _qkv(n=23, dtype=torch.float64)
    torch.testing.assert_close(attn(q, k, v), lsh_reference(attn, q, k, v), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("shared_qk", [False, True], ids=["qk", "shared"])
def test_one_chunk_is_full_attention(shared_qk):
    """bucket_size >= N: one chunk, every query sees every key (Reformer excludes self when shared)."""
    attn = LSHAttention(bucket_size=64, n_hashes=2, shared_qk=shared_qk)
    q, k, v = _qkv()
    out = attn(q, k, v)
    if shared_qk:
        ref = reference_attention(q, F.normalize(q, dim=-1), v, mask=~torch.eye(37, dtype=torch.bool))
    else:
        ref = reference_attention(q, k, v)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (q, v), g), torch.autograd.grad(ref, (q, v), g)):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shared_qk", [False, True], ids=["qk", "shared"])
def test_causal_does_not_leak_the_future(shared_qk):
    """Changing future tokens (q, k and v: they move tokens between buckets) leaves the past unchanged."""
    attn = LSHAttention(bucket_size=4, n_hashes=3, causal=True, shared_qk=shared_qk)
    q, k, v = (t.detach() for t in _qkv(n=40))
    t = 17
    out = attn(q, k, v)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for x in (q2, k2, v2):
        x[:, :, t + 1:] = torch.randn_like(x[:, :, t + 1:]) * 3
    out2 = attn(q2, k2, v2)
    torch.testing.assert_close(out[:, :, : t + 1], out2[:, :, : t + 1], atol=1e-6, rtol=0)
    assert not torch.allclose(out[:, :, t + 1:], out2[:, :, t + 1:])


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("shared_qk", [False, True], ids=["qk", "shared"])
def test_padded_tokens_have_no_effect(shared_qk, causal):
    """Padded tokens take no slot among real ones: real outputs do not depend on padded q, k, v (they
    would otherwise change the buckets and shift real tokens between chunks). Causal: real outputs equal
    those of the truncated input (bidirectional chunks wrap around, so there the chunk count matters)."""
    attn = LSHAttention(bucket_size=4, n_hashes=2, num_buckets=8, causal=causal, shared_qk=shared_qk)
    q, k, v = (t.detach() for t in _qkv(n=37))
    kpm = torch.zeros(2, 37, dtype=torch.bool)
    kpm[0, 30:] = True
    kpm[1, [0, 9, 10, 36]] = True
    out = attn(q, k, v, key_padding_mask=kpm)
    for x in (q, k, v):
        x[kpm[:, None, :].expand(-1, 2, -1)] = torch.randn(2 * int(kpm.sum()), 8) * 10
    out2 = attn(q, k, v, key_padding_mask=kpm)
    real = ~kpm[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[real], out2[real], atol=1e-6, rtol=0)
    if causal:
        short = attn(q[:1, :, :30], k[:1, :, :30], v[:1, :, :30])
        torch.testing.assert_close(out[:1, :, :30], short, atol=1e-6, rtol=0)


def test_deterministic_across_calls_modes_and_instances():
    q, k, v = (t.detach() for t in _qkv())
    attn = LSHAttention(bucket_size=4, n_hashes=2, seed=7)
    attn.train()
    a = attn(q, k, v)
    attn.eval()
    torch.manual_seed(123)  # the global generator plays no part
    assert torch.equal(a, attn(q, k, v))
    assert torch.equal(a, LSHAttention(bucket_size=4, n_hashes=2, seed=7)(q, k, v))
    assert not torch.allclose(a, LSHAttention(bucket_size=4, n_hashes=2, seed=8)(q, k, v), atol=1e-3)
    assert list(attn.state_dict()) == []  # rotations are derived from the seed, not stored


def test_hash_is_angular_lsh_with_rotations_fixed_per_round():
    attn = LSHAttention(bucket_size=4, n_hashes=3, seed=5)
    x = torch.randn(2, 2, 11, 8)
    rot = attn.rotations(8, 6)
    assert rot.shape == (3, 8, 3)
    xr = torch.einsum("bhnd,rdk->rbhnk", F.normalize(x, dim=-1), rot)
    expected = torch.cat([xr, -xr], -1).argmax(-1)
    assert torch.equal(attn.hash_buckets(x, 6), expected)
    assert torch.equal(attn.hash_buckets(x * 4.0, 6), expected)  # angular: scale-free
    fewer = LSHAttention(bucket_size=4, n_hashes=2, seed=5)
    torch.testing.assert_close(fewer.rotations(8, 6), rot[:2], atol=0, rtol=0)
    assert attn.buckets_for(37) == 20 and LSHAttention(bucket_size=4, num_buckets=6).buckets_for(37) == 6


def test_bf16_autocast_close_to_fp32():
    attn = LSHAttention(bucket_size=4, n_hashes=2)
    q, k, v = (t.detach().bfloat16() for t in _qkv())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(q.float(), k.float(), v.float())
    assert out.dtype == torch.bfloat16
    ref = attn(q.float(), k.float(), v.float())  # same buckets: hashing runs in fp32 on the same values
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)


def test_registered():
    attn = core_attn.build_attention("lsh", bucket_size=8, n_hashes=1)
    assert isinstance(attn, LSHAttention) and attn.exact is False
    assert "bucket_size=8" in repr(attn)


def test_errors():
    with pytest.raises(ValueError, match=r"bucket_size=0 is out of range; expected 1 <= bucket_size"):
        LSHAttention(bucket_size=0)
    with pytest.raises(ValueError, match=r"n_hashes=0 is out of range; expected 1 <= n_hashes"):
        LSHAttention(n_hashes=0)
    with pytest.raises(ValueError, match=r"num_buckets=3 must be even: angular LSH"):
        LSHAttention(num_buckets=3)
    with pytest.raises(ValueError, match=r"num_buckets=0 is out of range; expected 2 <= num_buckets"):
        LSHAttention(num_buckets=0)
    with pytest.raises(ValueError, match=r"num_buckets=4.0 must be an integer"):
        LSHAttention(num_buckets=4.0)
    with pytest.raises(ValueError, match=r"seed=-1 is out of range; expected 0 <= seed"):
        LSHAttention(seed=-1)
    with pytest.raises(ValueError, match=r"shared_qk=1 must be a bool"):
        LSHAttention(shared_qk=1)
    with pytest.raises(ValueError, match=r"this variant is self-attention: q has N=5 but k has N=6"):
        LSHAttention()(torch.randn(1, 1, 5, 4), torch.randn(1, 1, 6, 4), torch.randn(1, 1, 6, 4))
