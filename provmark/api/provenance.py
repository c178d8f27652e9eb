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
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from provmark.api.errors import InvalidInputError
from provmark.api.registry import KeyRef, Record, Registry
from provmark.detector import DetectionResult
from provmark.detector.records import RecordMatch
from provmark.front import EmbedInputError, Watermark, check_embed_inputs
from provmark.watermark.hook import Generation
from provmark.watermark.models import Models
from provmark.watermark.schemes import get_scheme
from provmark.watermark.synonym import SynonymEmbedding

__all__ = ["KeyVerification", "NearRecord", "Provenance", "TextVerification", "text_sha256"]

_MAX_WATERMARKS = 1024


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
    record_test: RecordMatch | None = None
    """The record test over every record the key has issued (None: zero-bit key, or none issued)."""

    @property
    def watermarked(self) -> bool:
        """Whether the presence test or the record test rejected."""
        return self.result.is_watermarked or (self.record_test is not None and self.record_test.is_match)


@dataclass(frozen=True)
class TextVerification:
    text_sha256: str
    num_tokens: int
    results: list[KeyVerification]

    @property
    def watermarked(self) -> bool:
        return any(k.watermarked for k in self.results)


def nearest_records(registry: Registry, key, result: DetectionResult, limit: int) -> list[NearRecord]:
    """The ``limit`` records of ``key`` nearest to the decoded payload (see the module docstring).

    Reads every number issued under the key and builds each one's codeword in Python: linear in
    the key's records, and run only when a watermarked payload matched no record."""
    if result.bit_confidences is None or limit == 0:  # a decoder without per-bit confidences
        return []
    numbers = registry.record_numbers(key.key_id)
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
            found = self._watermarks[key_id] = Watermark(self.registry.watermark_key(key_id), self.models)
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
        record = self.registry.new_record(key_id, tenant_id=tenant_id, model=self.models.name, metadata=metadata)
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
        record by that hash). Failures withdraw the record, as ``generate`` does."""
        self._require_inputs(key_id, tenant_id, texts=[text])
        record = self.registry.new_record(key_id, tenant_id=tenant_id, model=self.models.name, metadata=metadata)
        try:
            watermark = self.watermark(key_id)
            self.models.loaded()  # load outside the lock, as generate does
            self.models.encoder()
            with self.models.generate_lock:
                (embedding,) = watermark.embed(texts=[text])
        except BaseException:
            self.registry.delete_record(record.id)
            raise
        return embedding, self.registry.set_record_text(record.id, text_sha256(embedding.text))

    def _require_inputs(self, key_id: str, tenant_id: str, *, prompts=None, texts=None) -> None:
        """Refuse (422, field ``key_id``) a key whose scheme embeds the other way: while generating
        (``/v1/generate``) or into finished text (``/v1/embed``). The payload is the record's
        number, issued afterwards, so it is checked as present whenever the scheme carries one."""
        scheme = get_scheme(self.registry.key(key_id, tenant_id=tenant_id).scheme)
        try:
            check_embed_inputs(scheme, prompts=prompts, texts=texts, payloads=[0] if scheme.supports_payload else None)
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
        nearest: int = 5, fields: list[str] | None = None,
    ) -> list[TextVerification]:
        """Detect every text with every key and match each to its record (module docstring).

        ``tenant_id`` is the caller (None: anonymous); a key of another tenant is treated as public.
        ``fields`` names each text in errors (default ``texts.<i>``)."""
        fields = fields or [f"texts.{i}" for i in range(len(texts))]
        ids = self.models.tokenizer()(texts, add_special_tokens=False)["input_ids"]
        for name, row in zip(fields, ids):
            if len(row) < min_tokens:
                raise InvalidInputError(
                    f"text has {len(row)} tokens; verification needs at least min_tokens = {min_tokens}", field=name
                )
        hashes = [text_sha256(t) for t in texts]
        per_key_alpha = alpha / max(len(keys), 1)
        columns = []
        for info in keys:
            watermark = self.watermark(info.key_id)
            issued = self.registry.record_numbers(info.key_id) if watermark.scheme.supports_payload else []
            key_alpha = per_key_alpha / 2 if issued else per_key_alpha
            results = watermark.detect(texts, alpha=key_alpha, token_ids=ids)
            matches = watermark.attribute(texts, issued, alpha=key_alpha, token_ids=ids) if issued else [None] * len(texts)
            public = info.tenant_id != tenant_id
            columns.append([self._match(watermark.key, result, match, digest, nearest, public)
                            for result, match, digest in zip(results, matches, hashes)])
        return [
            TextVerification(digest, len(row), sorted((c[i] for c in columns), key=_strength))
            for i, (digest, row) in enumerate(zip(hashes, ids))
        ]

    def _match(self, key, result: DetectionResult, record_test: RecordMatch | None, digest: str, nearest: int,
               public: bool) -> KeyVerification:
        found = partial(KeyVerification, result, public=public, record_test=record_test)
        record = self.registry.record_by_text(key.key_id, digest)
        if record is not None:
            return found("text", record)
        if record_test is not None and record_test.is_match:
            record = self.registry.record_by_number(key.key_id, record_test.payload)
            if record is not None:
                note = None
                if result.payload is not None and result.payload != record_test.payload:
                    note = (f"the open-set decode reads {result.payload_hex}, not this record's payload: the record "
                            "test names the issued record that explains the text best")
                return found("record", record, note=note)
        if not (result.is_watermarked or (record_test is not None and record_test.is_match)):
            return found(None, None)
        if result.payload is None:
            note = "watermarked, but no record of this zero-bit key has this exact text (records of zero-bit keys are found by text hash)"
            return found(None, None, note=note)
        if record_test is None:
            note = f"watermarked, but this key has issued no records (open-set decode {result.payload_hex})"
            return found(None, None, note=note)
        note = (f"watermarked, but unattributed: the best of the key's {record_test.num_candidates} records has "
                f"corrected p {record_test.corrected_p_value:.3g}, above alpha {record_test.alpha:g}; nearest records "
                "to the open-set decode listed (a heuristic, not a match)")
        return found(None, None, nearest_records(self.registry, key, result, nearest), note)


def _strength(item: KeyVerification) -> float:
    """Most significant first: the smaller of the key's presence and record-level log10 p-values."""
    record = item.record_test.corrected_log10_p_value if item.record_test is not None else 0.0
    return min(item.result.log10_p_value, record)
