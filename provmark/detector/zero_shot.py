"""Zero-shot attribution: is a text consistent with having been sampled from model A?

Radvand et al., "Zero-Shot Statistical Tests for LLM-Generated Text Detection using Finite Sample
Concentration Inequalities" (arXiv 2501.02406; notes in ../shared/research/blackbox_zeroshot.md,
part B). Along a text y_1..y_N, with q_n = A's *sampling* distribution at step n (the model's
next-token distribution after the temperature, top-k and top-p of the generation setting, i.e.
what A actually drew from), every scored token gives

* its surprisal ``-log q_n(y_n)``,
* the entropy ``H_n = -sum_v q_n(v) log q_n(v)``,
* the conditional variance ``Var_n = sum_v q_n(v) (log q_n(v))^2 - H_n^2`` of the surprisal,
* the largest surprisal ``c_n`` any token in q_n's support could have.

If A wrote the text, ``D_n = -log q_n(y_n) - H_n`` has mean 0 given the past, so ``S_N = sum D_n``
is a martingale whose predictable variance is ``V_N = sum Var_n`` (notes B3): log-perplexity
concentrates on the mean entropy. Human text and other models' text sit at ``S_N > 0`` (A finds
them more surprising than its own samples); text that is more predictable than A's samples
(greedy or low-temperature output scored at temperature 1) sits at ``S_N < 0``.

Two tests, each with a p-value:

(a) **"written by A"** (two-sided; null: the tokens were drawn from q_n). ``z = S_N / sqrt(V_N)``.
    ``method="normal"`` (default): the martingale central limit theorem, p = 2 Phi(-|z|) (the
    notes' "martingale-CLT z-score", B3); it is asymptotic in N and tested for calibration at
    alpha 0.01 and 0.001 over 2,000 sampled texts (tests/test_zero_shot.py).
    ``method="bennett"``: a finite-sample bound that never under-states p. Bennett's inequality
    per step (``D_n <= c_n - H_n`` above, ``-D_n <= H_n`` below, both known before the token is
    drawn) makes ``exp(lam S_n - sum_n Var_n psi(lam b_n) / b_n^2)``, psi(u) = e^u - 1 - u, a
    non-negative supermartingale (the Freedman/Bennett construction); a uniform mixture over
    the fixed grid lam = 2^0 .. 2^-19 is one too, and Ville's inequality turns it into a
    p-value, doubled for two sides. It is conservative by design (the notes' worst-case
    Azuma bound, B3, is far looser still).
(b) **"not human"** (one-sided; null: a person wrote it). Neither bound applies here: a writer's
    next-token distribution, hence the mean and variance of D_n under the null, is unknown.
    The p-value is therefore conformal, as the paper's black-box experiments calibrate on human
    text (notes B4/B5): the rank of the text's z among the z of the committed human reference
    texts (``HumanReference``, Debian Administrator's Handbook prose) cut to the same number of
    tokens, ``p = (1 + #{human z <= z}) / (1 + m)``; lower z (more predictable under A) is the
    evidence. It is exact when the text and the references are exchangeable, so it is only as
    good as the references match the text's genre; its floor is 1/(1 + m).

A token outside q_n's support (possible with top-k/top-p) has infinite surprisal: A could not
have sampled it, so test (a) rejects with p = 0 and the result counts such tokens.

Scoring conditions on the generation context when it is known (``prompt``, through
``models.format_prompts``: the chat template when the tokenizer has one); otherwise on the
tokenizer's BOS token (EOS when it has none). Long texts are scored in windows of
``max_context`` tokens that overlap by half, so a token past the first window sees at least
half a window of context (A's distribution given a truncated past: say so when texts exceed it).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from scipy.special import log_ndtr

from provmark.errors import InvalidTextError, ParameterError

__all__ = [
    "HUMAN_DATA_PATH",
    "AttributionResult",
    "HumanReference",
    "SamplingSettings",
    "TokenStats",
    "ZeroShotResult",
    "ZeroShotScorer",
    "attribute",
    "bennett_log_p_value",
    "load_human_texts",
    "normal_log_p_value",
]

HUMAN_DATA_PATH = Path(__file__).parent / "zero_shot_data" / "handbook.jsonl"
"""The committed human reference texts (see zero_shot_data/README.md for source and licence)."""

DEFAULT_ALPHA = 0.01
HUMAN_TOKENS = 512
"""Tokens of each human reference text that test (b) scores (longer texts are cut to it)."""
ZERO_SHOT_VERSION = "zero-shot-v1"
"""Changes whenever the statistics change (it is part of the human-reference cache key)."""
_STAT_NAMES = ("surprisal", "entropy", "variance", "max_surprisal")
_LAMBDAS = 2.0 ** -np.arange(20)
_LN10 = math.log(10.0)


@dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    """The generation setting whose distribution the text is tested against (transformers' order:
    temperature, then top-k, then top-p)."""

    temperature: float = 1.0
    """Softmax temperature, > 0."""
    top_k: int = 0
    """Keep the k most likely ids; 0 keeps all."""
    top_p: float = 1.0
    """Keep the smallest set of most likely ids holding this mass (nucleus); 1 keeps all."""

    def __post_init__(self):
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ParameterError(f"temperature must be a number > 0, got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ParameterError(f"top_k must be an integer >= 0 (0 keeps every id), got {self.top_k!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ParameterError(f"top_p must lie in (0, 1] (1 keeps every id), got {self.top_p!r}")

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """float (P, V) log q of the sampling distribution, -inf outside its support, from raw
        logits (P, V); the same masks as transformers' TopK/TopP warpers."""
        scores = logits.double() / float(self.temperature)
        if self.top_k:
            kth = torch.topk(scores, min(self.top_k, scores.shape[-1]), dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1:
            ordered, order = torch.sort(scores, descending=False, dim=-1)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            remove = cumulative <= (1 - self.top_p)
            remove[..., -1:] = False  # the most likely id always stays
            scores = scores.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
        return torch.log_softmax(scores, dim=-1)


@dataclass(frozen=True)
class TokenStats:
    """Per-token statistics of one text under q (float64 arrays of length ``num_tokens``)."""

    surprisal: np.ndarray
    """-log q_n(y_n); inf for a token outside q_n's support."""
    entropy: np.ndarray
    """H_n, the entropy of q_n."""
    variance: np.ndarray
    """Var_n, the variance of -log q_n(Y) for Y ~ q_n."""
    max_surprisal: np.ndarray
    """c_n, the largest finite -log q_n(v) over q_n's support."""

    @property
    def num_tokens(self) -> int:
        return len(self.surprisal)

    def prefix(self, n: int) -> TokenStats:
        """The statistics of the first ``n`` tokens (scoring is causal, so they are those of the
        text cut to ``n`` tokens)."""
        return TokenStats(self.surprisal[:n], self.entropy[:n], self.variance[:n], self.max_surprisal[:n])

    @cached_property
    def z_score(self) -> float:
        """S_N / sqrt(V_N); +inf when a token lies outside the support; 0 for a text whose every
        step was deterministic."""
        total = float(np.sum(self.surprisal - self.entropy))
        variance = float(np.sum(self.variance))
        if math.isinf(total):
            return math.inf
        return total / math.sqrt(variance) if variance > 0 else 0.0


def normal_log_p_value(z: float) -> float:
    """Natural log of the two-sided normal p-value 2 Phi(-|z|) (martingale CLT)."""
    if math.isinf(z):
        return -math.inf
    return min(0.0, math.log(2.0) + float(log_ndtr(-abs(z))))


def _bennett_log_e(lam: np.ndarray, deviations: float, variance: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """log of the Bennett supermartingale exp(lam S - sum_n Var_n psi(lam b_n) / b_n^2) at each lam
    (steps with Var_n = 0 are deterministic and add nothing)."""
    keep = variance > 0
    variance, bounds = variance[keep], np.maximum(bounds[keep], 1e-12)
    u = np.outer(lam, bounds)  # (L, N)
    with np.errstate(over="ignore"):
        penalty = ((np.expm1(u) - u) / bounds**2) @ variance  # inf where lam * b_n overflows: that lam is useless
    return lam * deviations - penalty


def bennett_log_p_value(stats: TokenStats) -> float:
    """Natural log of the two-sided finite-sample p-value of test (a) (see the module doc): twice
    the smaller of the two tails' Ville p-values, each 1 / (mixture over 20 fixed lambdas)."""
    if not np.all(np.isfinite(stats.surprisal)):
        return -math.inf
    total = float(np.sum(stats.surprisal - stats.entropy))
    upper = _bennett_log_e(_LAMBDAS, total, stats.variance, np.maximum(stats.max_surprisal - stats.entropy, 0.0))
    lower = _bennett_log_e(_LAMBDAS, -total, stats.variance, stats.entropy)
    log_mix = max(float(np.logaddexp.reduce(side)) - math.log(len(_LAMBDAS)) for side in (upper, lower))
    return min(0.0, math.log(2.0) - log_mix)


@dataclass(frozen=True, kw_only=True)
class ZeroShotResult:
    """Both tests on one text under one model. ``log_perplexity`` (L) and ``entropy`` (H) are
    nats per token under the sampling distribution; ``z_score`` = S_N / sqrt(V_N) (> 0: less
    predictable than A's samples)."""

    model: str
    num_tokens: int
    log_perplexity: float
    entropy: float
    z_score: float
    method: str
    """How test (a)'s p-value was computed: "normal" or "bennett"."""
    p_value_model: float
    """Test (a): probability, were the text A's sample, of a deviation this large either way."""
    log10_p_value_model: float
    consistent_with_model: bool
    """Test (a) does not reject at ``alpha``."""
    p_value_human: float | None
    """Test (b): conformal p-value against the human references; None without references."""
    not_human: bool | None
    """Test (b) rejects "a person wrote it" at ``alpha``; None without references."""
    num_human_references: int
    alpha: float
    num_outside_support: int
    """Tokens A could not have sampled under ``sampling``."""
    prompt_scored: bool
    """Whether the text was scored in its generation context (the prompt)."""
    sampling: SamplingSettings
    num_truncated_tokens: int = 0
    """Tokens scored with less context than the text had (longer than ``max_context``)."""

    def to_dict(self) -> dict:
        """JSON-ready dict of every field (infinite z as the string "inf")."""
        data = asdict(self)
        if math.isinf(self.z_score):
            data["z_score"] = "inf"
        if math.isinf(self.log10_p_value_model):
            data["log10_p_value_model"] = "-inf"
        return data


@dataclass(frozen=True, kw_only=True)
class AttributionResult:
    """Attribution among candidate models: the winner is the candidate under which test (a)'s
    p-value is largest (|z| smallest: the text's log-perplexity closest to that model's
    entropy, the notes' test (i)), and test (a) is the winner's. If some candidate wrote the
    text, the winner's test rejects with probability at most alpha (the largest of the p-values
    is at least that candidate's), so no multiplicity correction is needed."""

    winner: str
    consistent: bool
    """The winner's test (a) does not reject: the text is consistent with some candidate."""
    candidates: tuple[ZeroShotResult, ...]
    log_likelihood_per_char: tuple[float, ...]
    """Each candidate's raw log-likelihood of the text per character (comparable across
    tokenizers; the paper's argmax-likelihood rule), in ``candidates`` order."""

    def to_dict(self) -> dict:
        return {"winner": self.winner, "consistent": self.consistent,
                "candidates": [c.to_dict() for c in self.candidates],
                "log_likelihood_per_char": list(self.log_likelihood_per_char)}


class HumanReference:
    """Test (b)'s null sample: the token statistics of human texts under one scorer.

    ``z_at(n)`` gives the z of every reference text cut to its first n tokens (those at least n
    long), from running sums, so one scoring pass serves every length."""

    def __init__(self, stats: Sequence[TokenStats]):
        if not stats:
            raise ParameterError("a human reference needs at least one text")
        self._lengths = np.array([s.num_tokens for s in stats])
        width = int(self._lengths.max())
        pad = lambda a: np.pad(np.cumsum(a), (0, width - len(a)), constant_values=np.nan)
        self._deviation = np.stack([pad(s.surprisal - s.entropy) for s in stats])
        self._variance = np.stack([pad(s.variance) for s in stats])

    @property
    def max_tokens(self) -> int:
        return int(self._lengths.max())

    def z_at(self, n: int) -> np.ndarray:
        """z of the references that have at least ``n`` tokens, each cut to n tokens."""
        rows = self._lengths >= n
        deviation, variance = self._deviation[rows, n - 1], self._variance[rows, n - 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(variance > 0, deviation / np.sqrt(variance), 0.0)

    def p_value(self, stats: TokenStats, min_references: int = 20) -> tuple[float | None, int]:
        """(conformal p-value of test (b), references used): the text is cut to the longest
        length that at least ``min_references`` references reach; (None, 0) when fewer than
        ``min_references`` references exist."""
        if len(self._lengths) < min_references:
            return None, 0
        n = min(stats.num_tokens, int(np.sort(self._lengths)[::-1][min_references - 1]))
        reference = self.z_at(n)
        z = stats.prefix(n).z_score
        return (1 + int(np.sum(reference <= z))) / (1 + len(reference)), len(reference)


def load_human_texts(limit: int | None = None) -> list[str]:
    """The committed human reference texts (Debian Administrator's Handbook prose), in file order."""
    with HUMAN_DATA_PATH.open(encoding="utf-8") as stream:
        texts = [json.loads(line)["text"] for line in stream if line.strip()]
    return texts[:limit]


class ZeroShotScorer:
    """Scores texts under one causal LM and generation setting (one forward pass per batch).

    Args:
        model, tokenizer: a transformers causal LM and its tokenizer (``models.load_model``).
        sampling: the generation setting the text is tested against.
        name: how results name the model.
        max_context: window length for long texts (default: the model's position limit, at most 2048).
        batch_tokens: most padded tokens per forward pass (bounds memory: logits are
            batch_tokens x vocabulary floats).
    """

    def __init__(self, model, tokenizer, *, sampling: SamplingSettings = SamplingSettings(), name: str = "model",
                 max_context: int | None = None, batch_tokens: int = 2048):
        if not isinstance(sampling, SamplingSettings):
            raise ParameterError(f"sampling must be a SamplingSettings, got {type(sampling).__name__}")
        limit = getattr(model.config, "max_position_embeddings", None) or 2048
        self.max_context = min(limit, 2048) if max_context is None else max_context
        if isinstance(self.max_context, bool) or not isinstance(self.max_context, int) or self.max_context < 4:
            raise ParameterError(f"max_context must be an integer >= 4, got {max_context!r}")
        if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) or batch_tokens < 1:
            raise ParameterError(f"batch_tokens must be a positive integer, got {batch_tokens!r}")
        self.model, self.tokenizer, self.sampling, self.name = model, tokenizer, sampling, name
        self.batch_tokens = batch_tokens
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise ParameterError("the tokenizer has neither a BOS nor an EOS token to start an unprompted text")
        self._start = [int(start)]
        self._human: tuple[int | None, HumanReference] | None = None

    # -- token ids -------------------------------------------------------------------------------

    def encode(self, texts: Sequence[str], prompts: Sequence[str | None] | None = None, *,
               chat: bool | None = None) -> tuple[list[list[int]], list[list[int]]]:
        """(context ids, text ids) per text: the prompt as ``hook.generate`` feeds it (chat
        template when the tokenizer has one, unless ``chat`` says otherwise), or the start token."""
        from provmark.watermark.models import format_prompts

        if isinstance(texts, str):
            raise ParameterError("texts must be a list of strings")
        prompts = [None] * len(texts) if prompts is None else list(prompts)
        if len(prompts) != len(texts):
            raise ParameterError(f"got {len(prompts)} prompts for {len(texts)} texts; give one per text (None for none)")
        contexts, ids = [], []
        for text, prompt in zip(texts, prompts):
            if not isinstance(text, str) or not text.strip():
                raise InvalidTextError("text is empty; give the text to score")
            ids.append(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if prompt is None:
                contexts.append(list(self._start))
                continue
            if not isinstance(prompt, str) or not prompt.strip():
                raise InvalidTextError("a prompt is empty; give the prompt the text answered, or None")
            (formatted,) = format_prompts(self.tokenizer, [prompt], chat=chat)
            contexts.append(self.tokenizer(formatted, add_special_tokens=formatted == prompt)["input_ids"])
        return contexts, ids

    def _windows(self, context: list[int], ids: list[int]) -> list[tuple[int, int, int]]:
        """(begin, first scored, end) positions in context + ids of the windows covering ``ids``:
        one when both fit in ``max_context``; otherwise each later window scores half a window
        and sees at least half a window of context before it."""
        total, half = len(context) + len(ids), self.max_context // 2
        windows, position = [], len(context)
        while position < total:
            begin = max(0, position - half) if position + half > self.max_context else 0
            end = min(total, begin + self.max_context)
            windows.append((begin, position, end))
            position = end
        return windows

    def _truncated(self, context: list[int], ids: list[int]) -> int:
        """Tokens scored with less than the whole text and context before them."""
        return sum(end - first for begin, first, end in self._windows(context, ids) if begin > 0)

    def token_stats_ids(self, ids: Sequence[Sequence[int]], contexts: Sequence[Sequence[int]] | None = None
                        ) -> list[TokenStats]:
        """Per-token statistics of id sequences under ``self.sampling``, each scored after its
        context ids (default: the start token); batched by ``batch_tokens``."""
        return self.token_stats_multi(ids, contexts, [self.sampling])[0]

    def token_stats_multi(self, ids: Sequence[Sequence[int]], contexts: Sequence[Sequence[int]] | None,
                          samplings: Sequence[SamplingSettings]) -> list[list[TokenStats]]:
        """``token_stats_ids`` under each of ``samplings`` from one forward pass (the settings
        only change how the logits are read): one list of statistics per setting."""
        contexts = [self._start] * len(ids) if contexts is None else contexts
        if len(contexts) != len(ids):
            raise ParameterError(f"got {len(contexts)} contexts for {len(ids)} texts")
        jobs = []  # (text index, window ids, first scored position, count)
        for t, (context, row) in enumerate(zip(contexts, ids)):
            if len(row) == 0:
                raise InvalidTextError("a text has no tokens; give the text to score")
            if len(context) == 0:
                raise ParameterError("a context is empty; give at least the start token")
            full = [int(i) for i in context] + [int(i) for i in row]
            jobs += [(t, full[b:e], f - b, e - f) for b, f, e in self._windows(context, row)]
        parts: list[list[tuple[int, list]]] = [[] for _ in ids]
        order = sorted(range(len(jobs)), key=lambda j: len(jobs[j][1]))
        batch: list[int] = []
        for j in order + [None]:
            if j is not None and (len(batch) + 1) * len(jobs[j][1]) <= max(self.batch_tokens, len(jobs[j][1])):
                batch.append(j)
                continue
            if batch:
                for k, stats in zip(batch, self._forward([jobs[k] for k in batch], samplings)):
                    parts[jobs[k][0]].append((k, stats))
            batch = [j] if j is not None else []
        # Batches run shortest window first; a text's windows are put back in text order.
        ordered = [[stats for _, stats in sorted(p, key=lambda x: x[0])] for p in parts]
        return [[TokenStats(*(np.concatenate(column) for column in zip(*(w[m] for w in windows))))
                 for windows in ordered] for m in range(len(samplings))]

    def _forward(self, jobs, samplings) -> list[list[tuple[np.ndarray, ...]]]:
        """Per job, per sampling setting: the statistics columns of its scored tokens."""
        width = max(len(job[1]) for job in jobs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = next(self.model.parameters()).device
        input_ids = torch.full((len(jobs), width), pad, dtype=torch.int64)
        mask = torch.zeros((len(jobs), width), dtype=torch.int64)
        for r, (_, window, _, _) in enumerate(jobs):  # right padding: positions count from 0 as usual
            input_ids[r, : len(window)] = torch.tensor(window)
            mask[r, : len(window)] = 1
        with torch.no_grad():
            logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        # The logits at position p - 1 predict the token at p; every row's scored positions go
        # through the statistics together (one pass per chunk, not per text).
        rows = torch.cat([logits[r, first - 1 : first - 1 + count] for r, (_, _, first, count) in enumerate(jobs)])
        targets = torch.cat([input_ids[r, first : first + count] for r, (_, _, first, count) in enumerate(jobs)])
        per_setting = [self._stats(rows, targets.to(rows.device), sampling) for sampling in samplings]
        bounds = np.cumsum([0] + [job[3] for job in jobs])
        return [[tuple(column[a:b] for column in columns) for columns in per_setting]
                for a, b in itertools.pairwise(bounds)]

    def _stats(self, logits: torch.Tensor, targets: torch.Tensor, sampling: SamplingSettings | None = None
               ) -> tuple[np.ndarray, ...]:
        """(surprisal, entropy, variance, max surprisal) float64 (P,) of the sampling distribution
        (``self.sampling`` unless given)
        from raw logits (P, V) and the tokens drawn (P,), in chunks of about 4M float64 values."""
        chunk = max(1, (1 << 22) // logits.shape[-1])
        columns = [[], [], [], []]
        for s in range(0, logits.shape[0], chunk):
            logq = (sampling or self.sampling).log_probs(logits[s : s + chunk])
            q = logq.exp()
            finite = torch.isfinite(logq)
            safe = torch.where(finite, logq, torch.zeros_like(logq))
            entropy = -(q * safe).sum(-1)
            second = (q * safe * safe).sum(-1)
            variance = (second - entropy * entropy).clamp(min=0.0)
            surprisal = -logq.gather(-1, targets[s : s + chunk, None]).squeeze(-1)
            max_surprisal = -torch.where(finite, logq, torch.full_like(logq, math.inf)).min(-1).values
            for column, value in zip(columns, (surprisal, entropy, variance, max_surprisal)):
                column.append(value.cpu().numpy())
        return tuple(np.concatenate(c).astype(np.float64) for c in columns)

    # -- texts and tests -------------------------------------------------------------------------

    def human_reference(self, limit: int | None = None, *, cache: bool = True) -> HumanReference:
        """The first ``limit`` committed human texts (all when None) scored under this scorer,
        each cut to ``HUMAN_TOKENS`` tokens. Kept per scorer and, with ``cache``, in
        ``models.cache_dir()/zero_shot`` under a digest of the model's config and weights, the
        sampling setting, the data file and ``limit`` (scoring 200 texts costs minutes on a CPU)."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ParameterError(f"limit must be a positive integer or None, got {limit!r}")
        if self._human is not None and self._human[0] == limit:
            return self._human[1]
        path = self._reference_path(limit) if cache else None
        if path is not None and path.is_file():
            with np.load(path) as data:
                bounds = np.cumsum(np.concatenate([[0], data["lengths"]]))
                stats = [TokenStats(*(data[name][a:b] for name in _STAT_NAMES)) for a, b in itertools.pairwise(bounds)]
        else:
            ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"][:HUMAN_TOKENS] for t in load_human_texts(limit)]
            stats = self.token_stats_ids(ids)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                scratch = path.with_suffix(f".{os.getpid()}.npz")
                np.savez(scratch, lengths=np.array([s.num_tokens for s in stats]),
                         **{name: np.concatenate([getattr(s, name) for s in stats]) for name in _STAT_NAMES})
                scratch.replace(path)
        self._human = (limit, HumanReference(stats))
        return self._human[1]

    def _reference_path(self, limit: int | None) -> Path:
        from provmark.watermark.models import cache_dir

        digest = hashlib.sha256()
        digest.update(self.model.config.to_json_string().encode())
        with torch.no_grad():
            for parameter in (next(self.model.parameters()), list(self.model.parameters())[-1]):
                digest.update(parameter.detach().float().cpu().numpy().tobytes()[: 1 << 20])
        digest.update(repr((self.sampling, limit, HUMAN_TOKENS, self._start, ZERO_SHOT_VERSION)).encode())
        digest.update(HUMAN_DATA_PATH.read_bytes())
        return cache_dir() / "zero_shot" / f"human-{digest.hexdigest()[:24]}.npz"

    def test_stats(self, stats: TokenStats, *, alpha: float = DEFAULT_ALPHA, method: str = "normal",
                   human: HumanReference | None = None, prompt_scored: bool = False,
                   num_truncated_tokens: int = 0) -> ZeroShotResult:
        """Tests (a) and (b) on precomputed statistics (see the module doc)."""
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise ParameterError(f"alpha must lie in (0, 1), got {alpha!r}")
        if method not in ("normal", "bennett"):
            raise ParameterError(f"method must be 'normal' or 'bennett', got {method!r}")
        if stats.num_tokens == 0:
            raise InvalidTextError("a text has no tokens; give the text to score")
        log_p = normal_log_p_value(stats.z_score) if method == "normal" else bennett_log_p_value(stats)
        p_human, references = human.p_value(stats) if human is not None else (None, 0)
        return ZeroShotResult(
            model=self.name,
            num_tokens=stats.num_tokens,
            log_perplexity=float(np.mean(stats.surprisal)),
            entropy=float(np.mean(stats.entropy)),
            z_score=stats.z_score,
            method=method,
            p_value_model=math.exp(log_p),
            log10_p_value_model=log_p / _LN10,
            consistent_with_model=math.exp(log_p) >= alpha,
            p_value_human=p_human,
            not_human=None if p_human is None else p_human <= alpha,
            num_human_references=references,
            alpha=float(alpha),
            num_outside_support=int(np.sum(np.isinf(stats.surprisal))),
            prompt_scored=prompt_scored,
            sampling=self.sampling,
            num_truncated_tokens=num_truncated_tokens,
        )

    def test(self, texts: Sequence[str], prompts: Sequence[str | None] | None = None, *, chat: bool | None = None,
             alpha: float = DEFAULT_ALPHA, method: str = "normal", human: bool = True,
             human_limit: int | None = None, min_tokens: int = 10) -> list[ZeroShotResult]:
        """Tests (a) and (b) on each text (scored after its prompt when given). ``human=False``
        skips test (b) and the reference scoring it needs; ``human_limit`` uses only the first
        that many references (faster, but test (b)'s p-value floor is 1 / (1 + limit)). Raises ``InvalidTextError`` for an
        empty text or one with fewer than ``min_tokens`` tokens."""
        if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 1:
            raise ParameterError(f"min_tokens must be a positive integer, got {min_tokens!r}")
        contexts, ids = self.encode(texts, prompts, chat=chat)
        for row in ids:
            if len(row) < min_tokens:
                raise InvalidTextError(f"text too short to score: {len(row)} tokens, need at least {min_tokens}")
        reference = self.human_reference(human_limit) if human else None
        results = []
        for context, row, stats in zip(contexts, ids, self.token_stats_ids(ids, contexts)):
            truncated = self._truncated(context, row)
            results.append(self.test_stats(stats, alpha=alpha, method=method, human=reference,
                                           prompt_scored=context != self._start, num_truncated_tokens=truncated))
        return results

    def log_likelihood(self, text: str) -> float:
        """Raw model log-likelihood of the text (temperature 1, no truncation), nats, after the
        start token."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        raw = ZeroShotScorer(self.model, self.tokenizer, name=self.name, max_context=self.max_context,
                             batch_tokens=self.batch_tokens)
        return -float(np.sum(raw.token_stats_ids([ids])[0].surprisal))


def attribute(scorers: Sequence[ZeroShotScorer], text: str, prompt: str | None = None, *, chat: bool | None = None,
              alpha: float = DEFAULT_ALPHA, method: str = "normal", human: bool = True,
              human_limit: int | None = None, min_tokens: int = 10) -> AttributionResult:
    """Which candidate model is most consistent with ``text`` (see ``AttributionResult``); every
    candidate's tests are in the result. One candidate is allowed (then it is test (a) and (b))."""
    if not scorers:
        raise ParameterError("give at least one candidate model")
    results = [s.test([text], None if prompt is None else [prompt], chat=chat, alpha=alpha, method=method,
                      human=human, human_limit=human_limit, min_tokens=min_tokens)[0] for s in scorers]
    per_char = [s.log_likelihood(text) / max(len(text), 1) for s in scorers]
    best = max(range(len(results)), key=lambda i: (results[i].p_value_model, -abs(results[i].z_score), per_char[i]))
    return AttributionResult(winner=results[best].model, consistent=results[best].consistent_with_model,
                             candidates=tuple(results), log_likelihood_per_char=tuple(per_char))
