"""OpenAI-compatible endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``.

An application that speaks OpenAI's protocol gets watermarked text under provenance records by
pointing its client at ``provmark serve`` (``base_url=http://host:port/v1``) with a tenant's API token
as its API key. The request and response bodies follow OpenAI's schemas for the fields that apply
(messages, max_tokens / max_completion_tokens, temperature, top_p, n, stop, seed, stream,
stream_options.include_usage, user, metadata); any other field is refused with the API's one error
shape (422 naming the field), so nothing a caller asks for is silently ignored.

**The key.** ``model`` chooses it: one of the caller's key ids (``k_...``, see ``GET /v1/models``)
names that key; any other name gets the tenant's default generation key, its newest active key
whose scheme watermarks while the model generates (so a client's hard-coded model name works
unchanged). The response's ``model`` is always the model that served it.

**Records.** Every choice is a new record under the key, its number the payload (multi-bit keys),
its metadata ``{"endpoint", "user", ...metadata}``. Its id is in the choice (``provmark_record``)
and in the ``X-Provmark-Record`` header (choices' ids in order, comma-separated). A request's choices
are one batch (``api.batching``), decoded together with other callers' requests.

**Streaming** (``stream: true``): server-sent events in OpenAI's chunk format, each token's text
sent as it is sampled; each choice's first chunk carries its ``provmark_record``. The record stores
the text's hash when the choice ends; a client that disconnects before then leaves the record
"incomplete" (no hash), never with the hash of a partial text.

**Load.** Requests wait in the process's bounded generation queue; when it is full the answer is
503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import AfterValidator, Field

from provmark.api import schemas
from provmark.api.batching import Delta, Done, Failed, Finished, GenerationQueue, Job, QueueFullError
from provmark.api.errors import ConflictError, InvalidInputError, NotFoundError, error_body
from provmark.api.limits import retry_after
from provmark.api.registry import KeyInfo, Registry, Tenant
from provmark.api.schemas import Int, _Request, _utf8
from provmark.errors import ModelLoadError
from provmark.watermark.models import Models
from provmark.watermark.schemes import get_scheme
from provmark.watermark.streaming import RowRequest

__all__ = ["RECORD_HEADER", "ChatCompletionRequest", "CompletionRequest", "openai_router"]

RECORD_HEADER = "X-Provmark-Record"
MAX_CHOICES = 8
"""Choices per request (``n`` times the prompts of a completion request): one batch."""
MAX_NEW_TOKENS = 1024

_Text = Annotated[str, Field(max_length=32_000), AfterValidator(_utf8)]
_MaxTokens = Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS)]


class TextPart(_Request):
    type: Literal["text"]
    text: _Text


class Message(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: _Text | list[TextPart] = Field(description="Text, or a list of text parts (no images or audio).")
    name: Annotated[str, Field(max_length=64)] | None = Field(None, description="Accepted; the chat template ignores it.")


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    model: Annotated[str, Field(min_length=1, max_length=100)] = Field(description=(
        "One of your key ids (k_...) to generate under it; any other name uses your newest active generation key."))
    temperature: float = Field(1.0, ge=0, le=2, description="0: the most likely token of the watermarked distribution.")
    top_p: float = Field(1.0, gt=0, le=1)
    n: Int = Field(1, ge=1, le=MAX_CHOICES)
    stop: Annotated[str, Field(min_length=1, max_length=64)] | Annotated[
        list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=4)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Annotated[str, Field(max_length=256)] | None = Field(None, description="Stored in each record's metadata.")


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1, max_length=256)
    max_tokens: _MaxTokens | None = None
    max_completion_tokens: _MaxTokens | None = Field(None, description="Wins over max_tokens; default 256.")
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(
        None, max_length=16, description="Stored in each record's metadata.")


class CompletionRequest(_Sampling):
    prompt: Annotated[str, Field(min_length=1, max_length=32_000), AfterValidator(_utf8)] | Annotated[
        list[Annotated[str, Field(min_length=1, max_length=32_000), AfterValidator(_utf8)]],
        Field(min_length=1, max_length=MAX_CHOICES)]
    max_tokens: _MaxTokens = 16


def _seed(seed: int | None, choice: int) -> int | None:
    """Choice ``choice``'s own seed, derived from the request's (choices of one seed differ)."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"provmark/choice-seed\x00{seed}\x00{choice}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _generation_key(registry: Registry, tenant: Tenant, model: str) -> KeyInfo:
    """The key ``model`` names, or the tenant's default generation key (module docstring)."""
    if model.startswith("k_"):
        try:
            key = registry.key(model, tenant_id=tenant.id)
        except NotFoundError:
            raise NotFoundError(f"no key {model!r} (a model name starting with k_ names one of your keys)",
                                field="model") from None
        if key.status != "active":
            raise ConflictError(f"key {model} is retired; use its successor {key.replaced_by}", field="model")
        if not get_scheme(key.scheme).generation_time:
            raise InvalidInputError(f"key {model} is a {key.scheme} key, which watermarks finished text: "
                                    "use /v1/embed", field="model")
        return key
    keys = [k for k in registry.keys(tenant.id) if k.status == "active" and get_scheme(k.scheme).generation_time]
    if not keys:
        raise InvalidInputError("you have no active key that watermarks while generating: create one "
                                "(POST /v1/keys, e.g. scheme mpac) or name one as the model", field="model")
    return keys[-1]


def _epoch(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso).timestamp())


class _EventStream(StreamingResponse):
    """A streaming response that runs ``on_close`` when it stops sending, whether the stream ended,
    the client disconnected (a failed send) or the task was cancelled."""

    def __init__(self, content, *, on_close: Callable[[], None], **kwargs):
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            self._on_close()


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, separators=(',', ':'))}\n\n"


def openai_router(registry: Registry, models: Models, tenant: Callable[..., Awaitable[Tenant]], *,
                  queue: GenerationQueue | None = None) -> APIRouter:
    """The OpenAI-compatible routes over ``registry`` and ``models``; ``tenant`` is the app's
    authenticating dependency (bearer token -> tenant, rate limited). ``queue`` defaults to a new
    ``GenerationQueue`` (one per app, so one per server process)."""
    queue = queue or GenerationQueue(models, registry)
    router = APIRouter(tags=["openai"])
    errors = {status: {"model": schemas.ErrorBody, "description": text} for status, text in {
        401: "Missing, malformed or unknown API token.", 404: "No such key (model k_...) for this caller.",
        409: "The key named is retired or exhausted.", 422: "A field is invalid or not supported.",
        429: "Rate limit exceeded.", 503: "The generation queue is full (Retry-After) or the model cannot load.",
    }.items()}

    @router.get("/v1/models", responses=errors)
    def list_models(who: Tenant = Depends(tenant)) -> dict:
        """The serving model and the caller's active generation keys, each usable as ``model``."""
        data = [{"id": models.name, "object": "model", "created": 0, "owned_by": "provmark",
                 "provmark_key": None}]
        for key in registry.keys(who.id):
            if key.status == "active" and get_scheme(key.scheme).generation_time:
                data.append({"id": key.key_id, "object": "model", "created": _epoch(key.created_at),
                             "owned_by": who.name, "provmark_key": {"scheme": key.scheme, "params": key.params}})
        return {"object": "list", "data": data}

    @router.post("/v1/chat/completions", responses=errors)
    async def chat_completions(body: ChatCompletionRequest, who: Tenant = Depends(tenant)):
        """OpenAI chat completions, watermarked: one new provenance record per choice."""
        tokenizer = models.tokenizer()
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidInputError("the serving model has no chat template: use /v1/completions", field="messages")
        messages = [{"role": "system" if m.role == "developer" else m.role,
                     "content": m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)}
                    for m in body.messages]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        max_new = body.max_completion_tokens or body.max_tokens or 256
        extra = {"endpoint": "chat.completions", **({"user": body.user} if body.user else {}), **(body.metadata or {})}
        return await _complete(body, [prompt_ids], max_new, extra, who, chat=True)

    @router.post("/v1/completions", responses=errors)
    async def completions(body: CompletionRequest, who: Tenant = Depends(tenant)):
        """OpenAI (legacy) completions of raw text, watermarked: one new provenance record per choice."""
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) * body.n > MAX_CHOICES:
            raise InvalidInputError(f"{len(prompts)} prompts x n = {body.n} is more than {MAX_CHOICES} choices",
                                    field="n")
        tokenizer = models.tokenizer()
        prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
        extra = {"endpoint": "completions", **({"user": body.user} if body.user else {})}
        return await _complete(body, prompt_ids, body.max_tokens, extra, who, chat=False)

    async def _complete(body: _Sampling, prompts: list[list[int]], max_new: int, metadata: dict, who: Tenant,
                        *, chat: bool):
        limit = await anyio.to_thread.run_sync(_context_limit)  # loads the model on first use
        for index, ids in enumerate(prompts):
            if not ids or (limit is not None and len(ids) + max_new > limit):
                field = "messages" if chat else ("prompt" if len(prompts) == 1 else f"prompt.{index}")
                problem = "is no tokens" if not ids else f"has {len(ids)} tokens; with {max_new} new tokens that exceeds " \
                                                         f"the model's context of {limit}"
                raise InvalidInputError(f"the prompt {problem}", field=field)
        key = _generation_key(registry, who, body.model)
        choices = len(prompts) * body.n
        try:
            queue.reserve(choices)
        except QueueFullError as exc:
            return JSONResponse(error_body(503, [{"field": None, "message": str(exc), "type": "overloaded"}]),
                                status_code=503, headers={"Retry-After": retry_after(exc.retry_after)})
        try:
            records = await anyio.to_thread.run_sync(lambda: [
                registry.new_record(key.key_id, tenant_id=who.id, model=models.name, metadata=metadata,
                                    status="generating") for _ in range(choices)])
        except BaseException:
            queue.release(choices)
            raise
        try:
            watermark_key = registry.watermark_key(key.key_id)
            rows = [RowRequest(prompt_ids=tuple(prompts[i // body.n]), key=watermark_key, payload=record.payload,
                               max_new_tokens=max_new, temperature=body.temperature, top_p=body.top_p,
                               seed=_seed(body.seed, i)) for i, record in enumerate(records)]
        except BaseException:
            queue.release(choices)
            for record in records:
                registry.delete_record(record.id)
            raise
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def notify(event):
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is gone (server shutting down)
                pass

        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        job = Job(rows=rows, record_ids=[r.id for r in records], stop=stop, streaming=body.stream, notify=notify)
        queue.submit(job)
        shape = _Shape(chat=chat, model=models.name, prompt_tokens=sum(len(prompts[i // body.n]) for i in range(choices)))
        headers = {RECORD_HEADER: ",".join(r.id for r in records)}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _EventStream(_stream(shape, records, events, include_usage), on_close=job.cancel,
                                media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"})
        finished: dict[int, Finished] = {}
        while True:
            event = await events.get()
            if isinstance(event, Finished):
                finished[event.index] = event
            elif isinstance(event, Failed):
                raise event.error
            elif isinstance(event, Done):
                break
        return JSONResponse(shape.response([finished[i] for i in range(choices)]), headers=headers)

    def _context_limit() -> int | None:
        loaded = models.loaded()
        return getattr(loaded.model.config, "max_position_embeddings", None)

    return router


class _Shape:
    """OpenAI's response and chunk bodies for one request."""

    def __init__(self, *, chat: bool, model: str, prompt_tokens: int):
        self.chat = chat
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())

    def _envelope(self, choices: list[dict], chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": choices}

    def _usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def response(self, finished: list[Finished]) -> dict:
        if self.chat:
            choices = [{"index": f.index, "message": {"role": "assistant", "content": f.text, "refusal": None},
                        "finish_reason": f.reason, "logprobs": None, "provmark_record": f.record.id} for f in finished]
        else:
            choices = [{"index": f.index, "text": f.text, "finish_reason": f.reason, "logprobs": None,
                        "provmark_record": f.record.id} for f in finished]
        return {**self._envelope(choices, chunk=False), "usage": self._usage(sum(f.completion_tokens for f in finished))}

    def chunk(self, index: int, text: str | None = None, *, reason: str | None = None, first: bool = False,
              record: str | None = None) -> dict:
        if self.chat:
            delta = {} if text is None else {"content": text}
            if first:
                delta = {"role": "assistant", "content": ""}
            choice = {"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}
        if record is not None:
            choice["provmark_record"] = record
        return self._envelope([choice], chunk=True)

    def usage_chunk(self, completion_tokens: int) -> dict:
        return {**self._envelope([], chunk=True), "usage": self._usage(completion_tokens)}


async def _stream(shape: _Shape, records, events: asyncio.Queue, include_usage: bool):
    """The SSE body: each choice's first chunk with its record id, then text as it is sampled,
    a finish chunk per choice, the usage chunk when asked, and ``[DONE]``."""
    for index, record in enumerate(records):
        yield _sse(shape.chunk(index, first=True, record=record.id))
    completion_tokens = 0
    while True:
        event = await events.get()
        if isinstance(event, Delta):
            yield _sse(shape.chunk(event.index, event.text))
        elif isinstance(event, Finished):
            completion_tokens += event.completion_tokens
            yield _sse(shape.chunk(event.index, reason=event.reason))
        elif isinstance(event, Failed):
            # Mid-stream the status line is long gone: the error travels as an event, in OpenAI's
            # in-stream form ({"error": {"message", "type", "code"}}), with the API's error items.
            if isinstance(event.error, ModelLoadError):
                status, kind, message = 503, "unavailable", str(event.error)
            else:
                status, kind, message = 500, "internal", "generation failed (logged)"
            items = [{"field": None, "message": message, "type": kind}]
            yield _sse({"error": {"message": message, "type": kind, "code": status, "param": None, "errors": items}})
            return
        elif isinstance(event, Done):
            break
    if include_usage:
        yield _sse(shape.usage_chunk(completion_tokens))
    yield _sse("[DONE]")
