"""PRF v1: pinned compatibility vectors and the properties the schemes rely on."""

import pytest
import torch

from provmark.kernels.prf import (
    _context_seeds_torch,
    MASK32,
    PRF_VERSION,
    context_seeds,
    fastrange,
    fold16,
    folded_token_hash_table,
    mix32,
    mix32_unfolded_,
    split_key,
    token_hashes,
    token_words,
)


def _seed(key, salt, context):
    return int(context_seeds(torch.tensor([split_key(key)]), torch.tensor([salt]), torch.tensor([context]).reshape(1, -1))[0])


def test_prf_version_is_v1():
    assert PRF_VERSION == "prf-v1"


def test_mix32_compatibility_vector():
    x = torch.tensor([0, 1, 0xDEADBEEF, 0xFFFFFFFF])
    assert mix32(x).tolist() == MIX32_VECTOR


def test_context_seed_compatibility_vector_for_key_42():
    assert [_seed(42, 0, ctx) for ctx in ([1], [2], [17, 4242])] == SEED_VECTOR


def test_token_word_compatibility_vector():
    assert token_words(torch.tensor([123456789]), torch.tensor([0, 1, 49151])).tolist() == WORD_VECTOR


def test_mix32_is_a_bijection_on_a_block_of_words():
    x = torch.arange(1 << 20, dtype=torch.int64) * 4093
    assert torch.unique(mix32(x & MASK32)).numel() == 1 << 20


def test_mix32_matches_uint32_wraparound_arithmetic():
    # The Triton kernel multiplies in uint32; the reference must equal that wrap-around exactly.
    values = [0, 1, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFF, 0x12345678]
    assert mix32(torch.tensor(values)).tolist() == [_plain_mix(v) for v in values]


def _plain_mix(x):
    x ^= x >> 16
    x = (x * 0x21F0AAAD) % 2**32
    x ^= x >> 15
    x = (x * 0x735A2D97) % 2**32
    return x ^ (x >> 15)


def test_context_seed_and_token_word_follow_the_documented_definition():
    # An independent, plain-integer reading of the module docstring.
    key, salt, context, token = 2**63 + 12345, 7, [3, 1, 4], 49151
    a = _plain_mix((key & MASK32) ^ 0x9E3779B9)
    b = _plain_mix((key >> 32) ^ 0x85EBCA6B)
    for w in [salt, *context]:
        a = _plain_mix(a ^ w)
        b = _plain_mix(b ^ a)
    seed = _plain_mix(a ^ b)
    assert _seed(key, salt, context) == seed
    word = _plain_mix(seed ^ _plain_mix(token ^ 0x5BD1E995))
    assert token_words(torch.tensor([seed]), torch.tensor([token])).tolist() == [word]
    assert fastrange(torch.tensor([word]), 37).tolist() == [(word * 37) >> 32]


@pytest.mark.parametrize("key", [0, 2**32 - 1, 2**32, 2**32 + 1, 2**63, 2**63 + 12345, 2**64 - 1])
def test_seeds_are_32_bit_words_for_keys_across_the_whole_64_bit_range(key):
    seed = _seed(key, 0, [5, 6])
    assert 0 <= seed < 2**32


def test_both_key_words_change_the_seed():
    base = _seed(2**32 + 1, 0, [9])
    assert _seed(2**32, 0, [9]) != base  # low word differs
    assert _seed(1, 0, [9]) != base  # high word differs


def test_salt_and_each_context_token_change_the_seed():
    base = _seed(7, 0, [1, 2])
    assert len({base, _seed(7, 1, [1, 2]), _seed(7, 0, [2, 2]), _seed(7, 0, [1, 3]), _seed(7, 0, [2, 1])}) == 5


def test_split_key_rejects_keys_outside_64_bits():
    with pytest.raises(ValueError, match="2\\*\\*64"):
        split_key(2**64)
    with pytest.raises(ValueError):
        split_key(-1)


def test_token_words_are_distinct_for_distinct_ids_under_one_seed():
    words = token_words(torch.tensor([99]), torch.arange(128256))
    assert torch.unique(words).numel() == 128256


def test_folded_table_gives_the_same_words_as_token_words():
    seeds = torch.tensor([0, 1, 0xDEADBEEF, 0xFFFFFFFF])
    via_table = mix32_unfolded_(fold16(seeds)[:, None] ^ folded_token_hash_table(1001)[None, :])
    assert torch.equal(via_table, token_words(seeds[:, None], torch.arange(1001)[None, :]))
    assert torch.equal(folded_token_hash_table(1001), fold16(token_hashes(torch.arange(1001))))


@pytest.mark.parametrize("shards", [2, 3, 4, 7, 32, 64])
def test_fastrange_spreads_words_evenly_over_shards(shards):
    # 2**20 words of 4096 seeds: each shard's share is 1/S within 5 standard deviations.
    gen = torch.Generator().manual_seed(shards)
    seeds = torch.randint(0, 2**32, (256,), generator=gen)
    words = token_words(seeds[:, None], torch.arange(4096)[None, :]).flatten()
    counts = torch.bincount(fastrange(words, shards), minlength=shards).double()
    n, p = words.numel(), 1 / shards
    assert counts.numel() == shards
    assert torch.all((counts - n * p).abs() < 5 * (n * p * (1 - p)) ** 0.5)


MIX32_VECTOR = [0, 2261973619, 707447538, 2578835075]
SEED_VECTOR = [1848084358, 2193315770, 3175114255]
WORD_VECTOR = [2467762387, 3908390287, 2587673958]


@pytest.mark.parametrize("rows", [17, 500, 1031])
@pytest.mark.parametrize("width", [0, 1, 3])
def test_cpu_context_seeds_equal_the_torch_reference_bit_for_bit(rows, width):
    # Batches above _SMALL_BATCH take numpy's uint32 path on CPU; the torch chain is the reference.
    gen = torch.Generator().manual_seed(rows * 10 + width)
    keys = torch.tensor([split_key(k) for k in [0, 2**32, 2**63 + 12345, 2**64 - 1]])
    keys = keys[torch.randint(4, (rows,), generator=gen)]
    salts = torch.randint(0, 2**32, (rows,), generator=gen)
    contexts = torch.randint(0, 2**32, (width + 1, rows), generator=gen).T[:, :width]  # non-contiguous
    assert torch.equal(context_seeds(keys, salts, contexts), _context_seeds_torch(keys.clone(), salts, contexts))
    assert torch.equal(context_seeds(keys[:1].expand(rows, 2), salts, contexts),
                       _context_seeds_torch(keys[:1].expand(rows, 2).clone(), salts, contexts))


def test_cpu_token_words_equal_the_torch_reference_bit_for_bit():
    gen = torch.Generator().manual_seed(3)
    seeds = torch.tensor([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])
    seeds = torch.cat([seeds, torch.randint(0, 2**32, (300,), generator=gen)])
    ids = torch.cat([torch.tensor([0, 49151, 128256, 2**31]), torch.randint(0, 2**17, (296,), generator=gen)])
    assert torch.equal(token_words(seeds[:300], ids), mix32(seeds[:300] ^ token_hashes(ids)))
    rows, columns = seeds[:, None], ids[None, ::7]  # broadcast, non-contiguous
    assert torch.equal(token_words(rows, columns), mix32(rows ^ token_hashes(columns)))
