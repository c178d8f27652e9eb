"""The library's front door: how a key embeds and detects, decided in one place.

``Watermark(key, models)`` binds a key to its scheme's registry entry (``watermark.schemes``) and
to the models it may need (``watermark.models.Models``, loaded on first use). The CLI, the HTTP
API and the evaluation runner call only this:

- ``embed``: a generation-time key continues prompts (with one payload per prompt when the scheme
  carries one); a finished-text key (synonym) rewrites texts. Balance-Marking gets its proxy;
  inputs are checked once (``check_embed_inputs``).
- ``detect``: tokenises (or hands text to a detector that reads text), detects in one batch,
  optionally searches for a pasted span (``locate``, where the scheme supports it), and refuses
  empty text and text with too few scored tokens.
- ``attribute``: which of a set of known payloads (a registry's records) a text carries, with a
  record-level p-value corrected for the number of candidates.
- ``explain``: ``detect`` with every token's (or word's) evidence.

``embed_text``-style one-offs are ``embed(key, ...)``, ``detect_text(key, text, ...)`` and
``explain_text(key, text, ...)`` below.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from provmark.detector import DEFAULT_ALPHA, DetectionResult, Detector, create_detector
from provmark.detector.explain import Explanation
from provmark.detector.explain import explain_text as _explain_text
from provmark.detector.records import RecordMatch, match_records_batch, match_tables
from provmark.errors import InvalidTextError, ParameterError
from provmark.watermark.keys import WatermarkKey
from provmark.watermark.models import Models
from provmark.watermark.schemes import SCHEMES, Scheme, get_scheme
from provmark.watermark.words import WORD_PATTERN

__all__ = ["EmbedInputError", "Watermark", "check_embed_inputs", "detect_text", "embed", "explain_text", "is_blank",
           "locate_schemes", "require_text"]

_MAX_DETECTORS = 64


class EmbedInputError(ParameterError):
    """An embedding call got the inputs of the other kind of scheme, or lacks one its scheme needs.

    ``reason`` says which, so a front end can phrase the fix in its own terms (flags, routes):
    "wants_text" (a finished-text key got a prompt or no text), "wants_prompt" (a generation-time
    key got text), "no_prompt", "needs_payload", "no_payload" (a zero-bit key got one)."""

    def __init__(self, reason: str, scheme: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.scheme = scheme


def is_blank(text: str) -> bool:
    """Whether ``text`` holds nothing visible: only whitespace and invisible format characters
    (Unicode category Cf: zero-width space, joiners, BOM, direction marks)."""
    return all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text)


def require_text(text, what: str = "text", purpose: str = "give the text to check") -> str:
    """``text`` itself, or ``InvalidTextError`` when it is not a string or holds nothing visible
    (``is_blank``)."""
    if not isinstance(text, str) or is_blank(text):
        raise InvalidTextError(f"{what} is empty; {purpose}")
    return text


def locate_schemes() -> str:
    """The schemes whose detectors can ``locate`` a span, as prose ("balance and vanilla")."""
    names = sorted(name for name, scheme in SCHEMES.items() if scheme.supports_locate)
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


def check_embed_inputs(scheme: Scheme, *, prompts=None, texts=None, payloads=None,
                       supports_payload: bool | None = None) -> None:
    """Refuse inputs the scheme does not take (``EmbedInputError``): a generation-time scheme takes
    prompts, a finished-text scheme texts; a multi-bit key takes one payload per input, a zero-bit
    one none. ``supports_payload`` is the key's (``key.config.supports_payload``; default the
    scheme's, which a synonym key overrides with ``payload_bits``). Needs no model, so callers can
    check before they issue a record or load weights."""
    name = scheme.name
    multi_bit = scheme.supports_payload if supports_payload is None else supports_payload
    if not scheme.generation_time:
        if prompts is not None or texts is None:
            raise EmbedInputError("wants_text", name, f"{name} keys watermark finished text: give texts, not prompts")
    elif texts is not None:
        raise EmbedInputError("wants_prompt", name, f"{name} watermarks while a model generates: give prompts, not texts")
    elif prompts is None:
        raise EmbedInputError("no_prompt", name, "give the prompts to continue")
    if not multi_bit and payloads is not None:
        raise EmbedInputError("no_payload", name, f"{name} is a zero-bit scheme and carries no payload")
    inputs = prompts if prompts is not None else texts
    for item in inputs:
        if prompts is not None:
            require_text(item, "prompt", "give some text to continue")
        else:
            require_text(item, "text", "give the text to watermark")
    if multi_bit and (payloads is None or any(p is None for p in payloads)):
        raise EmbedInputError("needs_payload", name, f"{name} keys carry a payload: give one per input")
    if payloads is not None and len(payloads) != len(inputs):
        raise ParameterError(f"got {len(payloads)} payloads for {len(inputs)} inputs; give one per input")


class Watermark:
    """A key bound to its scheme and to the models it may need.

    Args:
        key: the watermark key.
        models: where the tokenizer, model, proxy and sentence encoder come from (default: the
            embedded model, loaded on first use).
        proxy: Balance-Marking's proxy for detection when it is not ``models.proxy()`` (the
            evaluation runner's window cache).
    """

    def __init__(self, key: WatermarkKey, models: Models | None = None, *, proxy=None):
        if not isinstance(key, WatermarkKey):
            raise ParameterError(f"key must be a WatermarkKey (see provmark.watermark.keys.load_key), got {type(key).__name__}")
        self.key = key
        self.scheme = get_scheme(key.scheme)
        self.models = models if models is not None else Models()
        if proxy is not None and not self.scheme.uses_proxy:
            raise ParameterError(f"{key.scheme} uses no proxy model; drop the proxy")
        self._proxy = proxy
        self._detectors: dict[float, Detector] = {}

    # -- embedding ------------------------------------------------------------------------------

    def embed(self, *, prompts: Sequence[str] | None = None, texts: Sequence[str] | None = None,
              payloads: Sequence[int] | None = None, chat: bool | None = None, seed: int | None = None,
              progress: bool = False, **generation) -> list:
        """Watermark each input: ``hook.Generation`` per prompt for a generation-time key
        (``generation`` goes to ``hook.generate``: max_new_tokens, temperature, ...), or the
        scheme embedder's result per text for a finished-text key (``SynonymEmbedding``)."""
        check_embed_inputs(self.scheme, prompts=prompts, texts=texts, payloads=payloads,
                           supports_payload=self.key.config.supports_payload)
        if not self.scheme.generation_time:
            loaded = self.models.loaded()
            embedder = self.scheme.embedder(self.key, model=loaded.model, tokenizer=loaded.tokenizer,
                                            encoder=self.models.encoder())
            if payloads is None:
                return embedder.embed_batch(list(texts))
            return embedder.embed_batch(list(texts), list(payloads))
        from provmark.watermark.hook import generate

        loaded = self.models.loaded()
        return generate(loaded.model, loaded.tokenizer, list(prompts), self.key, None if payloads is None else list(payloads),
                        chat=chat, seed=seed, progress=progress, **generation)

    # -- detection ------------------------------------------------------------------------------

    def proxy(self):
        """Balance-Marking's proxy (None for a scheme that uses none)."""
        if not self.scheme.uses_proxy:
            return None
        return self._proxy if self._proxy is not None else self.models.proxy()

    def detector(self, alpha: float = DEFAULT_ALPHA) -> Detector:
        """The key's detector at ``alpha``, built once (detectors hold no per-call state)."""
        found = self._detectors.get(alpha)
        if found is None:
            if len(self._detectors) >= _MAX_DETECTORS:
                self._detectors.clear()
            found = self._detectors[alpha] = create_detector(self.key, alpha=alpha, proxy=self.proxy())
        return found

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The texts as detection reads them: token ids, no special tokens added."""
        tokenizer = self.models.tokenizer()
        return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]

    def lengths(self, texts: Sequence[str], token_ids: Sequence | None = None) -> list[int]:
        """Each text's length in the units its detector reads: tokens, or words for a detector that
        reads text (``words.WORD_PATTERN``)."""
        if self.scheme.reads_text:
            return [sum(1 for _ in WORD_PATTERN.finditer(t)) for t in texts]
        return [len(ids) for ids in (token_ids if token_ids is not None else self.token_ids(texts))]

    def detect(self, texts: Sequence[str], *, alpha: float = DEFAULT_ALPHA, min_tokens: int | None = None,
               token_ids: Sequence | None = None, locate: bool = False, window: int = 200,
               stride: int = 25) -> list[DetectionResult]:
        """Detect the watermark in each text (one batch).

        Args:
            min_tokens: refuse (``InvalidTextError``) an empty text and a text with fewer scored
                tokens (eligible words, for the synonym scheme) than this, and always one with
                none; None scores whatever there is (p = 1 for nothing).
            token_ids: the texts already tokenised (``token_ids``), when the caller has them.
            locate: search windows of ``window`` tokens, ``stride`` apart, for a watermarked span
                pasted into longer text (schemes with ``supports_locate``); the p-value is
                corrected for the windows searched.
        """
        texts = list(texts) if min_tokens is None else [require_text(t) for t in texts]
        detector = self.detector(alpha)
        if locate and not self.scheme.supports_locate:
            raise ParameterError(f"locate works with {locate_schemes()} keys, not {self.key.scheme}")
        if detector.reads_text:
            results = detector.detect_batch(texts)
        else:
            ids = token_ids if token_ids is not None else self.token_ids(texts)
            if locate:
                results = [detector.locate(row, window=window, stride=stride) for row in ids]
            else:
                results = detector.detect_batch(ids)
        if min_tokens is not None:
            for result in results:
                self._require_scored(result.num_scored_tokens, min_tokens)
        return results

    def attribute(self, texts: Sequence[str], candidates, *, alpha: float = DEFAULT_ALPHA,
                  token_ids: Sequence | None = None) -> list[RecordMatch]:
        """Which of ``candidates`` (payloads: for a registry, every one it issued under the key) each
        text carries: every candidate scored by its exact tail, the best corrected for the number
        of candidates (``detector.records``), a match when that is at most ``alpha``."""
        if not self.key.config.supports_payload:
            raise ParameterError(f"{self.key.scheme} keys carry no payload: there are no records to attribute")
        if self.scheme.reads_text:  # the synonym detector reads the words, not token ids
            return match_records_batch(self.detector(alpha), [require_text(t) for t in texts], candidates)
        ids = token_ids if token_ids is not None else self.token_ids([require_text(t) for t in texts])
        return match_records_batch(self.detector(alpha), ids, candidates)

    def detect_and_attribute(self, texts: Sequence[str], candidates, *, alpha: float = DEFAULT_ALPHA,
                             token_ids: Sequence | None = None) -> tuple[list[DetectionResult], list[RecordMatch | None]]:
        """``detect`` and ``attribute`` of the same texts at the same ``alpha``, the scored pairs and
        their per-pair evidence computed once for both (``Detector.detect_with_tables``): what verify
        asks of a key. With no candidates (None or empty: a zero-bit key, or no record issued) the
        record tests are None."""
        if candidates is None or len(candidates) == 0:
            return self.detect(texts, alpha=alpha, token_ids=token_ids), [None] * len(texts)
        if not self.key.config.supports_payload:
            return self.detect(texts, alpha=alpha, token_ids=token_ids), self.attribute(texts, candidates, alpha=alpha,
                                                                                       token_ids=token_ids)
        detector = self.detector(alpha)
        if self.scheme.reads_text:  # words are cut and hashed once for both tests
            results, tables = detector.detect_with_tables(list(texts))
            return results, match_tables(detector, tables, candidates)
        ids = token_ids if token_ids is not None else self.token_ids([require_text(t) for t in texts])
        results, tables = detector.detect_with_tables(ids)
        return results, match_tables(detector, tables, candidates)

    def explain(self, text: str, *, alpha: float = DEFAULT_ALPHA, min_tokens: int | None = None) -> Explanation:
        """``detect`` of one text, with the evidence of every token (word, for the synonym scheme)."""
        detector = self.detector(alpha)
        tokenizer = None if detector.reads_text else self.models.tokenizer()
        explanation = _explain_text(detector, require_text(text), tokenizer)
        if min_tokens is not None:
            self._require_scored(explanation.result.num_scored_tokens, min_tokens)
        return explanation

    def locate_caveat(self) -> str | None:
        """Why ``detect(..., locate=True)`` may miss a pasted span with this key (None: it should not)."""
        return getattr(self.detector(), "locate_caveat", None)

    def _require_scored(self, scored: int, min_tokens: int) -> None:
        need = max(min_tokens, 1)
        if scored < need:
            unit = "eligible words" if self.scheme.reads_text else "scorable tokens"
            raise InvalidTextError(f"text too short to score: {scored} {unit}, need at least {need}")


def embed(key: WatermarkKey, models: Models | None = None, **inputs) -> list:
    """``Watermark(key, models).embed(**inputs)``."""
    return Watermark(key, models).embed(**inputs)


def detect_text(key: WatermarkKey, text: str, tokenizer=None, *, alpha: float = DEFAULT_ALPHA, min_tokens: int = 0,
                proxy=None) -> DetectionResult:
    """Detect the key's watermark in one text (tokenised with ``tokenizer``, no special tokens
    added; a detector that reads text needs none). Raises ``InvalidTextError`` for empty text and
    for text with fewer than ``max(min_tokens, 1)`` scored tokens."""
    (result,) = Watermark(key, Models(tokenizer=tokenizer), proxy=proxy).detect([text], alpha=alpha,
                                                                               min_tokens=min_tokens)
    return result


def explain_text(key: WatermarkKey, text: str, tokenizer=None, *, alpha: float = DEFAULT_ALPHA,
                 proxy=None) -> Explanation:
    """``Watermark.explain`` of one text with a tokenizer (and proxy) already in hand."""
    return Watermark(key, Models(tokenizer=tokenizer), proxy=proxy).explain(text, alpha=alpha)
