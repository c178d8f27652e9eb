"""Request and response bodies of the HTTP API (pydantic), with their limits.

Strings refuse lone UTF-16 surrogates (JSON allows ``"\\ud800"``, UTF-8 does not) and metadata
must serialise as strict JSON (no NaN or infinity) within ``MAX_METADATA_BYTES``, so every stored
and echoed value is valid JSON text.
"""

from __future__ import annotations

import json
from dataclasses import fields
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model

from provmark.detector.records import RecordMatch
from provmark.detector.result import DetectionResult
from provmark.detector.zero_shot import ZeroShotResult
from provmark.front import is_blank
from provmark.watermark.params import attribute_docs, scheme_params
from provmark.watermark.schemes import SCHEMES

__all__ = [
    "AttributionOptions",
    "AttributionOut",
    "EmbedRequest",
    "EmbedResponse",
    "ErrorBody",
    "GenerateRequest",
    "GenerateResponse",
    "Health",
    "KeyCreate",
    "KeyParams",
    "KeyList",
    "KeyOut",
    "KeyPatch",
    "RecordOut",
    "TextAttributionOptions",
    "VerifyBatchRequest",
    "VerifyBatchResponse",
    "VerifyRequest",
    "VerifyResponse",
]

MAX_METADATA_BYTES = 16 * 1024
MAX_TEXT_CHARS = 200_000
MAX_BATCH = 32
MAX_KEYS_PER_VERIFY = 64
MAX_EMBED_CHARS = 20_000


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from None
    return value


def _not_blank(value: str) -> str:
    if is_blank(value):
        raise ValueError("must contain some visible text (not only whitespace or zero-width characters)")
    return value


def _json_object(value: dict) -> dict:
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        size = len(text.encode("utf-8"))
    except ValueError:
        raise ValueError("must be strict JSON: no NaN or infinite numbers") from None
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from None
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"must serialise to at most {MAX_METADATA_BYTES} bytes of JSON, got {size}")
    return value


def _integral(value):
    # JSON Schema counts 5.0 as an integer; strict pydantic would not.
    return int(value) if isinstance(value, float) and value.is_integer() else value


Int = Annotated[int, BeforeValidator(_integral)]
"""An integer that also accepts integral floats. Inside ``X | None`` put bounds before the validator
(as ``seed`` does), or pydantic writes them into the OpenAPI schema as ``ge``/``le``, not
``minimum``/``maximum``."""
# The schema states "some non-whitespace" as a pattern; _not_blank enforces it with a clearer message.
_SOME_TEXT = {"pattern": r"\S"}
Prose = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS, json_schema_extra=_SOME_TEXT), AfterValidator(_utf8),
                  AfterValidator(_not_blank)]
Identifier = Annotated[str, Field(min_length=1, max_length=100)]
Metadata = Annotated[dict[str, Any], AfterValidator(_json_object)]


def _known_scheme(value: str) -> str:
    if value not in SCHEMES:
        raise ValueError(f"unknown scheme {value!r}; known schemes: {', '.join(sorted(SCHEMES))}")
    return value


# The registry is read when a request is validated and when the OpenAPI schema is written, so a
# scheme registered after this module loads (a plugin) is accepted and listed.
Scheme = Annotated[str, AfterValidator(_known_scheme),
                   Field(json_schema_extra=lambda schema: schema.update(enum=list(SCHEMES)))]


class _Request(BaseModel):
    # Strict: "5" is not an integer nor "true" a boolean; what the schema refuses, the API refuses.
    model_config = ConfigDict(extra="forbid", strict=True)


class ErrorItem(BaseModel):
    field: str | None
    """The request field the problem concerns, dotted for nested ones (``texts.2``)."""
    message: str
    type: str


class ErrorBody(BaseModel):
    """Every error response has this shape (``api.errors``)."""

    ok: Literal[False]
    status: int
    error: str
    errors: list[ErrorItem] = Field(min_length=1)


def _key_params() -> type[BaseModel]:
    """``KeyParams``: one optional field per scheme parameter, derived from the config dataclasses
    (``watermark.params``: type, choices, help); the configs validate the values."""
    types = {int: Int, float: float, str: str}
    fields = {
        param.name: ((Literal[param.choices] if param.choices else types[param.type]) | None,
                     Field(None, description=param.help))
        for param in scheme_params().values()
    }
    return create_model("KeyParams", __base__=_Request, __module__=__name__, __doc__=(
        "Scheme parameters, as for ``provmark keys create``; the scheme's own defaults fill the rest,\n"
        "and its config checks ranges and the parameters it does not have (a 422 naming ``params``)."), **fields)


KeyParams = _key_params()


class KeyCreate(_Request):
    scheme: Scheme
    params: KeyParams = Field(default_factory=KeyParams)
    public_verify: bool = Field(False, description="Let callers without a token verify texts against this key.")


class KeyPatch(_Request):
    public_verify: bool


class KeyOut(BaseModel):
    key_id: str
    scheme: str
    params: dict[str, Any]
    prf_version: str
    status: Literal["active", "retired"]
    public_verify: bool
    created_at: str
    retired_at: str | None
    replaced_by: str | None
    capacity: int | None = Field(description="Distinct payloads (null for zero-bit keys).")
    records: int


class KeyList(BaseModel):
    keys: list[KeyOut]


class RecordOut(BaseModel):
    id: str = Field(description="<key_id>.<number>; for multi-bit keys the number is the payload in the text.")
    tenant: str
    key_id: str
    number: int
    scheme: str
    params: dict[str, Any]
    prf_version: str
    payload: int | None
    payload_hex: str | None
    model: str | None
    metadata: dict[str, Any] | None = Field(description="Caller-supplied; null when verified through a public key.")
    created_at: str
    text_sha256: str | None
    status: Literal["complete", "generating", "incomplete"] = Field(description=(
        "complete; generating while a streamed completion runs; incomplete when its client left mid-stream "
        "(no text hash: found by payload only)."))


class GenerateRequest(_Request):
    key_id: Identifier
    prompt: Annotated[str, Field(min_length=1, max_length=8000, json_schema_extra=_SOME_TEXT), AfterValidator(_utf8),
                      AfterValidator(_not_blank)]
    max_new_tokens: Int = Field(200, ge=1, le=1024)
    temperature: float = Field(1.0, ge=0.01, le=5, description="Below 0.01 the scaled logits overflow.")
    seed: Annotated[int, Field(ge=0, le=2**32 - 1), BeforeValidator(_integral)] | None = None  # bounds first: see Int
    chat: bool | None = Field(None, description="Apply the model's chat template (default: when it has one).")
    metadata: Metadata = Field(default_factory=dict, description="Stored on the record as given (a JSON object).")


class GenerateResponse(BaseModel):
    text: str
    num_tokens: int
    record: RecordOut


class EmbedRequest(_Request):
    key_id: Identifier
    text: Annotated[str, Field(min_length=1, max_length=MAX_EMBED_CHARS, json_schema_extra=_SOME_TEXT),
                    AfterValidator(_utf8), AfterValidator(_not_blank)] = Field(
        description="Finished text to watermark (synonym keys). Embedding ranks candidates with the model: "
                    "about 5 words a second on a CPU core.")
    metadata: Metadata = Field(default_factory=dict, description="Stored on the record as given (a JSON object).")


class SubstitutionOut(BaseModel):
    start: int = Field(description="Character offset of the replaced word in the original text.")
    end: int
    original: str
    replacement: str


class EmbedResponse(BaseModel):
    text: str = Field(description="The text watermarked; every character outside the replaced words as given.")
    num_words: int
    num_eligible: int
    substitutions: list[SubstitutionOut]
    record: RecordOut


class AttributionOptions(_Request):
    """The generation setting the zero-shot attribution tests against: the serving model's sampling
    distribution after temperature, top-k and top-p (``detector.zero_shot.SamplingSettings``)."""

    temperature: float = Field(1.0, ge=0.01, le=5, description="The temperature the text would have been sampled at.")
    top_k: Int = Field(0, ge=0, le=1_000_000, description="Top-k of the generation setting; 0 keeps every id.")
    top_p: float = Field(1.0, gt=0, le=1, description="Top-p (nucleus) of the generation setting; 1 keeps every id.")


class TextAttributionOptions(AttributionOptions):
    prompt: Annotated[str, Field(min_length=1, max_length=8000, json_schema_extra=_SOME_TEXT), AfterValidator(_utf8),
                      AfterValidator(_not_blank)] | None = Field(None, description=(
        "The prompt the text answered: the text is then scored in that context (the registry keeps no prompts; "
        "without one the text is scored alone)."))
    chat: bool | None = Field(None, description="Put the prompt through the model's chat template (default: when it "
                                                "has one), as /v1/generate does.")


_ATTRIBUTION_DOC = (
    "Also test whether the serving model wrote the text (zero-shot test (a), no key needed; off by default): true "
    "tests against temperature 1, an object gives the generation setting. Costs one forward pass of the model over "
    "the text, counted in the tokens scored (work budget and rate limit); a text over the server's attribution cap "
    "is refused (422) and a model that cannot load gives 503.")


def _switch(value):
    # true is the default setting and false is off; anything else is validated as the options object,
    # so that its errors name the option at fault (a bool | object union would report both branches).
    return {} if value is True else None if value is False else value


def _attribution_field(options: type[BaseModel], doc: str):
    """The ``attribution`` field of a verify request: false (the default), true, or ``options``."""
    def schema(field_schema: dict) -> None:
        field_schema["anyOf"] = [{"type": "boolean"}] + [s for s in field_schema["anyOf"] if s != {"type": "null"}]

    return Annotated[options | None, BeforeValidator(_switch), Field(False, description=doc, json_schema_extra=schema)]


class _VerifyOptions(_Request):
    key_ids: list[Identifier] | None = Field(
        None, max_length=MAX_KEYS_PER_VERIFY, description="Test only these keys (default: every key the caller may use).")
    alpha: float = Field(1e-3, ge=1e-300, lt=1, description=(
        "Family-wise false-positive rate over the keys tested; each key decides at alpha / keys, which must stay "
        "a positive float."))
    min_tokens: Int = Field(10, ge=1, le=100_000)
    nearest: Int = Field(5, ge=0, le=50, description="Nearest records listed when a payload matches none.")


class VerifyRequest(_VerifyOptions):
    text: Prose
    attribution: _attribution_field(TextAttributionOptions, _ATTRIBUTION_DOC)


class VerifyBatchRequest(_VerifyOptions):
    texts: list[Prose] = Field(min_length=1, max_length=MAX_BATCH)
    attribution: _attribution_field(AttributionOptions, _ATTRIBUTION_DOC + " Every text is scored alone.")


class NearRecordOut(BaseModel):
    record: RecordOut
    bit_distance: float
    bits_differ: int


def _listed(annotation):
    """A dataclass field's type as JSON carries it: tuples (any length) become lists."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is tuple:
        items = {_listed(a) for a in args if a is not Ellipsis}
        return list[items.pop() if len(items) == 1 else Any]
    if origin in (Union, UnionType):
        return Union[tuple(_listed(a) for a in args)]
    return annotation


def _dataclass_fields(cls) -> dict:
    """Every field of a result dataclass as a required pydantic field, typed as JSON carries it and
    described by the docstring under it."""
    docs, hints = attribute_docs(cls), get_type_hints(cls)
    return {f.name: (_listed(hints[f.name]), Field(..., description=docs.get(f.name))) for f in fields(cls)}


RecordTestOut = create_model(
    "RecordTestOut", __module__=__name__,
    __doc__=("The record test: every record the key has issued scored on the text (``RecordMatch``, "
             "every field), the best corrected for the number scored."),
    **_dataclass_fields(RecordMatch),
    record_id=(str | None, Field(..., description="The best candidate's record id (<key_id>.<payload>).")),
    runner_up_record_id=(str | None, Field(..., description="The runner-up's record id.")),
    open_set_agrees=(bool | None, Field(..., description=(
        "Whether the open-set decode (the payload read bit by bit, no registry) names the same record."))),
)


def _verification_out() -> type[BaseModel]:
    """``KeyVerificationOut``: every field of ``DetectionResult`` (derived, so a new result field
    reaches the API), then the record the text points to."""
    return create_model(
        "KeyVerificationOut", __module__=__name__,
        __doc__="A ``DetectionResult`` (every field) and the record the text points to.",
        **_dataclass_fields(DetectionResult),
        match=(Literal["text", "payload", "record"] | None, Field(..., description=(
            '"text": the record whose text has this hash; "record": the record test attributed the text '
            '(``record_test``); "payload": not produced since record-level attribution (kept for old clients).'))),
        record=(RecordOut | None, ...),
        nearest_records=(list[NearRecordOut], ...),
        note=(str | None, ...),
        capped_at=(int | None, Field(None, description="This key scored only the first this many tokens (words, for a "
                                     "synonym key) of the text: the server's per-key work cap (Balance-Marking's "
                                     "proxy LM, synonym analysis); the verdict covers that prefix.")),
        error=(str | None, Field(None, description="Why this key gave no verdict (its detection failed): the result "
                                 "is then p = 1 with nothing scored, and the other keys' results stand.")),
        record_test=(RecordTestOut | None, Field(None, description=(
            "Multi-bit keys with issued records: the record test over all of them."))),
    )


KeyVerificationOut = _verification_out()


class SamplingOut(BaseModel):
    temperature: float
    top_k: int
    top_p: float


AttributionOut = create_model(
    "AttributionOut", __module__=__name__,
    __doc__=("Zero-shot attribution to the serving model (``detector.zero_shot.ZeroShotResult``, every field): test "
             "(a), whether the text is consistent with the model's samples under the setting, and how it was scored."),
    **_dataclass_fields(ZeroShotResult) | {
        "z_score": (float | Literal["inf"], Field(..., description=(
            "S_N / sqrt(V_N), the standardised sum of surprisal minus entropy (> 0: less predictable than the "
            'model\'s samples; "inf" when a token lies outside the setting\'s support).'))),
        "log10_p_value_model": (float | Literal["-inf"], Field(..., description="log10 of p_value_model.")),
        "sampling": (SamplingOut, Field(..., description="The setting tested against.")),
        "note": (str, Field(..., description="How the text was scored (after a prompt, or alone) and what was not run.")),
    },
)


class VerifyResponse(BaseModel):
    text_sha256: str
    num_tokens: int = Field(description=(
        "Tokens of the text; when every key tested reads a capped prefix (balance, synonym), the text is "
        "tokenised only that far and this counts the tokens read."))
    watermarked: bool
    results: list[KeyVerificationOut]
    attribution: AttributionOut | None = Field(None, description=(
        "Present when the request asked for it: zero-shot attribution to the serving model, independent of the keys."))


class VerifyBatchResponse(BaseModel):
    items: list[VerifyResponse]


class Health(BaseModel):
    ok: bool
    schema_version: int
    version: str

