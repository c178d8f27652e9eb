"""Provenance: generate watermarked text under a new record, and verify text back to its record.

These are the operations behind ``POST /v1/generate``, ``POST /v1/embed`` (finished text, synonym
keys) and ``POST /v1/verify``; the HTTP layer
(``api.app``) only authenticates, validates and formats.

**Verify.** Each text is detected with every key the caller may use. With K keys tested the
decision threshold of each is alpha / K (Bonferroni), so the chance that an unwatermarked text
is reported watermarked under *any* key stays at most alpha; each result reports the per-key
threshold it used as its ``alpha``. A text is then matched to a record of the key:

1. by text hash, whatever the detector said: the exact text a record's generation produced
   (``text_sha256`` below) is proof enough, and it is the only way a zero-bit key's record can be
   found;
2. when watermarked under a multi-bit key, by the decoded payload (= the record's number);
3. when watermarked but the payload matches no record (a damaged payload, or a record from
   another registry), by nothing: the answer says so and lists the key's records nearest to the
   decoded payload in confidence-weighted bit distance, the sum over the codeword bits where
   they differ of the decoder's confidence in its bit (a disagreement on a bit the decoder was
   sure of counts fully, one on a coin-flip bit hardly at all).
"""

from __future__ import annotations

import hashlib
import threading
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from provmark.api.errors import InvalidInputError
from provmark.api.registry import KeyRef, Record, Registry
from provmark.detector import DetectionResult, Detector, create_detector
from provmark.watermark.hook import Generation, generate
from provmark.watermark.models import DEFAULT_MODEL_NAME, LoadedModel, load_model, load_tokenizer
from provmark.watermark.schemes import SCHEMES, watermarker_class
from provmark.watermark.synonym import SynonymEmbedder, SynonymEmbedding

__all__ = ["KeyVerification", "Models", "NearRecord", "Provenance", "TextVerification", "text_sha256"]

_MAX_DETECTORS = 1024


def text_sha256(text: str) -> str:
    """SHA-256 of the text after Unicode NFC and collapsing every run of whitespace to one space
    (and stripping the ends), so a trailing newline or re-wrapped lines do not change it."""
    canonical = " ".join(unicodedata.normalize("NFC", text).split())
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class Models:
    """The serving model (embedded SmolLM2 by default, or a local folder), loaded once per process
    on first use: the tokenizer alone for model-free detection, the weights for generation, as
    Balance-Marking's proxy and to rank synonyms, and the sentence encoder for the synonym scheme.
    Generation and embedding hold ``generate_lock``: the model runs one batch at a time."""

    def __init__(self, path=None):
        self.path = path
        self.name = DEFAULT_MODEL_NAME if path is None else str(path)
        """What records store as their model."""
        self.generate_lock = threading.Lock()
        self._lock = threading.Lock()
        self._tokenizer = None
        self._loaded: LoadedModel | None = None
        self._proxy = None
        self._encoder = None

    def tokenizer(self):
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = self._loaded.tokenizer if self._loaded else load_tokenizer(self.path)
            return self._tokenizer

    def loaded(self) -> LoadedModel:
        with self._lock:
            if self._loaded is None:
                self._loaded = load_model(self.path)
            return self._loaded

    def proxy(self):
        from provmark.watermark.proxy import Proxy

        loaded = self.loaded()
        with self._lock:
            if self._proxy is None:
                self._proxy = Proxy(loaded.model, loaded.tokenizer)
            return self._proxy

    def encoder(self):
        from provmark.watermark.models import load_sentence_encoder

        with self._lock:
            if self._encoder is None:
                self._encoder = load_sentence_encoder()
            return self._encoder


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
    """"text" (the record's text hash), "payload" (the decoded payload) or None."""
    record: Record | None
    nearest: list[NearRecord] = field(default_factory=list)
    note: str | None = None
    public: bool = False
    """The key was used as a public key (the caller is not its tenant): records omit metadata."""


@dataclass(frozen=True)
class TextVerification:
    text_sha256: str
    num_tokens: int
    results: list[KeyVerification]

    @property
    def watermarked(self) -> bool:
        return any(k.result.is_watermarked for k in self.results)


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
        self._detectors: dict[tuple[str, float], Detector] = {}

    def detector(self, key_id: str, alpha: float) -> Detector:
        """The key's detector at ``alpha``, built once (detectors hold no per-call state)."""
        found = self._detectors.get((key_id, alpha))
        if found is None:
            key = self.registry.watermark_key(key_id)
            proxy = self.models.proxy() if key.config.generation_time and watermarker_class(key.scheme).uses_proxy else None
            if len(self._detectors) >= _MAX_DETECTORS:
                self._detectors.clear()
            found = self._detectors[(key_id, alpha)] = create_detector(key, alpha=alpha, proxy=proxy)
        return found

    def generate(
        self, *, tenant_id: str, key_id: str, prompt: str, metadata: dict | None = None, chat: bool | None = None,
        seed: int | None = None, max_new_tokens: int = 200, temperature: float = 1.0,
    ) -> tuple[Generation, Record]:
        """Issue a record under the key, generate with its number as the payload (multi-bit keys),
        store the text's hash on the record. The record comes first, so a key that cannot issue one
        (unknown, retired, exhausted) fails before the model loads; a generation that fails
        withdraws its record."""
        self._require_scheme(key_id, tenant_id, generation_time=True)
        record = self.registry.new_record(key_id, tenant_id=tenant_id, model=self.models.name, metadata=metadata)
        payloads = None if record.payload is None else [record.payload]
        try:
            key = self.registry.watermark_key(key_id)
            loaded = self.models.loaded()
            with self.models.generate_lock:
                (generation,) = generate(
                    loaded.model, loaded.tokenizer, [prompt], key, payloads, chat=chat, seed=seed,
                    max_new_tokens=max_new_tokens, temperature=temperature,
                )
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
        self._require_scheme(key_id, tenant_id, generation_time=False)
        record = self.registry.new_record(key_id, tenant_id=tenant_id, model=self.models.name, metadata=metadata)
        try:
            key = self.registry.watermark_key(key_id)
            loaded, encoder = self.models.loaded(), self.models.encoder()
            embedder = SynonymEmbedder(key, model=loaded.model, tokenizer=loaded.tokenizer, encoder=encoder)
            with self.models.generate_lock:
                embedding = embedder.embed(text)
        except BaseException:
            self.registry.delete_record(record.id)
            raise
        return embedding, self.registry.set_record_text(record.id, text_sha256(embedding.text))

    def _require_scheme(self, key_id: str, tenant_id: str, *, generation_time: bool) -> None:
        """Refuse (422, field ``key_id``) a key whose scheme embeds the other way: while generating
        (``/v1/generate``) or into finished text (``/v1/embed``)."""
        scheme = self.registry.key(key_id, tenant_id=tenant_id).scheme
        if SCHEMES[scheme][0].generation_time != generation_time:
            if generation_time:
                message = f"key {key_id} is a {scheme} key, which watermarks finished text: use /v1/embed"
            else:
                message = f"key {key_id} is a {scheme} key, which watermarks while a model generates: use /v1/generate"
            raise InvalidInputError(message, field="key_id")

    def verify(
        self, texts: list[str], keys: list[KeyRef], *, tenant_id: str | None, alpha: float = 1e-3, min_tokens: int = 10,
        nearest: int = 5, fields: list[str] | None = None,
    ) -> list[TextVerification]:
        """Detect every text with every key and match each to its record (module docstring).

        ``tenant_id`` is the caller (None: anonymous); a key of another tenant is treated as public.
        ``fields`` names each text in errors (default ``texts.<i>``)."""
        fields = fields or [f"texts.{i}" for i in range(len(texts))]
        tokenizer = self.models.tokenizer()
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        for name, row in zip(fields, ids):
            if len(row) < min_tokens:
                raise InvalidInputError(
                    f"text has {len(row)} tokens; verification needs at least min_tokens = {min_tokens}", field=name
                )
        hashes = [text_sha256(t) for t in texts]
        per_key_alpha = alpha / max(len(keys), 1)
        columns = []
        for info in keys:
            detector = self.detector(info.key_id, per_key_alpha)
            results = detector.detect_batch(texts if detector.reads_text else ids)
            public = info.tenant_id != tenant_id
            columns.append(
                [self._match(detector.key, result, digest, nearest, public) for result, digest in zip(results, hashes)]
            )
        return [
            TextVerification(digest, len(row), sorted((c[i] for c in columns), key=lambda k: k.result.log10_p_value))
            for i, (digest, row) in enumerate(zip(hashes, ids))
        ]

    def _match(self, key, result: DetectionResult, digest: str, nearest: int, public: bool) -> KeyVerification:
        record = self.registry.record_by_text(key.key_id, digest)
        if record is not None:
            return KeyVerification(result, "text", record, public=public)
        if not result.is_watermarked:
            return KeyVerification(result, None, None, public=public)
        if result.payload is None:
            note = "watermarked, but no record of this zero-bit key has this exact text (records of zero-bit keys are found by text hash)"
            return KeyVerification(result, None, None, note=note, public=public)
        record = self.registry.record_by_number(key.key_id, result.payload)
        if record is not None:
            return KeyVerification(result, "payload", record, public=public)
        note = f"watermarked, but payload {result.payload_hex} matches no record of this key; nearest records listed"
        return KeyVerification(result, None, None, nearest_records(self.registry, key, result, nearest), note, public)
