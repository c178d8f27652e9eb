"""Runs a suite: every scheme's texts under every attack, detected with the scheme's key.

For each prompt the model writes one unwatermarked text (shared by all schemes) and, per
generation-time scheme, one watermarked text with its own key and, for multi-bit schemes, a random
payload; the synonym scheme watermarks the unwatermarked texts afterwards
(``SynonymEmbedder``). Every text is exactly ``suite.tokens`` new tokens (EOS suppressed).

Each (attack, strength) is applied to the watermarked texts of every scheme and, once, to the
unwatermarked texts; both are then detected with each scheme's key, so the detection rate and the
empirical false-positive rate of a cell come from texts attacked the same way. An attack's choices
come from a ``random.Random`` seeded by (seed, scheme, attack, strength), so a seed replays a run
(the LM attacks on the same machine). Detection re-tokenises the (attacked) text, unattacked
text included, as a verifier would.

Human-written texts (``human.human_texts``, each cut to ``suite.tokens`` tokens) are detected
unattacked with every scheme's key: the false-positive rate on text no model wrote (kind "human",
attack "none").

Copy-paste pastes text i into a host made of the other prompts' unwatermarked texts (joined, and
repeated when they are too few for the share), cut to the share by ``attacks.copy_paste``.
Balance- and Vanilla-Marking detect pasted text with ``detector.locate`` (windows of
``suite.tokens`` tokens, a quarter apart), whose p-value is corrected for the windows searched; the
other schemes detect the whole text. Balance's proxy is a ``cache.WindowCache``: each distinct
10-id window of the unattacked, truncated and pasted texts is read once.

With ``suite.zero_shot_references``, a "zero-shot" row stands beside the schemes: no key, the
zero-shot "not human" test (test (b) of ``detector.zero_shot``: the text's z under the model at the
suite's temperature, ranked among the z of that many committed Debian Handbook texts, conformal)
on the model's own unwatermarked texts under every attack (the same attacked texts the schemes'
controls are), and on the human texts unattacked (its false-positive rate there). Its
``consistent_with_model`` column holds test (a) ("written by the model", two-sided) at alpha 0.01.
Texts are scored alone (the references have no prompt, so that the ranks compare like with like).

One text is explained token by token (``detector.explain``) for the report's HTML page: the first
prompt's text of the first multi-bit scheme that watermarks during generation, after the suite's
first attack at its middle strength (copy-paste excepted: it is located, not explained).

A text is detected at alpha when its calibrated p-value is at most alpha (compared in log10, so
that p-values below float range count).
"""

from __future__ import annotations

import functools
import hashlib
import math
import platform
import random
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from provmark.attacks import STRENGTHS, apply, paraphrase_batch
from provmark.attacks.base import words_of
from provmark.detector.explain import Explanation
from provmark.detector.zero_shot import SamplingSettings, ZeroShotResult, ZeroShotScorer
from provmark.errors import InvalidTextError
from provmark.evaluation.cache import WindowCache
from provmark.evaluation.human import human_texts
from provmark.evaluation.prompts import generate_batched, load_prompts
from provmark.evaluation.quality import bit_accuracy, quality
from provmark.evaluation.suites import ZERO_SHOT, SchemeSpec, Suite
from provmark.front import Watermark
from provmark.watermark.hook import generate
from provmark.watermark.keys import create_key
from provmark.watermark.models import Models
from provmark.watermark.schemes import get_scheme

__all__ = ["ALPHAS", "FIELDS", "SUMMARY_FIELDS", "Evaluation", "run_suite", "summarise"]

ALPHAS = (1e-2, 1e-3)
"""Significance levels every detection is judged at."""
LOCATE_STRIDES = 4
"""``locate`` searches windows of the suite's length at strides of a quarter window."""
KEPT_WINDOWS = ("none", "truncate", "copy_paste")
"""Conditions whose proxy windows the ``WindowCache`` keeps: the unattacked texts' windows are
what truncated and pasted texts are made of, and a host's seams recur at every copy-paste
strength and in both the watermarked and the unwatermarked text pasted into it."""
UNWATERMARKED = "unwatermarked"
"""The ``kind`` of the control texts, and the label of their quality row in the summary."""
HUMAN = "human"
"""The ``kind`` of the human-written texts."""
GENERATED = "generated"
"""The ``kind`` of the model's own texts in the zero-shot row (what it detects)."""
FIELDS = ["suite", "scheme", "attack", "strength", "prompt_index", "kind", "num_tokens", "num_scored_tokens",
          "log10_p_value", *(f"detected_{a:g}" for a in ALPHAS), "bit_accuracy", "exact_match", "perplexity",
          "top5_hit_rate", "z_score", "consistent_with_model"]
"""Columns of the per-text CSV: one row per (scheme, attack, strength, prompt, kind), kind being
"watermarked", "unwatermarked" (the control detected with the same key) or "human" (unattacked only);
the zero-shot row has "generated" (the model's unwatermarked texts) and "human". ``num_tokens`` counts
the text's tokens as detection read them (words, for the synonym scheme). Multi-bit columns are
empty for zero-bit schemes and control texts; quality columns are filled for unattacked texts;
``z_score`` and ``consistent_with_model`` (test (a) at alpha 0.01) only for the zero-shot row."""
SUMMARY_FIELDS = ["suite", "scheme", "attack", "strength", "n", *(f"detection_rate_{a:g}" for a in ALPHAS),
                  *(f"fpr_{a:g}" for a in ALPHAS), "n_human", *(f"fpr_human_{a:g}" for a in ALPHAS),
                  "median_log10_p_value", "bit_accuracy", "exact_match",
                  "perplexity", "top5_hit_rate", "median_z_score", "consistent_rate"]
"""Columns of the per-cell CSV: means over the cell's watermarked texts (the zero-shot row: the
model's texts) (``fpr_*`` over its control texts, ``fpr_human_*`` over the human texts, which only
the unattacked cell has); ``median_z_score`` and ``consistent_rate`` for the zero-shot row."""


@dataclass(frozen=True)
class Evaluation:
    """What ``run_suite`` measured."""

    suite: Suite
    seed: int
    model: str
    rows: tuple[dict, ...]
    """Per-text rows (``FIELDS``)."""
    summary: tuple[dict, ...]
    """Per-cell rows (``SUMMARY_FIELDS``), in suite order."""
    seconds: float
    machine: str
    """Platform, CPU or GPU, torch threads, Python and torch versions."""
    explanation: Explanation | None = None
    """One attacked watermarked text explained token by token (see the module doc); None when the
    suite has no multi-bit generation-time scheme."""
    explained: str = ""
    """Which text ``explanation`` is: "scheme, prompt 0, attack@strength"."""


def _secret(seed: int, label: str) -> bytes:
    return hashlib.sha256(f"provmark-eval/{seed}/{label}".encode()).digest()


def _rng(seed: int, *parts) -> random.Random:
    return random.Random(_secret(seed, "/".join(map(str, parts))))


def _machine(model) -> str:
    """One line naming where the run happened."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"
    return (f"{platform.system()} {platform.release()}, {where}, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


class _Hosts:
    """Host texts for copy-paste: text i goes into the other unwatermarked texts, joined."""

    def __init__(self, texts: Sequence[str], least_share: float):
        self.texts = list(texts)
        self.least_share = least_share

    def __call__(self, index: int, marked: str) -> str:
        need = math.ceil(len(words_of(marked)) * (1 - self.least_share) / self.least_share) + 1
        parts, words, k = [], 0, 0
        while words < need:
            k += 1
            if k % len(self.texts) == 0:  # never the text's own prompt
                continue
            text = self.texts[(index + k) % len(self.texts)]
            parts.append(text.strip())
            words += len(words_of(text))
            if k > 100 * len(self.texts):
                raise InvalidTextError("the unwatermarked texts hold too few words to host copy-paste")
        return "\n\n".join(parts)


def _attack_texts(attack: str, strength: float | None, texts: Sequence[str], hosts: _Hosts, rng: random.Random,
                 model, tokenizer) -> list[tuple[str, tuple[int, int]]]:
    """(attacked text, character span of the marked text in it) for each of ``texts``; a text
    without words stays as it is, with one warning (``warnings`` shows it once per run)."""
    if attack == "none":
        return [(t, (0, len(t))) for t in texts]
    if attack == "paraphrase":  # batched across texts: the LM is the cost
        return [(t, (0, len(t))) for t in paraphrase_batch(list(texts), strength, rng, model, tokenizer)]
    out = []
    for index, text in enumerate(texts):
        try:
            host = hosts(index, text) if attack == "copy_paste" else None
            done = apply(attack, text, strength, rng, model=model, tokenizer=tokenizer, host=host)
            out.append((done.text, done.marked_span))
        except InvalidTextError:  # a text without words: nothing to attack
            warnings.warn("a text without words was left unattacked", stacklevel=2)
            out.append((text, (0, len(text))))
    return out


class _Scheme:
    """One scheme's key, its front door (``provmark.front.Watermark``) and its watermarked texts."""

    def __init__(self, spec: SchemeSpec, seed: int, prompts: int, models: Models):
        self.spec = spec
        self.key = create_key(spec.scheme, dict(spec.params), secret=_secret(seed, spec.label))
        config = self.key.config
        payload_rng = _rng(seed, spec.label, "payloads")
        self.payloads = None
        if config.supports_payload:
            self.payloads = [payload_rng.randrange(config.capacity) for _ in range(prompts)]
        scheme = get_scheme(spec.scheme)
        loaded = models.loaded()
        self.proxy = WindowCache(loaded.model, loaded.tokenizer) if scheme.uses_proxy else None
        self.watermark = Watermark(self.key, models, proxy=self.proxy)
        self.texts: list[str] = []
        self.token_ids: list[list[int]] = []

    def detect(self, texts: Sequence[str], locate: bool, window: int):
        """(results, lengths in the units the detector reads) of ``texts``; ``locate`` searches
        windows where the scheme can."""
        watermark = self.watermark
        ids = None if watermark.scheme.reads_text else watermark.token_ids(texts)
        locate = locate and watermark.scheme.supports_locate
        results = watermark.detect(texts, token_ids=ids, locate=locate, window=window,
                                   stride=max(1, window // LOCATE_STRIDES))
        return results, watermark.lengths(texts, ids)


class _ZeroShot:
    """The zero-shot row: tests (a) and (b) of ``detector.zero_shot`` under the model at the suite's
    temperature, test (b) against ``suite.zero_shot_references`` Handbook texts."""

    def __init__(self, suite: Suite, model, tokenizer, name: str):
        self.scorer = ZeroShotScorer(model, tokenizer, sampling=SamplingSettings(temperature=suite.temperature),
                                     name=name or "model")
        self.references = suite.zero_shot_references

    def test(self, texts: Sequence[str]) -> list[ZeroShotResult]:
        return self.scorer.test(list(texts), alpha=ALPHAS[0], human_limit=self.references, min_tokens=1)


def run_suite(suite: Suite, model, tokenizer, *, seed: int = 0, prompts: Sequence[str] | None = None,
              encoder=None, model_name: str = "", progress: bool = False) -> Evaluation:
    """Run ``suite`` with ``model`` (see the module doc) and return every measurement.

    Args:
        prompts: the prompts (default: the first ``suite.prompts`` of ``prompts.txt``).
        encoder: the synonym scheme's sentence encoder (default: the packaged MiniLM, loaded only
            when the suite has the synonym scheme).
        model_name: how the report names the model.
        progress: a tqdm bar on stderr.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    prompts = load_prompts(suite.prompts) if prompts is None else list(prompts)
    conditions = suite.conditions()
    bar = tqdm(total=2 + len(suite.schemes) * (1 + len(conditions)) + len(conditions), desc="evaluating", unit="step",
               file=sys.stderr, disable=not progress)

    def step(description: str) -> None:
        bar.set_description(description)

    try:
        step("generating unwatermarked texts")
        plain = generate_batched(functools.partial(generate, model, tokenizer, key=None), prompts, None,
                                 tokens=suite.tokens, seed=seed, batch=suite.batch, temperature=suite.temperature)
        plain_texts = [g.text for g in plain]
        human = _human(tokenizer, suite)
        zero_shot = _ZeroShot(suite, model, tokenizer, model_name) if suite.zero_shot_references else None
        bar.update(1)
        schemes = []
        models = Models.of(model, tokenizer, model_name, encoder=encoder)
        for number, spec in enumerate(suite.schemes, 1):
            step(f"watermarking with {spec.label}")
            scheme = _Scheme(spec, seed, len(prompts), models)
            if scheme.watermark.scheme.generation_time:
                generations = generate_batched(scheme.watermark.embed, prompts, scheme.payloads, tokens=suite.tokens,
                                               seed=seed + 100_003 * number, batch=suite.batch,
                                               temperature=suite.temperature)
                scheme.texts = [g.text for g in generations]
                scheme.token_ids = [list(g.token_ids) for g in generations]
            else:  # a finished-text scheme watermarks the unwatermarked texts
                scheme.texts = [e.text for e in scheme.watermark.embed(texts=plain_texts)]
                scheme.token_ids = scheme.watermark.token_ids(scheme.texts)
            schemes.append(scheme)
            bar.update(1)

        step("scoring quality")
        plain_ids = [list(g.token_ids) for g in plain]
        plain_quality = _whole(quality(model, tokenizer, prompts, plain_ids, None, suite.batch))
        qualities = {s.spec.label: _whole(quality(model, tokenizer, prompts, s.token_ids, None, suite.batch))
                     for s in schemes}
        bar.update(1)

        explained_scheme = next((s for s in schemes if s.watermark.scheme.generation_time and s.payloads is not None),
                                None)
        explained_condition = _explained_condition(suite)
        explanation = None
        least_share = min(suite.strengths.get("copy_paste", STRENGTHS["copy_paste"]))
        hosts = _Hosts(plain_texts, least_share)
        rows = []
        for attack, strength in conditions:
            step(f"attacking unwatermarked texts: {_condition(attack, strength)}")
            controls = [t for t, _ in _attack_texts(attack, strength, plain_texts, hosts,
                                                    _rng(seed, UNWATERMARKED, attack, strength), model, tokenizer)]
            if zero_shot is not None:
                step(f"zero-shot under {_condition(attack, strength)}")
                for kind, texts in [(GENERATED, controls)] + ([(HUMAN, human)] if attack == "none" and human else []):
                    rows += [_zero_shot_row(suite, attack, strength, index, kind, result)
                             for index, result in enumerate(zero_shot.test(texts))]
            bar.update(1)
            for scheme in schemes:
                label = scheme.spec.label
                if scheme.proxy is not None:
                    scheme.proxy.keep = attack in KEPT_WINDOWS
                step(f"{label} under {_condition(attack, strength)}")
                marked = [t for t, _ in _attack_texts(attack, strength, scheme.texts, hosts,
                                                      _rng(seed, label, attack, strength), model, tokenizer)]
                locate = attack == "copy_paste"
                if scheme is explained_scheme and (attack, strength) == explained_condition:
                    explanation = scheme.watermark.explain(marked[0])
                kinds = [("watermarked", marked, qualities[label]), (UNWATERMARKED, controls, plain_quality)]
                if attack == "none" and human:
                    kinds.append((HUMAN, human, None))
                for kind, texts, quality_of in kinds:
                    results, counts = scheme.detect(texts, locate, suite.tokens)
                    for index, (result, count) in enumerate(zip(results, counts)):
                        rows.append(_row(suite, scheme, attack, strength, index, kind, result, count,
                                         quality_of[index] if attack == "none" and quality_of else None))
                bar.update(1)
    finally:
        bar.close()
    summary = summarise(rows, suite, plain_quality)
    explained = "" if explanation is None else (f"{explained_scheme.spec.label}, prompt 0, "
                                                f"{_condition(*explained_condition)}")
    return Evaluation(suite=suite, seed=seed, model=model_name, rows=tuple(rows), summary=tuple(summary),
                      seconds=time.perf_counter() - started, machine=_machine(model), explanation=explanation,
                      explained=explained)


def _explained_condition(suite: Suite) -> tuple[str, float | None]:
    """The first attack that is not copy-paste, at its middle strength; ("none", None) without one."""
    attack = next((a for a in suite.attacks if a != "copy_paste"), None)
    if attack is None:
        return ("none", None)
    strengths = suite.strengths[attack]
    return (attack, strengths[len(strengths) // 2])


def _human(tokenizer, suite: Suite) -> list[str]:
    """``suite.human`` human-written texts, each cut to its first ``suite.tokens`` tokens."""
    if not suite.human:
        return []
    texts = human_texts(suite.human, min_words=suite.tokens)
    if len(texts) < suite.human:
        warnings.warn(f"the human corpus holds {len(texts)} texts of {suite.tokens} words, not {suite.human}",
                      stacklevel=2)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][: suite.tokens] for t in texts]
    return [tokenizer.decode(i) for i in ids]


def _whole(scores: list[dict]) -> list[tuple[float, float]]:
    return [next(iter(s.values()), (math.nan, math.nan)) for s in scores]


def _condition(attack: str, strength: float | None) -> str:
    return attack if strength is None else f"{attack}@{strength:g}"


def _row(suite: Suite, scheme: _Scheme, attack: str, strength, index: int, kind: str, result, num_tokens: int,
         text_quality) -> dict:
    row = dict.fromkeys(FIELDS, "")
    row.update(suite=suite.name, scheme=scheme.spec.label, attack=attack, strength="" if strength is None else strength,
               prompt_index=index, kind=kind, num_tokens=num_tokens, num_scored_tokens=result.num_scored_tokens,
               log10_p_value=round(result.log10_p_value, 4))
    for alpha in ALPHAS:
        row[f"detected_{alpha:g}"] = int(result.num_scored_tokens > 0 and result.log10_p_value <= math.log10(alpha))
    if kind == "watermarked" and scheme.payloads is not None:
        truth = scheme.payloads[index]
        row.update(bit_accuracy=round(bit_accuracy(scheme.key.config, truth, result.payload), 4),
                   exact_match=int(result.payload == truth))
    if text_quality is not None:
        row.update(perplexity=round(text_quality[0], 4), top5_hit_rate=round(text_quality[1], 4))
    return row


def _zero_shot_row(suite: Suite, attack: str, strength, index: int, kind: str, result: ZeroShotResult) -> dict:
    """A zero-shot row: test (b)'s p-value as the detection, test (a)'s verdict and the z beside it."""
    row = dict.fromkeys(FIELDS, "")
    log10_p = math.log10(result.p_value_human)
    row.update(suite=suite.name, scheme=ZERO_SHOT, attack=attack, strength="" if strength is None else strength,
               prompt_index=index, kind=kind, num_tokens=result.num_tokens, num_scored_tokens=result.num_tokens,
               log10_p_value=round(log10_p, 4), consistent_with_model=int(result.consistent_with_model),
               z_score="inf" if math.isinf(result.z_score) else round(result.z_score, 4))
    for alpha in ALPHAS:
        row[f"detected_{alpha:g}"] = int(log10_p <= math.log10(alpha))
    return row


def _mean(rows: list[dict], field: str) -> float | str:
    values = [float(r[field]) for r in rows if r[field] != ""]
    return round(statistics.fmean(values), 4) if values else ""


def summarise(rows: Sequence[dict], suite: Suite, plain_quality: Sequence[tuple[float, float]] = ()) -> list[dict]:
    """Per-cell rows (``SUMMARY_FIELDS``) of per-text ``rows``, in suite order; with
    ``plain_quality`` (per prompt (perplexity, top-5 rate) of the unwatermarked texts) a last
    row labelled "unwatermarked" holds their quality alone."""
    cells: dict[tuple, dict[str, list]] = {}
    for row in rows:
        cells.setdefault((row["scheme"], row["attack"], row["strength"]), {}).setdefault(row["kind"], []).append(row)
    out = []
    for label in suite.labels():
        for attack, strength in suite.conditions():
            kinds = cells.get((label, attack, "" if strength is None else strength))
            if not kinds:
                continue
            marked = kinds.get(GENERATED if label == ZERO_SHOT else "watermarked", [])
            controls, human = (kinds.get(k, []) for k in (UNWATERMARKED, HUMAN))
            cell = dict.fromkeys(SUMMARY_FIELDS, "")
            median = round(statistics.median(r["log10_p_value"] for r in marked), 4)
            if label == ZERO_SHOT:
                z = [math.inf if r["z_score"] == "inf" else r["z_score"] for r in marked]
                cell.update(median_z_score=round(statistics.median(z), 4),
                            consistent_rate=_mean(marked, "consistent_with_model"))
            cell.update(suite=suite.name, scheme=label, attack=attack,
                        strength="" if strength is None else strength, n=len(marked), median_log10_p_value=median,
                        bit_accuracy=_mean(marked, "bit_accuracy"), exact_match=_mean(marked, "exact_match"),
                        perplexity=_mean(marked, "perplexity"), top5_hit_rate=_mean(marked, "top5_hit_rate"))
            for alpha in ALPHAS:
                cell[f"detection_rate_{alpha:g}"] = _mean(marked, f"detected_{alpha:g}")
                cell[f"fpr_{alpha:g}"] = _mean(controls, f"detected_{alpha:g}")
                cell[f"fpr_human_{alpha:g}"] = _mean(human, f"detected_{alpha:g}")
            cell["n_human"] = len(human) if human else ""
            out.append(cell)
    if plain_quality:
        cell = dict.fromkeys(SUMMARY_FIELDS, "")
        cell.update(suite=suite.name, scheme=UNWATERMARKED, attack="none", n=len(plain_quality),
                    perplexity=round(statistics.fmean(q[0] for q in plain_quality), 4),
                    top5_hit_rate=round(statistics.fmean(q[1] for q in plain_quality), 4))
        out.append(cell)
    return out
