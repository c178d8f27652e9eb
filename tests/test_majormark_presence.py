"""Payload-free presence tests of MajorMark and MajorMark+: exact and simulated null laws against
brute force, calibration on unwatermarked text and on counts drawn from the null, and power over
the union bound on counts drawn from a watermark."""

import itertools
import math

import numpy as np
import pytest
import torch

from provmark.detector import create_detector
from provmark.detector.majormark import NULL_DRAWS, block_excess_pmf, chi_square_null
from provmark.errors import ParameterError
from provmark.watermark.keys import create_key
from provmark.watermark.majormark import block_candidates
from tests.test_detector_kgw import _zipf_sequences

SECRET = bytes(range(32))


@pytest.mark.parametrize("trials,size", [(0, 4), (1, 4), (3, 4), (4, 3), (1, 6)])
def test_block_excess_law_is_the_largest_candidate_excess_over_every_placement(trials, size):
    # every placement of the block's tokens under each candidate salt, candidates independent
    candidates = block_candidates(size)
    per_candidate = []
    for _, n in candidates:
        values = []
        for placement in itertools.product(range(size), repeat=trials):
            counts = sorted(np.bincount(placement, minlength=size).tolist(), reverse=True)
            values.append(size * sum(counts[:n]) - n * trials)
        per_candidate.append(values)
    law = {}
    for combo in itertools.product(*per_candidate):
        law[max(combo)] = law.get(max(combo), 0) + 1
    total = sum(law.values())
    low, pmf = block_excess_pmf(trials, size)
    assert low == min(law) and pmf.size == max(law) - min(law) + 1
    for value in range(low, low + pmf.size):
        assert pmf[value - low] == pytest.approx(law.get(value, 0) / total, rel=1e-12, abs=1e-15)


def test_chi_square_null_draws_follow_the_multinomial_law():
    # E[sum c_i^2] = N + N (N - 1) / b for Multinomial(N; 1/b each); and an independent sample of
    # multinomial draws gives the same tail at the quantiles a test uses.
    rng = np.random.default_rng(5)
    for trials, shards in [(40, 8), (190, 32), (600, 16)]:
        values, at_least = chi_square_null(trials, shards)
        counts = -np.diff(np.append(at_least, 0))
        assert counts.sum() == NULL_DRAWS and at_least[0] == NULL_DRAWS
        mean = float((values * counts).sum()) / NULL_DRAWS
        sd = math.sqrt(float(((values - mean) ** 2 * counts).sum()) / NULL_DRAWS)
        assert mean == pytest.approx(trials + trials * (trials - 1) / shards, abs=4 * sd / math.sqrt(NULL_DRAWS))
        fresh = (rng.multinomial(trials, np.full(shards, 1 / shards), size=NULL_DRAWS) ** 2).sum(axis=1)
        for q in (0.9, 0.99, 0.999):
            cut = np.quantile(fresh, q)
            simulated = at_least[np.searchsorted(values, cut)] / NULL_DRAWS
            expected = (fresh >= cut).mean()
            assert simulated == pytest.approx(expected, abs=4 * math.sqrt(expected / NULL_DRAWS))
    assert chi_square_null(190, 32)[0] is chi_square_null(190, 32)[0]  # cached, deterministic


def _null_scores(scheme, config, lengths, rng):
    """token_scores and seq_index of sequences whose shards (and blocks) are uniform draws."""
    total = int(lengths.sum())
    seq_index = torch.from_numpy(np.repeat(np.arange(lengths.size), lengths))
    if scheme == "majormark":
        return torch.from_numpy(rng.integers(0, config.bits, (total, 2))), seq_index
    columns = 1 + len(block_candidates(config.block_size))
    scores = rng.integers(0, config.block_size, (total, columns))
    scores[:, 0] = rng.integers(0, config.num_blocks, total)
    return torch.from_numpy(scores), seq_index


@pytest.mark.parametrize("scheme", ["majormark", "majormark+"])
def test_presence_is_calibrated_on_30000_sequences_drawn_from_the_null(scheme):
    detector = create_detector(create_key(scheme, {"bits": 32}, secret=SECRET))
    test = detector._chi_square_log_p if scheme == "majormark" else detector._excess_log_p
    rng = np.random.default_rng(11)
    log_p = []
    for _ in range(6):
        lengths = rng.integers(150, 200, 5000)
        token_scores, seq_index = _null_scores(scheme, detector.key.config, lengths, rng)
        log_p.append(test(token_scores, seq_index, lengths.size)[1])
    log_p = np.concatenate(log_p)
    for alpha in (0.1, 0.01, 0.001):
        rate = float((log_p <= math.log(alpha)).mean())
        assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / log_p.size), (alpha, rate)
        assert rate >= alpha / 3, (alpha, rate)  # not vacuous: the test does reach its level


@pytest.mark.parametrize("scheme", ["majormark", "majormark+"])
def test_presence_false_positive_rate_on_10000_unwatermarked_texts_is_at_most_alpha(scheme):
    sequences = _zipf_sequences(10_000, 200, seed=40 + len(scheme))
    p_values = []
    for k in range(10):
        key = create_key(scheme, {"bits": 32}, secret=bytes([k + 1]) * 32)
        p_values += [r.p_value for r in create_detector(key).presence_batch(sequences[k * 1000 : (k + 1) * 1000])]
    for alpha in (0.01, 0.001):
        rate = sum(p <= alpha for p in p_values) / len(p_values)
        assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / len(p_values)), (alpha, rate)
    assert sum(p <= 0.1 for p in p_values) / len(p_values) >= 0.03  # small p-values do occur


def _marked_scores(scheme, config, lengths, rng, lift):
    """Counts of watermarked sequences: under the payload's salt, a token lands in the preferred
    shards with probability share + lift * (1 - share); the other salts stay uniform."""
    token_scores, seq_index = _null_scores(scheme, config, lengths, rng)
    scores = token_scores.numpy().copy()
    payloads = []
    start = 0
    for length in lengths.tolist():
        rows = slice(start, start + length)
        payload = int(rng.integers(0, config.capacity))
        payloads.append(payload)
        if scheme == "majormark":
            bits = config.codeword_bits(payload)
            lam = 1 if 2 * sum(bits) >= len(bits) else 0
            preferred = [i for i, bit in enumerate(bits) if bit == lam]
            others = [i for i, bit in enumerate(bits) if bit != lam]
            green = rng.random(length) < len(preferred) / len(bits) + lift * (1 - len(preferred) / len(bits))
            scores[rows, lam] = np.where(green, rng.choice(preferred, length), rng.choice(others, length))
        else:
            candidates = block_candidates(config.block_size)
            for j, block in enumerate(config.blocks(payload)):
                lam = 1 if 2 * sum(block) >= len(block) else 0
                count = sum(bit == lam for bit in block)
                column = 1 + candidates.index((lam, count))
                at = np.flatnonzero(scores[rows, 0] == j) + start
                preferred = [i for i, bit in enumerate(block) if bit == lam]
                others = [i for i, bit in enumerate(block) if bit != lam]
                share = count / len(block)
                green = rng.random(at.size) < share + lift * (1 - share)
                scores[at, column] = np.where(green, rng.choice(preferred, at.size), rng.choice(others, at.size))
        start += length
    return torch.from_numpy(scores), seq_index


@pytest.mark.parametrize("scheme,lift", [("majormark", 0.5), ("majormark+", 0.5)])
def test_presence_detects_more_watermarked_texts_than_the_union_bound(scheme, lift):
    detector = create_detector(create_key(scheme, {"bits": 32}, secret=SECRET))
    test = detector._chi_square_log_p if scheme == "majormark" else detector._excess_log_p
    rng = np.random.default_rng(3)
    lengths = np.full(200, 190)
    token_scores, seq_index = _marked_scores(scheme, detector.key.config, lengths, rng, lift)
    union = np.array([e.log_p for e in detector._aggregate_scores(token_scores, seq_index, lengths.size)])
    presence = np.minimum(0.0, math.log(2) + np.minimum(test(token_scores, seq_index, lengths.size)[1], union))
    # 200 texts of 190 scored tokens; measured on this seed: majormark 0.34 -> 0.455, majormark+
    # 0.16 -> 0.325 at alpha 1e-3
    threshold = math.log(1e-3)
    assert (presence <= threshold).mean() >= (union <= threshold).mean() + 0.08
    assert np.all(presence <= union + math.log(2) + 1e-12)  # never worse than the union bound's factor 2


@pytest.mark.parametrize("scheme", ["majormark", "majormark+"])
def test_presence_of_a_text_without_scored_tokens_is_p_one_and_prompts_must_match(scheme):
    detector = create_detector(create_key(scheme, secret=SECRET))
    (presence,) = detector.presence_batch([[5, 6]])
    assert (presence.p_value, presence.num_scored_tokens, presence.is_watermarked) == (1.0, 0, False)
    assert presence.to_dict()["scheme"] == scheme
    with pytest.raises(ParameterError, match="got 2 prompts for 1 sequences"):
        detector.presence_batch([[1, 2, 3]], prompt_ids=[[1], [2]])
