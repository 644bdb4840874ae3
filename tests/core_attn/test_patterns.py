import torch

from core_attn.patterns import BlockDiagonal, Global, Local, Pattern, RandomBlocks, Strided, Summary


def test_union_is_or_of_masks():
    a, b = Local(2, 2), Global([0, 9])
    p = a | b
    n = 20
    i = torch.arange(n)
    expect = a.mask(i[:, None], i[None, :]) | b.mask_fn(n)(i[:, None], i[None, :])
    assert torch.equal(p.dense_mask(n), expect)
    assert torch.equal(p.causal().dense_mask(n), expect & torch.ones(n, n, dtype=torch.bool).tril())


def test_component_masks_match_definitions():
    n = 30
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    assert torch.equal(Local(3, 1, dilation=2).mask(i, j), ((j - i) >= -6) & ((j - i) <= 2) & ((j - i) % 2 == 0))
    assert torch.equal(Strided(5).mask(i, j), ((i - j) % 5) == 0)
    assert torch.equal(BlockDiagonal(4).mask(i, j), (i // 4) == (j // 4))
    assert torch.equal(Summary(5, 2).mask(i, j).expand(n, n), ((j % 5) >= 3).expand(n, n))


def test_random_blocks_avoid_window_and_excluded():
    rb = RandomBlocks(4, 2, seed=3, exclude_window=1, exclude_blocks=[0, -1])
    table = rb.table(64)
    nb = 16
    for b, row in enumerate(table.tolist()):
        for c in row:
            assert c == -1 or (abs(c - b) > 1 and c not in (0, nb - 1))
    assert torch.equal(table, RandomBlocks(4, 2, seed=3, exclude_window=1, exclude_blocks=[0, -1]).table(64))


def test_block_layout_matches_dense_mask():
    p = Pattern([Local(5, 5), Global([3]), RandomBlocks(8, 1, seed=0)])
    n, blk = 77, 8
    dense = torch.nn.functional.pad(p.dense_mask(n), (0, 80 - n, 0, 80 - n))
    expect = dense.view(10, 8, 10, 8).any(3).any(1)
    assert torch.equal(p.block_layout(n, blk), expect)


def _claimed_pairs(part, n):
    """Counts, per (query, key) pair, how often ``part`` visits and claims it."""
    counts = torch.zeros(n, n, dtype=torch.long)
    qb = part.q_pos.view(-1, part.block_q)
    kb = part.k_pos.view(-1, part.block_k)
    for r, blocks in enumerate(part.kv_index.tolist()):
        for c in blocks:
            if c < 0:
                continue
            qi, kj = qb[r][qb[r] >= 0], kb[c][kb[c] >= 0]
            claim = part.mask(qi[:, None], kj[None, :]).expand(len(qi), len(kj))  # masks may broadcast
            counts[qi[:, None].expand_as(claim)[claim], kj[None, :].expand_as(claim)[claim]] += 1
            if part.exact:  # an exact part claims every pair of every block it lists
                assert bool(claim.all())
    return counts


def test_parts_cover_exactly_the_mask():
    """Every visible pair is visited by at least one part, and each part only claims visited pairs."""
    p = Pattern([Local(3, 3, dilation=2), Global([0, 17]), Strided(6), Summary(7, 2)]).causal()
    n = 45
    mask = p.dense_mask(n)
    visited = sum(_claimed_pairs(part, n) for part in p.parts(n)) > 0
    assert torch.equal(visited | ~mask, torch.ones_like(mask)), "a visible pair is never visited"


def test_mask_mod_for_flex():
    p = Pattern([Local(2, 2)])
    mm = p.mask_mod(10)
    assert bool(mm(0, 0, torch.tensor(5), torch.tensor(7)))
    assert not bool(mm(0, 0, torch.tensor(5), torch.tensor(8)))


def test_block_granular_components_fuse_into_one_exact_part():
    """BigBird's window, global columns and random blocks become one plan listing each key block once;
    with the global rows' part it covers the pattern's pairs exactly once."""
    from core_attn.patterns import BlockLocal

    bs, n = 8, 100  # 13 blocks, the last one partial
    glob = Global(list(range(0, 8)) + list(range(96, 100)))  # first and (partial) last block
    p = Pattern([BlockLocal(bs, 3), glob, RandomBlocks(bs, 2, seed=1, exclude_window=1, exclude_blocks=[0, -1])])
    parts = p.parts(n)
    assert [part.exact for part in parts] == [True, False]
    kv = parts[0].kv_index
    for row in kv.tolist():
        listed = [c for c in row if c >= 0]
        assert len(listed) == len(set(listed)), f"a key block listed twice: {row}"
    mask = p.dense_mask(n)
    first = _claimed_pairs(parts[0], n)
    owned = first > 0
    rest = torch.zeros_like(first)
    for part in parts[1:]:
        rest += _claimed_pairs(part, n) * ~owned  # the kernel hides pairs of earlier parts
    assert torch.equal(first + rest, mask.long()), "each visible pair exactly once"


def test_scattered_global_tokens_are_not_fused():
    from core_attn.patterns import BlockLocal

    p = Pattern([BlockLocal(8, 3), Global([3, 50])])  # global tokens do not fill whole blocks
    assert not any(part.exact for part in p.parts(64))
