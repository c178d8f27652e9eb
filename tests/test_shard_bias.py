"""The shared core: keyed shard colouring and bias (reference path)."""

import pytest
import torch

from provmark.kernels.prf import context_seeds, fastrange, split_key, token_words
from provmark.kernels.shard_bias import MAX_SHARDS, preferred_mask, shard_bias


def _rows(batch, keys=None, salts=None, shards=4, preferred=0b1, delta=2.0, h=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    keys = keys if keys is not None else [12345 + i for i in range(batch)]
    return {
        "keys": torch.tensor([split_key(k) for k in keys], dtype=torch.int64),
        "salts": torch.tensor(salts if salts is not None else [0] * batch, dtype=torch.int64),
        "contexts": torch.randint(0, 49152, (batch, h), generator=gen),
        "shard_counts": torch.full((batch,), shards, dtype=torch.int64) if isinstance(shards, int) else torch.tensor(shards),
        "preferred": torch.full((batch,), preferred, dtype=torch.int64) if isinstance(preferred, int) else torch.tensor(preferred),
        "deltas": torch.full((batch,), delta) if isinstance(delta, float) else torch.tensor(delta),
    }


def _mask(rows, vocab):
    return preferred_mask(rows["keys"], rows["salts"], rows["contexts"], rows["shard_counts"], rows["preferred"], vocab)


def _shard_of_every_id(rows, vocab):
    seeds = context_seeds(rows["keys"], rows["salts"], rows["contexts"])
    return fastrange(token_words(seeds[:, None], torch.arange(vocab)[None, :]), rows["shard_counts"][:, None])


@pytest.mark.parametrize("vocab", [1, 4097, 49152, 65537])
def test_bias_adds_delta_exactly_on_preferred_ids_and_nowhere_else(vocab):
    rows = _rows(3, delta=[0.5, 2.0, 3.25])
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(1))
    out = shard_bias(logits, **rows)
    mask = _mask(rows, vocab)
    expected = logits + mask * rows["deltas"][:, None]
    assert torch.equal(out, expected)


def test_mask_matches_the_bitmask_rule_for_arbitrary_preferred_sets():
    # Non-contiguous sets take the general path; contiguous runs take the word-range path.
    preferred = [0b1011, 0b0110, (1 << 63) | 1, 0b111000, 0]
    shards = [4, 4, 64, 6, 5]
    rows = _rows(5, shards=shards, preferred=[p - (1 << 64) if p >= 1 << 63 else p for p in preferred])
    shard = _shard_of_every_id(rows, 3001)
    expected = torch.stack([torch.tensor([(p >> int(s)) & 1 for s in row]) for p, row in zip(preferred, shard)]).bool()
    assert torch.equal(_mask(rows, 3001), expected)


@pytest.mark.parametrize("shards,preferred", [(4, 0b1), (4, 0b100), (3, 0b10), (37, 0b111 << 20), (64, (1 << 63) - 1)])
def test_word_range_path_equals_the_general_path(shards, preferred):
    rows = _rows(4, shards=shards, preferred=preferred)
    range_mask = _mask(rows, 4099)
    shard = _shard_of_every_id(rows, 4099)
    assert torch.equal(range_mask, ((preferred >> shard) & 1).bool())


def test_preferred_fraction_is_the_share_of_preferred_shards():
    rows = _rows(64, shards=4, preferred=0b1)
    assert abs(_mask(rows, 49152).double().mean().item() - 0.25) < 0.005


def test_each_row_uses_its_own_key_and_salt():
    rows = _rows(4, keys=[1, 1, 2, 1], salts=[0, 0, 0, 9])
    rows["contexts"][:] = rows["contexts"][0]
    mask = _mask(rows, 5000)
    assert torch.equal(mask[0], mask[1])
    assert not torch.equal(mask[0], mask[2])
    assert not torch.equal(mask[0], mask[3])


def test_skipped_rows_are_left_untouched():
    rows = _rows(3)
    logits = torch.randn(3, 1000)
    out = shard_bias(logits, **rows, skip=torch.tensor([False, True, False]))
    assert torch.equal(out[1], logits[1])
    assert not torch.equal(out[0], logits[0])
    assert torch.equal(shard_bias(logits, **rows, skip=torch.ones(3, dtype=torch.bool)), logits)


def test_input_logits_are_not_modified_unless_inplace():
    rows = _rows(2)
    logits = torch.randn(2, 777)
    before = logits.clone()
    out = shard_bias(logits, **rows)
    assert torch.equal(logits, before) and out.data_ptr() != logits.data_ptr()
    same = shard_bias(logits, **rows, inplace=True)
    assert same.data_ptr() == logits.data_ptr() and torch.equal(logits, out)


def test_minus_inf_stays_minus_inf_and_nan_stays_nan():
    rows = _rows(1, shards=1, preferred=0b1)  # every id preferred
    logits = torch.tensor([[float("-inf"), float("nan"), 0.0]])
    out = shard_bias(logits, **rows)
    assert out[0, 0] == float("-inf") and torch.isnan(out[0, 1]) and out[0, 2] == 2.0


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 0), (torch.float16, 1e-3), (torch.bfloat16, 1e-2)])
def test_half_precision_logits_get_the_same_bias_within_dtype_tolerance(dtype, atol):
    rows = _rows(2)
    logits = torch.randn(2, 2049).to(dtype)
    out = shard_bias(logits, **rows)
    assert out.dtype == dtype
    expected = (logits.float() + _mask(rows, 2049) * rows["deltas"][:, None]).to(dtype)
    torch.testing.assert_close(out.float(), expected.float(), rtol=0, atol=atol)


def test_non_contiguous_logits_are_biased_like_contiguous_ones():
    rows = _rows(3)
    wide = torch.randn(3, 2 * 1001)
    strided = wide[:, ::2]
    assert not strided.is_contiguous()
    assert torch.equal(shard_bias(strided, **rows), shard_bias(strided.contiguous(), **rows))


def test_large_batches_hash_like_small_ones():
    # Batches above the small-batch cutoff take the vectorised seed path.
    rows = _rows(40)
    mask = _mask(rows, 999)
    single = torch.cat([_mask({k: v[i : i + 1] for k, v in rows.items()}, 999) for i in range(40)])
    assert torch.equal(mask, single)


def test_bad_shapes_and_shard_counts_raise_value_errors():
    rows = _rows(2)
    with pytest.raises(ValueError, match="salts must have shape"):
        shard_bias(torch.zeros(2, 10), **{**rows, "salts": torch.zeros(3, dtype=torch.int64)})
    with pytest.raises(ValueError, match="shard_counts must lie"):
        shard_bias(torch.zeros(2, 10), **{**rows, "shard_counts": torch.tensor([4, MAX_SHARDS + 1])})
    with pytest.raises(ValueError, match="logits must have shape"):
        shard_bias(torch.zeros(10), **rows)
    with pytest.raises(ValueError, match="deltas is on meta but the logits are on cpu"):
        shard_bias(torch.zeros(2, 10), **{**rows, "deltas": torch.zeros(2, device="meta")})
    with pytest.raises(ValueError, match="preferred must have shape \\(2, 3\\) \\(a table"):
        shard_bias(torch.zeros(2, 10), **{**rows, "salts": torch.zeros(2, 3, dtype=torch.int64)},
                   position_keys=rows["keys"])


def test_kernels_import_and_run_their_references_without_triton():
    # A CPU install has no Triton: the package must import and every op take its reference.
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, provmark.kernels as k\n"
        "from provmark.kernels.prf import split_key\n"
        "assert not k.HAS_TRITON\n"
        "rows = dict(keys=torch.tensor([split_key(5)]), salts=torch.zeros(1, dtype=torch.int64),\n"
        "            contexts=torch.tensor([[1, 2]]), shard_counts=torch.tensor([4]), preferred=torch.tensor([1]))\n"
        "out = k.shard_bias(torch.zeros(1, 100), deltas=torch.ones(1), **rows)\n"
        "assert torch.equal(out != 0, k.preferred_mask(*rows.values(), 100))\n"
        "k.fused_sample(torch.zeros(1, 100), temperatures=torch.ones(1), noise_seeds=k.sampling_seeds(1, 0, 1), **rows,\n"
        "               deltas=torch.ones(1))\n"
        "k.available_ids(torch.full((1, 100), 0.01), torch.tensor([1]), torch.tensor([2]), torch.tensor([0]), 10)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
