"""Balance-Marking and Vanilla-Marking: configuration, the split rule, the embedder/decoder
contract, exhaustive decoding against brute force, calibration and copy-paste localisation."""

import math

import pytest
import torch

from benchmarks.calibration import SyntheticProxy
from provmark.detector import create_detector
from provmark.detector.balance import walsh_hadamard
from provmark.errors import ParameterError
from provmark.kernels.balanced_split import available_ids, available_in_pool, head_of, partition_starts
from provmark.kernels.prf import MASK32, TOKEN_TAG, context_seed_int, context_seeds, mix32_int, split_key, token_words
from provmark.kernels.shard_bias import pool_salts, preferred_mask
from provmark.watermark.balance import BalanceConfig, VanillaConfig, parity, pool_indices, pool_words, segments_of
from provmark.watermark.base import positions
from provmark.watermark.hook import WatermarkLogitsProcessor, generate
from provmark.watermark.keys import create_key
from provmark.watermark.proxy import Proxy, check_same_vocabulary
from tests.test_detector_kgw import _zipf_sequences

SECRET = bytes(range(32))


@pytest.mark.parametrize(
    "scheme,params,message",
    [
        ("vanilla", {"segment_bits": 0}, "segment_bits must be an integer in \\[1, 24\\]"),
        ("vanilla", {"segment_bits": 25}, "segment_bits must be"),
        ("vanilla", {"bits": 30}, "multiple of segment_bits \\(20\\)"),
        ("vanilla", {"bits": 80, "segment_bits": 16}, "bits must be an integer in \\[1, 64\\]"),
        ("vanilla", {"pool_size": 48}, "pool_size must be a power of two"),
        ("vanilla", {"pool_size": 1}, "pool_size must be a power of two"),
        ("vanilla", {"delta": 0}, "delta must be"),
        ("vanilla", {"head": 8}, "unknown parameter"),
        ("balance", {"head": 0}, "head must be an integer in \\[1, 131072\\]"),
        ("balance", {"proxy_context": "windowed"}, "proxy_context must be 'text', 'window' or 'prompt'"),
    ],
)
def test_bad_parameters_are_refused_with_the_field_named(scheme, params, message):
    with pytest.raises(ParameterError, match=message):
        create_key(scheme, params)


def test_defaults_follow_the_paper_where_it_has_one():
    config = BalanceConfig()
    assert (config.bits, config.segment_bits, config.context_width, config.delta) == (20, 20, 1, 1.5)
    assert config.capacity == 1 << 20 and config.num_segments == 1 and config.pool_bits == 6
    assert VanillaConfig(bits=40).segments(0xABCDE12345) == [0xABCDE, 0x12345]


def test_parity_and_pool_indices_match_plain_integers():
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2**32, (500,), generator=gen)
    assert parity(x).tolist() == [bin(v).count("1") % 2 for v in x.tolist()]
    offsets = torch.randint(0, 8, (50,), generator=gen)
    rows = torch.randint(0, 2**10, (50, 3), generator=gen)
    messages = torch.randint(0, 2**10, (50,), generator=gen)
    expected = [
        o ^ sum((bin(r & m).count("1") % 2) << i for i, r in enumerate(row))
        for o, row, m in zip(offsets.tolist(), rows.tolist(), messages.tolist())
    ]
    assert pool_indices(offsets, rows, messages).tolist() == expected


def test_the_shard_ops_pool_salt_is_c_xor_a_m_in_plain_integers():
    # kernels.shard_bias.pool_salts, which the kernels apply at every generation step, against
    # the definition written out with PRF v1's integer functions: seed = context_seed(pool key,
    # column, context), word r = token_word(seed, r), c = word 0 mod 2**k, bit r of A m =
    # parity(word r + 1 & m). Keys at 2**32 and above 2**63, messages up to 2**32 - 1.
    gen = torch.Generator().manual_seed(3)
    n, k = 40, 6
    keys = torch.tensor([split_key([0, 2**32, 2**63 + 5, 2**64 - 1][i % 4]) for i in range(n)])
    columns = torch.randint(0, 5, (n,), generator=gen)
    contexts = torch.randint(0, 2**17, (n, 2), generator=gen)
    messages = torch.randint(0, 2**32, (n,), generator=gen)
    messages[-1] = 2**32 - 1

    def word(seed, r):
        return mix32_int(seed ^ mix32_int(r ^ TOKEN_TAG))

    expected = []
    for (lo, hi), column, context, m in zip(keys.tolist(), columns.tolist(), contexts.tolist(), messages.tolist()):
        seed = context_seed_int(lo, hi, column, context)
        expected.append((word(seed, 0) % 2**k) ^ sum((bin(word(seed, r + 1) & m).count("1") % 2) << r for r in range(k)))
    assert pool_salts(keys, columns, contexts, messages, k).tolist() == expected


@pytest.mark.parametrize("params", [{"bits": 16, "segment_bits": 8}, {"bits": 12, "segment_bits": 6, "pool_size": 8, "context_width": 2},
                                    {"bits": 20, "pool_size": 4096}])
def test_vanillas_constant_step_params_resolve_to_the_detectors_pool_index(params):
    # The embedder hands the op a table of messages with position and pool keys, built once; at
    # each context the op's pick must be the segment and pool index the detector recomputes.
    key = create_key("vanilla", params, secret=SECRET)
    config = key.config
    gen = torch.Generator().manual_seed(4)
    contexts = torch.randint(0, 49152, (300, config.context_width), generator=gen)
    payloads = torch.randint(0, config.capacity, (300,), generator=gen).tolist()
    marker = WatermarkLogitsProcessor(key, payloads).watermarker
    step = marker.step_params(torch.zeros_like(contexts), payloads)
    assert step is marker.step_params(contexts, payloads)  # built once per payload list, whatever the contexts
    segment = segments_of(split_key(key.subkey("position")), contexts, config)
    offsets, rows = pool_words(split_key(key.subkey("pool")), contexts, segment, config)
    messages = torch.tensor([config.segments(p) for p in payloads]).gather(1, segment[:, None]).squeeze(1)
    resolved = step.resolved(contexts)
    assert torch.equal(resolved.salts, pool_indices(offsets, rows, messages))
    assert resolved.position_keys is None and resolved.pool_keys is None and bool((resolved.preferred == 0b10).all())
    assert len(set(segment.tolist())) == config.num_segments


def test_pool_indices_of_two_messages_collide_at_rate_one_over_k():
    config = VanillaConfig(pool_size=16)
    contexts = torch.arange(20_000)[:, None]
    offsets, rows = pool_words((123, 456), contexts, torch.zeros(20_000, dtype=torch.int64), config)
    a = pool_indices(offsets, rows, torch.full((20_000,), 0x12345))
    b = pool_indices(offsets, rows, torch.full((20_000,), 0x54321))
    assert abs(float((a == b).float().mean()) - 1 / 16) < 0.01
    assert torch.bincount(a, minlength=16).min() > 20_000 / 16 * 0.85


def _random_probs(rows, vocab, gen, peak=None):
    probs = torch.softmax(torch.randn((rows, vocab), generator=gen) * 2, dim=-1)
    if peak is not None:
        probs = probs * (1 - peak)
        probs[:, 7] += peak
    return probs


def _seeds(rows, gen):
    return torch.randint(0, 2**32, (rows,), generator=gen)


def test_the_available_side_holds_at_least_half_the_head_mass_and_a_dominant_id():
    gen = torch.Generator().manual_seed(2)
    probs = _random_probs(64, 3000, gen)
    order, coin, starts = _seeds(64, gen), _seeds(64, gen), partition_starts(torch.randint(0, 64, (64,), generator=gen), 64)
    available = available_ids(probs, order, coin, starts, 256)
    mass, ids = head_of(probs, 256)
    head_available = available.gather(1, ids)
    share = (mass * head_available).sum(dim=1) / mass.sum(dim=1)
    assert bool((share >= 0.5).all())
    # the cut is tight: without the crossing id (the available head id first in the partition's
    # order) the available side would hold less than half
    rotated = (token_words(order[:, None], ids) - starts[:, None]) & MASK32
    crossing = rotated.masked_fill(~head_available, 2**40).argmin(dim=1, keepdim=True)
    assert bool((share - mass.gather(1, crossing).squeeze(1) / mass.sum(dim=1) < 0.5).all())
    peaked = _random_probs(64, 3000, gen, peak=0.6)
    assert bool(available_ids(peaked, order, coin, starts, 256)[:, 7].all())


def test_partitions_of_one_context_differ():
    gen = torch.Generator().manual_seed(6)
    probs = _random_probs(1, 3000, gen).expand(16, 3000)
    order, coin = _seeds(1, gen).expand(16), _seeds(1, gen).expand(16)
    available = available_ids(probs, order, coin, partition_starts(torch.arange(16), 16), 3000)
    # neighbours in j are alike, but on average two partitions agree on about half the mass,
    # as independent ones would
    agree = ((available[:, None, :] == available[None, :, :]).double() * probs[0]).sum(dim=2)
    mean_agreement = float((agree.sum() - agree.diagonal().sum()) / (16 * 15))
    assert 0.35 < mean_agreement < 0.65 and len({tuple(row.tolist()) for row in available}) == 16


def test_outside_the_head_and_for_vanilla_the_split_is_the_shard_rule():
    gen = torch.Generator().manual_seed(3)
    probs = _random_probs(8, 5000, gen)
    keys = torch.randint(0, 2**32, (8, 2), generator=gen)
    salts = torch.randint(0, 64, (8,), generator=gen)
    contexts = torch.randint(0, 5000, (8, 1), generator=gen)
    coin = preferred_mask(keys, salts, contexts, torch.full((8,), 2), torch.full((8,), 0b10), 5000)
    seeds = context_seeds(keys, salts, contexts)
    starts = partition_starts(salts, 64)
    assert torch.equal(available_ids(probs, _seeds(8, gen), seeds, starts, 0), coin)
    balanced = available_ids(probs, _seeds(8, gen), seeds, starts, 100)
    _, ids = head_of(probs, 100)
    outside = torch.ones_like(coin).scatter_(1, ids, False)
    assert torch.equal(balanced[outside], coin[outside])


@pytest.mark.parametrize("head", [0, 1, 64, 5000])
def test_detection_rule_matches_the_generation_rule(head):
    gen = torch.Generator().manual_seed(4)
    n, pool, vocab = 40, 8, 5000
    probs = _random_probs(n, vocab, gen, peak=None)
    order = _seeds(n, gen)
    coin = torch.randint(0, 2**32, (n, pool), generator=gen)
    starts = partition_starts(torch.arange(pool), pool)
    # tokens: some from the head, some far in the tail
    tokens = torch.where(torch.arange(n) % 2 == 0, probs.argmax(dim=1), torch.randint(0, vocab, (n,), generator=gen))
    mass, ids = head_of(probs, head) if head else (torch.empty((n, 0), dtype=torch.float64), torch.empty((n, 0), dtype=torch.int64))
    pooled = available_in_pool(mass, ids, tokens, order, coin, starts)
    for j in range(pool):
        expected = available_ids(probs, order, coin[:, j], starts[j].expand(n), head).gather(1, tokens[:, None]).squeeze(1)
        assert torch.equal(pooled[:, j], expected), j


def test_walsh_hadamard_is_the_hadamard_matrix_product():
    x = torch.randint(-5, 6, (3, 32))
    hadamard = torch.tensor([[(-1) ** bin(u & m).count("1") for m in range(32)] for u in range(32)])
    assert torch.equal(walsh_hadamard(x), x @ hadamard.T)


@pytest.mark.parametrize("params", [{"bits": 8, "segment_bits": 8, "pool_size": 16}, {"bits": 12, "segment_bits": 6, "pool_size": 8, "context_width": 2}])
def test_exhaustive_decoding_equals_brute_force_counting(params):
    key = create_key("vanilla", params, secret=SECRET)
    config = key.config
    detector = create_detector(key)
    ids = torch.randint(0, 60, (400,), generator=torch.Generator().manual_seed(5)).tolist()
    (pairs,) = detector.pairs([ids])
    evidence = detector.decode(pairs)
    n = pairs.tokens.shape[0]
    segment = (positions(split_key(key.subkey("position")), pairs.contexts, config.num_segments)
               if config.num_segments > 1 else torch.zeros(n, dtype=torch.int64))
    offsets, rows = pool_words(split_key(key.subkey("pool")), pairs.contexts, segment, config)
    decoded = []
    for s in range(config.num_segments):
        inside = segment == s
        counts = [
            int(pairs.available[inside].gather(1, pool_indices(offsets[inside], rows[inside], torch.full((int(inside.sum()),), m))[:, None]).sum())
            for m in range(1 << config.segment_bits)
        ]
        decoded.append(counts.index(max(counts)))
    assert config.segments(evidence.payload) == decoded


def test_vanilla_embedder_prefers_exactly_what_the_detector_calls_available():
    key = create_key("vanilla", {"bits": 16, "segment_bits": 8}, secret=SECRET)
    processor = WatermarkLogitsProcessor(key, [0xBEEF, 0x0102])
    input_ids = torch.tensor([[5, 9, 11], [7, 8, 1000]])
    scores = torch.zeros((2, 3000))
    biased = processor(input_ids, scores)
    detector = create_detector(key)
    for row in range(2):
        tokens = torch.arange(3000)
        context = input_ids[row, -1:].expand(3000, 1)
        salts = processor.watermarker.partition_salts(input_ids[row : row + 1, -1:], [[0xBEEF, 0x0102][row]])
        seeds = context_seeds(detector._shard_key.expand(3000, 2), salts.expand(3000), context)
        empty = torch.empty((3000, 0), dtype=torch.int64)
        rule = available_in_pool(empty.double(), empty, tokens, seeds, seeds[:, None], partition_starts(salts, 64))
        assert torch.equal(biased[row] > 0, rule[:, 0])


def test_balance_needs_a_proxy_and_refuses_it_elsewhere():
    key = create_key("balance", secret=SECRET)
    with pytest.raises(ParameterError, match="needs the proxy"):
        create_detector(key)
    with pytest.raises(ParameterError, match="give a proxy"):
        WatermarkLogitsProcessor(key, [1])
    with pytest.raises(ParameterError, match="uses no proxy"):
        create_detector(create_key("vanilla"), proxy=SyntheticProxy())
    with pytest.raises(ParameterError, match="uses no proxy"):
        WatermarkLogitsProcessor(create_key("kgw"), proxy=SyntheticProxy())


def test_a_proxy_with_another_vocabulary_is_refused(tokenizer):
    class Other:
        def get_vocab(self):
            vocab = dict(tokenizer.get_vocab())
            vocab["zzz-not-a-token"] = len(vocab)
            return vocab

    check_same_vocabulary(tokenizer, tokenizer)
    with pytest.raises(ParameterError, match="tokenizer differs"):
        Proxy(None, Other(), main_tokenizer=tokenizer)


@pytest.mark.parametrize("scheme", ["vanilla", "balance"])
def test_false_positive_rate_on_unwatermarked_sequences_is_at_most_alpha(scheme):
    # 3 keys x 300 Zipf sequences of 200 tokens, exhaustive over 2**10 messages; the synthetic
    # proxy predicts the next token half the time, which pushes availability above 1/2. The
    # 10,000-sequence check at 20 bits is benchmarks/calibration.py.
    sequences = [[t % 2048 for t in s] for s in _zipf_sequences(900, 200, seed=20)]
    params = {"bits": 10, "segment_bits": 10, **({"head": 64} if scheme == "balance" else {})}
    p_values = []
    for k in range(3):
        key = create_key(scheme, params, secret=bytes([k + 1]) * 32)
        proxy = SyntheticProxy(seed=k) if scheme == "balance" else None
        p_values += [r.p_value for r in create_detector(key, proxy=proxy).detect_batch(sequences[k * 300 : (k + 1) * 300])]
    rates = {alpha: sum(p <= alpha for p in p_values) / len(p_values) for alpha in (0.1, 0.05, 0.01)}
    for alpha, rate in rates.items():
        assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / len(p_values)), (alpha, rate)
    # not vacuous: the union bound is conservative, but small p-values do occur
    assert rates[0.1] >= 0.03, rates


@pytest.mark.parametrize("scheme,params", [
    ("vanilla", {}), ("balance", {"head": 64}), ("balance", {"head": 64, "proxy_context": "window"}),
])
def test_per_row_payloads_round_trip_through_generation(tiny_model, tokenizer, scheme, params):
    key = create_key(scheme, {"bits": 16, "segment_bits": 8, "delta": 6.0, **params}, secret=SECRET)
    payloads = [0x1234, 0xBEEF, 0x0F0F]
    proxy = Proxy(tiny_model, tokenizer) if scheme == "balance" else None
    gens = generate(tiny_model, tokenizer, ["a", "b c", "d e f"], key, payloads, chat=False, seed=3, max_new_tokens=120, proxy=proxy)
    results = create_detector(key, proxy=proxy).detect_batch([g.token_ids for g in gens])
    assert [r.payload for r in results] == payloads
    assert all(r.is_watermarked for r in results)


def test_window_heads_read_only_the_ids_before_each_position(tiny_model, tokenizer):
    proxy = Proxy(tiny_model, tokenizer, batch_size=2)
    sequences = [list(range(100, 125)), [7, 8, 9], [5]]
    heads = proxy.window_heads(sequences, 8, 10, rows_per_pass=7)  # chunks mix sequences and window lengths
    assert [h[0].shape for h in heads] == [(24, 8), (2, 8), (0, 8)]
    for seq, (mass, ids) in zip(sequences, heads):
        for i in range(1, len(seq)):
            window = torch.tensor([seq[max(0, i - 10) : i]])
            want_mass, want_ids = head_of(proxy.window_probs(window), 8)
            assert torch.equal(ids[i - 1], want_ids[0])
            assert torch.allclose(mass[i - 1], want_mass[0], rtol=1e-5, atol=1e-9)
    with torch.no_grad():  # and the window is what the model sees without padding
        direct = torch.softmax(tiny_model(torch.tensor([sequences[0][3:13]])).logits[0, -1].float(), dim=-1)
    assert torch.allclose(head_of(direct[None], 8)[0][0], heads[0][0][12], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("scheme,params", [("vanilla", {}), ("balance", {"head": 64, "proxy_context": "window"})])
def test_copy_paste_span_is_located_and_decoded(tiny_model, tokenizer, scheme, params):
    key = create_key(scheme, {"bits": 16, "segment_bits": 16, "delta": 6.0, **params}, secret=SECRET)
    proxy = Proxy(tiny_model, tokenizer) if scheme == "balance" else None
    (gen,) = generate(tiny_model, tokenizer, ["x"], key, [0xC0DE], chat=False, seed=4, max_new_tokens=150, proxy=proxy)
    host = _zipf_sequences(1, 600, seed=9)[0]
    text = host[:300] + list(gen.token_ids) + host[300:]
    result = create_detector(key, proxy=proxy).locate(text, window=150, stride=25)
    (start, end) = result.spans[0]
    overlap = max(0, min(end, 450) - max(start, 300))
    assert overlap >= 0.8 * 150 and (end - start) <= 1.2 * 150
    assert result.payload == 0xC0DE and result.is_watermarked
