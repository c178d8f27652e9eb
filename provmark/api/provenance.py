"""Provenance: generate watermarked text under a new record, and verify text back to its record.

These are the operations behind ``POST /v1/generate``, ``POST /v1/embed`` (finished text, synonym
keys) and ``POST /v1/verify``; the HTTP layer
(``api.app``) only authenticates, validates and formats.

**Verify.** Each text is detected with every key the caller may use. With K keys tested each
key gets alpha / K (Bonferroni), so the chance that an unwatermarked text is reported
watermarked under *any* key stays at most alpha. A multi-bit key that has issued records runs two
tests on that share, each at alpha / 2K: the presence test (``DetectionResult``, which needs no
payload) and the record test below; the key reports the text watermarked when either rejects.
Each result reports the threshold its test used as its ``alpha``. A text is then matched to a
record of the key:

1. by text hash, whatever the tests said: the exact text a record's generation produced
   (``text_sha256`` below) is proof enough, and it is the only way a zero-bit key's record can be
   found;
2. by the record test (``front.Watermark.attribute``, ``detector.records``): every payload the
   key has issued is scored on the text (its hits under exactly that payload's preferred sets,
   an exact tail), and the best is corrected for the number of records scored. When the
   corrected p-value is at most the threshold the text is attributed to that record (match
   "record"); the answer carries the record-level p-value, the runner-up's and whether the
   open-set decode (reading the payload bits with no registry) agreed;
3. otherwise, when watermarked, by nothing: the answer says the text is watermarked but
   unattributed, and lists the key's records nearest to the open-set decode in
   confidence-weighted bit distance (the sum over the codeword bits where they differ of the
   decoder's confidence in its bit), a heuristic shown as such, never a match.

**Attribution** (asked per request, ``AttributionRequest``): zero-shot test (a) of
``detector.zero_shot``, "was this text sampled from the serving model under this setting?", with
no key (Radvand et al., arXiv 2501.02406): one forward pass of the model over each text, so its
tokens count against the work budget and the rate limiter's charge like a key's. The text is
scored after the prompt the caller gives; without one, after the prompt of the record it matched
when ``/v1/generate`` made that record (the record keeps its prompt, chat flag and temperature),
and otherwise alone; the answer says which. Test (b) ("not human") is not run here: its conformal
p-value needs the committed human references scored under the same setting, minutes of CPU per
setting; ``provmark attribute`` runs it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from provmark.api.admission import Cancellation, ServiceBusyError, VerificationCancelled, detect_key
from provmark.api.errors import APIError, ConflictError, InvalidInputError
from provmark.api.limits import ATTRIBUTION_WORK_WEIGHT, WorkLimits, work_weight
from provmark.api.registry import KeyRef, Record, Registry
from provmark.detector import DetectionResult
from provmark.detector.records import RecordMatch
from provmark.detector.zero_shot import SamplingSettings, ZeroShotResult, ZeroShotScorer
from provmark.errors import KeyFileError, ProvmarkError
from provmark.front import EmbedInputError, Watermark, check_embed_inputs
from provmark.watermark.hook import Generation
from provmark.watermark.models import Models
from provmark.watermark.schemes import get_scheme
from provmark.watermark.synonym import SynonymEmbedding
from provmark.watermark.words import WORD_PATTERN

__all__ = ["Attribution", "AttributionRequest", "KeyVerification", "NearRecord", "Provenance", "TextVerification",
           "text_sha256"]

_MAX_WATERMARKS = 1024
_RUN_START = re.compile(r"\S\s")  # a non-space character, then the whitespace run it ends at
_log = logging.getLogger(__name__)


def text_sha256(text: str) -> str:
    """SHA-256 of the text after Unicode NFC and collapsing every run of whitespace to one space
    (and stripping the ends), so a trailing newline or re-wrapped lines do not change it."""
    canonical = " ".join(unicodedata.normalize("NFC", text).split())
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class NearRecord:
    record: Record
    bit_distance: float
    """Sum of the decoder's confidences over the codeword bits where record and text differ."""
    bits_differ: int


@dataclass(frozen=True)
class KeyVerification:
    """One key's verdict on one text and the record it points to."""

    result: DetectionResult
    match: str | None
    """"text" (the record's text hash), "record" (the record test) or None."""
    record: Record | None
    nearest: list[NearRecord] = field(default_factory=list)
    note: str | None = None
    public: bool = False
    """The key was used as a public key (the caller is not its tenant): records omit metadata."""
    capped_at: int | None = None
    """The key scored only the first this many tokens (words, synonym) of the text (``WorkLimits``)."""
    error: str | None = None
    """Why this key gave no verdict (its detection failed); ``result`` is then the no-evidence
    result (p = 1, nothing scored) and the other keys' results stand."""
    record_test: RecordMatch | None = None
    """The record test over every record the key has issued (None: zero-bit key, or none issued)."""

    @property
    def watermarked(self) -> bool:
        """Whether the presence test or the record test rejected."""
        return self.result.is_watermarked or (self.record_test is not None and self.record_test.is_match)


@dataclass(frozen=True, kw_only=True)
class AttributionRequest:
    """Zero-shot attribution to the serving model, asked with a verification (module docstring)."""

    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    """The generation setting whose sampling distribution the texts are tested against."""
    prompts: tuple[str | None, ...] | None = None
    """Per text, the prompt it answered (None: unknown, scored alone); None for every text."""
    chat: bool | None = None
    """Prompts through the model's chat template (None: when it has one), as generation applies it."""


@dataclass(frozen=True)
class Attribution:
    """Test (a) on one text under the serving model, and how it was scored."""

    result: ZeroShotResult
    note: str


@dataclass(frozen=True)
class TextVerification:
    text_sha256: str
    num_tokens: int
    results: list[KeyVerification]
    attribution: Attribution | None = None
    """Asked with ``AttributionRequest``; None otherwise."""

    @property
    def watermarked(self) -> bool:
        return any(k.watermarked for k in self.results)


def nearest_records(registry: Registry, key, result: DetectionResult, limit: int) -> list[NearRecord]:
    """The ``limit`` records of ``key`` nearest to the decoded payload (see the module docstring).

    Builds the codeword of every number issued under the key in Python: linear in the key's
    records, and run only when a watermarked payload matched no record."""
    if result.bit_confidences is None or limit == 0:  # a decoder without per-bit confidences
        return []
    numbers = registry.issued_numbers(key.key_id).tolist()
    if not numbers:
        return []
    config = key.config
    decoded = np.array(config.codeword_bits(result.payload), dtype=bool)
    confidence = np.asarray(result.bit_confidences, dtype=np.float64)
    codewords = np.array([config.codeword_bits(n) for n in numbers], dtype=bool)
    differ = codewords != decoded
    distance = differ @ confidence
    order = np.lexsort((np.array(numbers), distance))[:limit]
    chosen = [numbers[i] for i in order]
    records = {r.number: r for r in registry.records_by_numbers(key.key_id, chosen)}
    return [NearRecord(records[numbers[i]], float(distance[i]), int(differ[i].sum())) for i in order if numbers[i] in records]


class Provenance:
    """Generation under new records and verification against a caller's keys."""

    def __init__(self, registry: Registry, models: Models):
        self.registry = registry
        self.models = models
        self._watermarks: dict[str, Watermark] = {}

    def watermark(self, key_id: str) -> Watermark:
        """The key's front door over the serving models, built once (it caches its detectors)."""
        found = self._watermarks.get(key_id)
        if found is None:
            if len(self._watermarks) >= _MAX_WATERMARKS:
                self._watermarks.clear()
            try:
                key = self.registry.watermark_key(key_id)
            except KeyFileError as exc:  # a stored row this version refuses (written before a bound existed)
                raise ConflictError(f"key {key_id} cannot be used: {exc}; create a new key", field="key_id") from None
            found = self._watermarks[key_id] = Watermark(key, self.models)
        return found

    def generate(
        self, *, tenant_id: str, key_id: str, prompt: str, metadata: dict | None = None, chat: bool | None = None,
        seed: int | None = None, max_new_tokens: int = 200, temperature: float = 1.0,
    ) -> tuple[Generation, Record]:
        """Issue a record under the key, generate with its number as the payload (multi-bit keys),
        store the text's hash on the record. The record comes first, so a key that cannot issue one
        (unknown, retired, exhausted) fails before the model loads; a generation that fails
        withdraws its record."""
        self._require_inputs(key_id, tenant_id, prompts=[prompt])
        record = self.registry.new_record(key_id, tenant_id=tenant_id, model=self.models.name, metadata=metadata,
                                          context={"prompt": prompt, "chat": chat, "temperature": temperature})
        payloads = None if record.payload is None else [record.payload]
        try:
            watermark = self.watermark(key_id)
            self.models.loaded()  # load outside the lock: verifications need none of it
            with self.models.generate_lock:
                (generation,) = watermark.embed(prompts=[prompt], payloads=payloads, chat=chat, seed=seed,
                                                max_new_tokens=max_new_tokens, temperature=temperature)
        except BaseException:
            self.registry.delete_record(record.id)
            raise
        return generation, self.registry.set_record_text(record.id, text_sha256(generation.text))

    def embed(
        self, *, tenant_id: str, key_id: str, text: str, metadata: dict | None = None
    ) -> tuple[SynonymEmbedding, Record]:
        """Issue a record under a key that watermarks finished text (synonym), watermark ``text``
        with it, store the watermarked text's hash on the record (zero-bit: verification finds the
        record by that hash; a key with ``payload_bits`` also embeds the record's number as its
        payload, so the record test can name the record of an edited text). Failures withdraw
        the record, as ``generate`` does."""
        self._require_inputs(key_id, tenant_id, texts=[text])
        record = self.registry.new_record(key_id, tenant_id=tenant_id, model=self.models.name, metadata=metadata)
        try:
            watermark = self.watermark(key_id)
            self.models.loaded()  # load outside the lock, as generate does
            self.models.encoder()
            with self.models.generate_lock:
                (embedding,) = watermark.embed(texts=[text], payloads=None if record.payload is None else [record.payload])
        except BaseException:
            self.registry.delete_record(record.id)
            raise
        return embedding, self.registry.set_record_text(record.id, text_sha256(embedding.text))

    def _require_inputs(self, key_id: str, tenant_id: str, *, prompts=None, texts=None) -> None:
        """Refuse (422, field ``key_id``) a key whose scheme embeds the other way: while generating
        (``/v1/generate``) or into finished text (``/v1/embed``). The payload is the record's
        number, issued afterwards, so it is checked as present whenever the scheme carries one."""
        scheme = get_scheme(self.registry.key(key_id, tenant_id=tenant_id).scheme)
        multi_bit = self.watermark(key_id).key.config.supports_payload  # a synonym key decides per key
        try:
            check_embed_inputs(scheme, prompts=prompts, texts=texts, payloads=[0] if multi_bit else None,
                               supports_payload=multi_bit)
        except EmbedInputError as exc:
            if exc.reason == "wants_text":
                message = f"key {key_id} is a {scheme.name} key, which watermarks finished text: use /v1/embed"
            elif exc.reason == "wants_prompt":
                message = (f"key {key_id} is a {scheme.name} key, which watermarks while a model generates: "
                           "use /v1/generate")
            else:
                raise
            raise InvalidInputError(message, field="key_id") from None

    def verify(
        self, texts: list[str], keys: list[KeyRef], *, tenant_id: str | None, alpha: float = 1e-3, min_tokens: int = 10,
        nearest: int = 5, fields: list[str] | None = None, limits: WorkLimits | None = None, charge=None,
        cancel: Cancellation | None = None, detect=detect_key, attribution: AttributionRequest | None = None,
    ) -> list[TextVerification]:
        """Detect every text with every key and match each to its record (module docstring).

        ``tenant_id`` is the caller (None: anonymous); a key of another tenant is treated as public.
        ``fields`` names each text in errors (default ``texts.<i>``). Work is bounded by ``limits``:
        a Balance-Marking key scores at most ``proxy_tokens`` tokens of each text and a synonym key
        ``text_words`` words (the result says ``capped_at``), and a request that would score more than
        ``max_tokens_scored`` in all is refused (422) before any detection. The caps apply before the
        text is tokenised: when every key reads a capped prefix, only that prefix is tokenised (and
        ``num_tokens`` counts its tokens). ``charge(work)`` is called first with the work in kgw tokens
        (tokens scored, weighted by ``api.limits.SCHEME_WORK_WEIGHTS``: the rate limiter's charge by work;
        it raises to refuse). ``cancel`` is checked between keys and between the texts of a capped key:
        once set, detection stops with ``VerificationCancelled`` (and a log line). ``detect`` runs each
        key's detection (``admission.detect_key``; the heavy lane's runs it in another process).

        ``attribution`` also runs test (a) of the zero-shot attribution on every text (module
        docstring) at ``alpha``, after detection: its tokens (and a given prompt's) join the total and
        are charged at ``api.limits.ATTRIBUTION_WORK_WEIGHT``, a text over ``limits.attribution_tokens``
        is refused (422) and a serving model that cannot load is a ``ModelLoadError`` (503), both
        before any detection. The texts are then tokenised whole."""
        fields = fields or [f"texts.{i}" for i in range(len(texts))]
        limits = limits or WorkLimits()
        ids = self._token_ids(texts, keys, limits, min_tokens, whole=attribution is not None)
        for name, row in zip(fields, ids):
            if len(row) < min_tokens:
                raise InvalidInputError(
                    f"text has {len(row)} tokens; verification needs at least min_tokens = {min_tokens}", field=name
                )
        hashes = [text_sha256(t) for t in texts]
        per_key_alpha = alpha / max(len(keys), 1)
        plans = [self._plan(info, texts, ids, limits) for info in keys]
        total = sum(sum(plan[2]) for plan in plans)
        if attribution is not None:
            for name, row in zip(fields, ids):
                if len(row) > limits.attribution_tokens:
                    raise InvalidInputError(
                        f"text has {len(row)} tokens; attribution scores at most {limits.attribution_tokens} tokens "
                        "of a text: send a shorter text or leave attribution off", field=name)
            prompts = [q for q in attribution.prompts or () if q is not None]  # run through the model too
            prompt_ids = self.models.tokenizer()(prompts, add_special_tokens=False)["input_ids"] if prompts else []
            attributed = sum(len(row) for row in ids) + sum(len(row) for row in prompt_ids)
            total += attributed
        if total > limits.max_tokens_scored:
            passes = f"{len(keys)} key(s)" + (" and the attribution pass" if attribution is not None else "")
            raise InvalidInputError(
                f"this verification would score {total} tokens ({len(texts)} text(s) x {passes}); the limit "
                f"is {limits.max_tokens_scored} per request: send shorter or fewer texts, or name key_ids",
                field=fields[0] if len(texts) == 1 else "texts")
        loaded = self.models.loaded() if attribution is not None else None  # refuse before charging
        if charge is not None:
            charge(sum(work_weight(info.scheme) * sum(plan[2]) for info, plan in zip(keys, plans))
                   + (ATTRIBUTION_WORK_WEIGHT * attributed if attribution is not None else 0.0))
        columns = []
        for done, (info, (key_texts, key_ids, scored, capped_at)) in enumerate(zip(keys, plans)):
            public = info.tenant_id != tenant_id
            # One key's failure is that key's error entry, never the request's: verification without
            # key_ids reads every public key of every tenant, so one broken key must not deny it to all.
            try:
                if cancel is not None:
                    cancel.progress = (done, len(keys))
                    cancel.check()
                watermark = self.watermark(info.key_id)
                issued = (self.registry.issued_numbers(info.key_id) if watermark.key.config.supports_payload
                          else np.empty(0, dtype=np.uint64))
                key_alpha = per_key_alpha / 2 if issued.size else per_key_alpha  # presence and record test
                # A capped scheme costs the most per text (issue 16): one text at a time, so a
                # cancellation waits for one text under one key at most.
                step = 1 if _capped(watermark.scheme) else len(texts)
                results, tests = [], []
                for i in range(0, len(texts), step):
                    if i and cancel is not None:
                        cancel.check()
                    part_results, part_tests = detect(watermark, key_texts[i:i + step], key_ids[i:i + step],
                                                      key_alpha, issued)
                    results += part_results
                    tests += part_tests
                columns.append(
                    [self._match(watermark.key, result, test, digest, nearest, public, cap)
                     for result, test, digest, cap in zip(results, tests, hashes, capped_at)]
                )
            except VerificationCancelled as exc:  # the request's fate, not the key's
                _log.warning("verify cancelled (%s) after %d of %d keys", exc.reason, done, len(keys))
                raise
            except ServiceBusyError:
                raise
            except Exception as exc:  # noqa: BLE001 - isolation is the point; the log keeps the traceback
                columns.append([self._failed(info, exc, per_key_alpha, public)] * len(texts))
        if attribution is not None and cancel is not None:
            cancel.check()  # the forward pass is the costliest part: not for a client that has gone
        per_text = [sorted((c[i] for c in columns), key=_strength) for i in range(len(texts))]
        attributions = ([None] * len(texts) if attribution is None
                        else self._attribute(loaded, texts, attribution, alpha, [_generated_record(r) for r in per_text]))
        return [TextVerification(digest, len(row), results, found)
                for digest, row, results, found in zip(hashes, ids, per_text, attributions)]

    def _attribute(self, loaded, texts: list[str], request: AttributionRequest, alpha: float,
                   records: list[Record | None]) -> list[Attribution]:
        """Test (a) of ``detector.zero_shot`` on each text under the serving model, batched per
        generation setting (under ``generate_lock``: the model runs one batch at a time).

        A text is scored after the prompt the request gives for it; without one, after the prompt of
        the record it matched when that record was made by ``/v1/generate`` (``Record.context``: its
        prompt, chat template and temperature, the setting it was actually sampled under); otherwise
        alone. A record's prompt is not charged to the work budget (it is at most 8,000 characters)."""
        plans = []  # (prompt, chat, sampling, note) per text
        for i in range(len(texts)):
            given = request.prompts[i] if request.prompts is not None else None
            context = records[i].context if records[i] is not None else None
            if given is not None:
                plans.append((given, request.chat, request.sampling,
                              "scored after the prompt given in the request, as /v1/generate feeds it (through the chat "
                              "template when the model has one, unless chat says otherwise)"))
            elif context is not None:
                plans.append((context["prompt"], context["chat"], SamplingSettings(temperature=context["temperature"]),
                              f"scored after the prompt of record {records[i].id}, at the setting it was generated "
                              f"with (temperature {context['temperature']:g}, the prompt fed as /v1/generate fed it), "
                              "not the request's"))
            else:
                plans.append((None, request.chat, request.sampling,
                              "scored alone: no prompt was given and the text matched no record that keeps one (records "
                              "of /v1/generate do), so the text was not scored in its generation context (a model's "
                              "answer scored without its prompt drifts away from the model: test (a) rejects it more "
                              "often than alpha)"))
        groups: dict[tuple, list[int]] = {}
        for i, (_, chat, sampling, _) in enumerate(plans):
            groups.setdefault((chat, sampling), []).append(i)
        results: list[ZeroShotResult | None] = [None] * len(texts)
        with self.models.generate_lock:
            for (chat, sampling), members in groups.items():
                scorer = ZeroShotScorer(loaded.model, loaded.tokenizer, sampling=sampling, name=self.models.name)
                # min_tokens: verify has checked the request's own
                found = scorer.test([texts[i] for i in members], [plans[i][0] for i in members], chat=chat,
                                    alpha=alpha, human=False, min_tokens=1)
                for i, result in zip(members, found):
                    results[i] = result
        return [Attribution(result, plan[3] + "; test (b), not human, is run by `provmark attribute`, not here")
                for result, plan in zip(results, plans)]

    @staticmethod
    def _plan(info: KeyRef, texts: list[str], ids: list[list[int]], limits: WorkLimits):
        """(texts, token ids, tokens scored, capped_at per text) of one key under ``limits``."""
        scheme = _scheme(info.scheme)
        if scheme is None:  # a stored scheme this version lacks: it fails alone in verify
            return texts, ids, [0] * len(texts), [None] * len(texts)
        if scheme.uses_proxy:
            capped = [row[: limits.proxy_tokens] for row in ids]
            return texts, capped, [len(row) for row in capped], [
                limits.proxy_tokens if len(row) > limits.proxy_tokens else None for row in ids]
        if scheme.reads_text:
            key_texts, scored, capped_at = [], [], []
            for text in texts:
                ends = [m.end() for _, m in zip(range(limits.text_words + 1), WORD_PATTERN.finditer(text))]
                over = len(ends) > limits.text_words
                key_texts.append(text[: ends[limits.text_words - 1]] if over else text)
                scored.append(min(len(ends), limits.text_words))
                capped_at.append(limits.text_words if over else None)
            return key_texts, ids, scored, capped_at
        return texts, ids, [len(row) for row in ids], [None] * len(texts)

    def _token_ids(self, texts: list[str], keys: list[KeyRef], limits: WorkLimits, min_tokens: int, *,
                   whole: bool = False) -> list[list[int]]:
        """The texts' token ids as far as the keys read them (``verify``): whole texts when a key
        scores every token (or ``whole``: the attribution pass reads every token), else a prefix holding
        the first ``max(min_tokens, proxy_tokens + 1)`` tokens (the synonym scheme reads words, not
        tokens), tokenised from a prefix of the text."""
        tokenizer = self.models.tokenizer()
        schemes = [_scheme(info.scheme) for info in keys]
        if whole or any(s is None or not _capped(s) for s in schemes):
            return tokenizer(texts, add_special_tokens=False)["input_ids"]
        # one past the proxy's cap, so that ``_plan`` sees whether the text goes on past it
        need = max([min_tokens] + [limits.proxy_tokens + 1 for s in schemes if s.uses_proxy])
        return [_token_prefix(tokenizer, text, need) for text in texts]

    @staticmethod
    def _failed(info: KeyRef, exc: Exception, alpha: float, public: bool) -> KeyVerification:
        """The entry of a key whose detection failed: no evidence (p = 1) and the reason. A library or
        registry refusal says what it is; anything else is logged with its traceback and reported
        as an internal error, so no detail of the server leaks into the answer."""
        if isinstance(exc, (APIError, ProvmarkError)):
            message = str(exc)
            _log.error("verify: key %s skipped: %s", info.key_id, message)
        else:
            message = f"detection with key {info.key_id} failed (internal error, logged)"
            _log.error("verify: key %s failed", info.key_id, exc_info=exc)
        result = DetectionResult(scheme=info.scheme, key_id=info.key_id, prf_version=info.prf_version, is_watermarked=False,
                                 p_value=1.0, log10_p_value=0.0, score=0.0, num_scored_tokens=0, alpha=alpha)
        return KeyVerification(result, None, None, public=public, error=message)

    def _match(self, key, result: DetectionResult, record_test: RecordMatch | None, digest: str, nearest: int,
               public: bool, capped_at: int | None = None) -> KeyVerification:
        found = partial(KeyVerification, result, public=public, record_test=record_test, capped_at=capped_at)
        record = self.registry.record_by_text(key.key_id, digest)
        if record is not None:
            return found("text", record)
        if record_test is not None and record_test.is_match:
            record = self.registry.record_by_number(key.key_id, record_test.payload)
            if record is not None:
                notes = []
                if result.payload is not None and result.payload != record_test.payload:
                    notes.append(f"the open-set decode reads {result.payload_hex}, not this record's payload: the record "
                                 "test names the issued record that explains the text best")
                if record_test.exclusion_log10_p_value is not None and not record_test.is_exclusive:
                    notes.append(f"not exclusive: record {key.key_id}.{record_test.competitor} is not excluded (weighted "
                                 f"exclusion p {10 ** record_test.exclusion_log10_p_value:.3g} > alpha "
                                 f"{record_test.alpha:g}), so this is the likeliest record, not a proven one")
                return found("record", record, note="; ".join(notes) or None)
        if not (result.is_watermarked or (record_test is not None and record_test.is_match)):
            return found(None, None)
        if result.payload is None and not key.config.supports_payload:
            note = "watermarked, but no record of this zero-bit key has this exact text (records of zero-bit keys are found by text hash)"
            return found(None, None, note=note)
        if result.payload is None:  # a check-bit key whose decode found no codeword that passes the check
            note = ("watermarked, but unattributed: no record matched and no decoded payload passed the key's "
                    f"{key.config.check_bits} check bits")
            return found(None, None, note=note)
        if record_test is None:
            note = f"watermarked, but this key has issued no records (open-set decode {result.payload_hex})"
            return found(None, None, note=note)
        note = (f"watermarked, but unattributed: the best of the key's {record_test.num_candidates} records has "
                f"corrected p {record_test.corrected_p_value:.3g}, above alpha {record_test.alpha:g}; nearest records "
                "to the open-set decode listed (a heuristic, not a match)")
        return found(None, None, nearest_records(self.registry, key, result, nearest), note)


def _scheme(name: str):
    """The registry entry of ``name`` (None: a stored scheme this version lacks)."""
    try:
        return get_scheme(name)
    except ProvmarkError:
        return None


def _capped(scheme) -> bool:
    """Whether a scheme's verification reads a capped prefix of each text (``WorkLimits``)."""
    return scheme.uses_proxy or scheme.reads_text


def _token_prefix(tokenizer, text: str, need: int) -> list[int]:
    """The token ids of ``text`` up to at least its first ``need`` tokens (all of them in a shorter
    text), equal to the first ids of the whole text's tokenisation: the text is cut where a run of
    whitespace starts after a non-space character (a pre-token boundary of byte-level BPE, and of
    SentencePiece, whose next token starts with the space), and the cut doubles until it holds
    ``need`` tokens."""
    chars = 8 * (need + 1)
    while chars < len(text):
        found = [m.start() for m in _RUN_START.finditer(text, max(0, chars - 4096), chars)]
        cut = found[-1] + 1 if found else 0
        if cut > 0:
            ids = tokenizer(text[:cut], add_special_tokens=False)["input_ids"]
            if len(ids) >= need:
                return ids
        chars *= 2
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _strength(item: KeyVerification) -> float:
    """Most significant first: the smaller of the key's presence and record-level log10 p-values."""
    record = item.record_test.corrected_log10_p_value if item.record_test is not None else 0.0
    return min(item.result.log10_p_value, record)


def _generated_record(verifications: list[KeyVerification]) -> Record | None:
    """The record a text matched that knows its generation context, from the strongest key first
    (``verifications`` are in ``_strength`` order)."""
    for item in verifications:
        if item.record is not None and item.record.context is not None:
            return item.record
    return None
