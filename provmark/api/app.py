"""The HTTP API (FastAPI): keys, generation, verification and records over the registry.

``create_app`` builds the app around an open ``Registry``. ``provmark serve`` runs it with uvicorn in
one or more worker processes, each of which builds its own app with ``app_from_environment`` from the
``ServeSettings`` serve leaves in its environment.
Every error, from any layer, is one JSON shape (``api.errors``): the handlers below translate
registry errors, request validation, unknown routes and the limits into it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass

import anyio

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

import provmark
from provmark.api import schemas
from provmark.api.auth import token_digest
from provmark.api.crypto import MasterKeyError
from provmark.api.errors import APIError, AuthError, InvalidInputError, NotFoundError, RateLimitedError, error_body
from provmark.api.limits import DEFAULT_BURST, DEFAULT_MAX_BODY_BYTES, DEFAULT_RATE, RateLimiter, retry_after
from provmark.api.provenance import KeyVerification, Models, Provenance, TextVerification
from provmark.api.registry import KeyInfo, KeyRef, Record, Registry, Tenant
from provmark.api.stores import StoreUnavailableError
from provmark.errors import ModelLoadError, ProvmarkError

__all__ = ["SERVE_SETTINGS_ENV", "BodyLimit", "ServeSettings", "app_from_environment", "create_app"]

_log = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False, description="An API token from `provmark tenants create`.")

_ERRORS = {
    status: {"model": schemas.ErrorBody, "description": description}
    for status, description in {
        400: "Malformed request body.",
        401: "Missing, malformed or unknown API token.",
        404: "No such key or record for this caller.",
        409: "The registry refuses the request in its current state (retired or exhausted key).",
        413: "Request body over the size limit.",
        422: "A field is invalid; `errors[].field` names it.",
        429: "Rate limit exceeded; see the Retry-After header.",
    }.items()
}


def _error_response(status: int, errors: list[dict], headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, errors), status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413 (declared or streamed)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = _error_response(
            413, [{"field": "body", "message": f"request body exceeds {self.max_bytes} bytes", "type": "too_large"}]
        )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await too_large(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, receive, send)  # client went away; let the app see it
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await too_large(scope, receive, send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        return await self.app(scope, replay, send)


def _field(loc) -> str:
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "query", "path", "header") else [str(p) for p in loc]
    return ".".join(parts) or "body"


@dataclass(frozen=True)
class Caller:
    tenant: Tenant | None


def _key_out(info: KeyInfo) -> schemas.KeyOut:
    return schemas.KeyOut(**{k: v for k, v in info.to_dict().items() if k != "tenant_id"})


def _record_out(record: Record, *, public: bool = False) -> schemas.RecordOut:
    return schemas.RecordOut(**{k: v for k, v in record.to_dict(public=public).items() if k != "tenant_id"})


def _verification_out(item: KeyVerification) -> schemas.KeyVerificationOut:
    return schemas.KeyVerificationOut(
        **item.result.to_dict(),
        match=item.match,
        record=None if item.record is None else _record_out(item.record, public=item.public),
        nearest_records=[
            schemas.NearRecordOut(record=_record_out(n.record, public=item.public), bit_distance=n.bit_distance,
                                  bits_differ=n.bits_differ)
            for n in item.nearest
        ],
        note=item.note,
    )


def _text_out(item: TextVerification) -> schemas.VerifyResponse:
    return schemas.VerifyResponse(
        text_sha256=item.text_sha256, num_tokens=item.num_tokens, watermarked=item.watermarked,
        results=[_verification_out(k) for k in item.results],
    )


def create_app(
    registry: Registry,
    *,
    models: Models | None = None,
    rate: float = DEFAULT_RATE,
    burst: int = DEFAULT_BURST,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    verify_workers: int = os.cpu_count() or 1,
    processes: int = 1,
) -> FastAPI:
    """The API over ``registry`` (opened with its master key).

    Args:
        models: the serving model (default: the embedded SmolLM2, loaded on first use).
        rate, burst: token-bucket rate limit per API token (per address without one); rate 0 is off.
        max_body_bytes: larger request bodies get 413.
        verify_workers: verifications run at once (default: one per CPU core).
        processes: server processes sharing the limit (``serve --workers``); this one enforces its
            share of ``rate`` and ``burst`` (see ``RateLimiter``).
    """
    provenance = Provenance(registry, models or Models())
    limiter = RateLimiter(rate=rate, burst=burst, processes=processes)
    split = f", shared by {processes} server processes" if processes > 1 else ""
    app = FastAPI(
        title="provmark",
        version=provmark.__version__,
        description="Watermarked generation under provenance records, and verification of text back to its record.",
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    # -- errors: one shape everywhere ---------------------------------------------------------

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        headers = {"Retry-After": retry_after(exc.retry_after)} if isinstance(exc, RateLimitedError) else None
        if isinstance(exc, AuthError):
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = []
        for e in exc.errors():
            message = e["msg"]
            if e["type"] == "json_invalid":
                field, message = "body", f"invalid JSON: {e.get('ctx', {}).get('error', message)}"
            else:
                field = _field(e["loc"])
            errors.append({"field": field, "message": message, "type": e["type"]})
        return _error_response(422, errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        field = {404: "path", 405: "method"}.get(exc.status_code, "body" if exc.status_code == 400 else None)
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette names the methods of the first route on the path; FastAPI has one route per method.
            path = request.scope["path"]
            methods = {m for r in app.routes if isinstance(r, APIRoute) and r.path_regex.match(path) for m in r.methods}
            headers = {"Allow": ", ".join(sorted(methods))}
        return _error_response(exc.status_code, [{"field": field, "message": str(exc.detail), "type": "http"}],
                               headers=headers)

    @app.exception_handler(ProvmarkError)
    async def library_error(request: Request, exc: ProvmarkError):
        if isinstance(exc, (ModelLoadError, MasterKeyError, StoreUnavailableError)):
            _log.error("service unavailable: %s", exc)
            return _error_response(503, [{"field": None, "message": str(exc), "type": "unavailable"}])
        return _error_response(422, [{"field": None, "message": str(exc), "type": "invalid"}])

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        _log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error_response(500, [{"field": None, "message": "internal error (logged)", "type": "internal"}])

    # -- authentication and rate limiting -----------------------------------------------------

    # Async on purpose: a sync dependency costs a threadpool round trip per request (two handoffs
    # of the GIL, each of which can wait behind a busy verify thread), while the work here is a
    # SHA-256 and one indexed SELECT. The SELECT takes the registry lock, so it can wait on the
    # event loop for a write transaction in flight (its fsync, milliseconds).
    async def caller(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Caller:
        header = request.headers.get("authorization")
        tenant = problem = None
        if header is not None:
            if credentials is None or not credentials.credentials.strip():
                problem = "the Authorization header must be 'Bearer <token>'"
            else:
                tenant = registry.tenant_for_token(credentials.credentials.strip())
                problem = None if tenant is not None else "unknown API token"
        if tenant is not None:
            client = "token:" + token_digest(credentials.credentials.strip())
        else:
            client = "addr:" + (request.client.host if request.client else "unknown")
        wait = limiter.acquire(client)
        if wait:
            raise RateLimitedError(f"rate limit of {limiter.rate:g} requests/s (burst {limiter.burst}{split}) exceeded",
                                   retry_after=wait)
        if problem:
            raise AuthError(problem, field="authorization")
        return Caller(tenant)

    async def tenant(who: Caller = Depends(caller)) -> Tenant:
        if who.tenant is None:
            raise AuthError("this endpoint needs an API token: 'Authorization: Bearer <token>'", field="authorization")
        return who.tenant

    # -- routes -------------------------------------------------------------------------------

    @app.get("/healthz", response_model=schemas.Health, tags=["service"])
    def healthz() -> schemas.Health:
        """Liveness and schema version; needs no token."""
        return schemas.Health(ok=True, schema_version=registry.schema_version(), version=provmark.__version__)

    @app.post("/v1/keys", status_code=201, response_model=schemas.KeyOut, responses=_ERRORS, tags=["keys"])
    def create_key(body: schemas.KeyCreate, who: Tenant = Depends(tenant)) -> schemas.KeyOut:
        """Create a key for the caller's tenant; its secret is sealed in the registry and never returned."""
        try:
            info = registry.create_key(who.id, body.scheme, body.params.model_dump(exclude_none=True),
                                       public_verify=body.public_verify)
        except (ProvmarkError, TypeError) as exc:
            raise InvalidInputError(str(exc), field="params") from None
        return _key_out(info)

    @app.get("/v1/keys", response_model=schemas.KeyList, responses=_ERRORS, tags=["keys"])
    def list_keys(who: Tenant = Depends(tenant)) -> schemas.KeyList:
        """The caller's keys, active and retired, oldest first (never their secrets)."""
        return schemas.KeyList(keys=[_key_out(k) for k in registry.keys(who.id)])

    @app.patch("/v1/keys/{key_id}", response_model=schemas.KeyOut, responses=_ERRORS, tags=["keys"])
    def update_key(key_id: str, body: schemas.KeyPatch, who: Tenant = Depends(tenant)) -> schemas.KeyOut:
        """Open a key to public verification (no token needed) or close it."""
        return _key_out(registry.set_public_verify(key_id, body.public_verify, tenant_id=who.id))

    @app.post("/v1/keys/{key_id}/rotate", status_code=201, response_model=schemas.KeyOut, responses=_ERRORS,
              tags=["keys"])
    def rotate_key(key_id: str, who: Tenant = Depends(tenant)) -> schemas.KeyOut:
        """Retire an active key and return its successor (same scheme and parameters, new secret).
        The retired key still verifies the records issued under it."""
        return _key_out(registry.rotate_key(key_id, tenant_id=who.id))

    @app.post("/v1/generate", status_code=201, response_model=schemas.GenerateResponse,
              responses={**_ERRORS, 503: {"model": schemas.ErrorBody, "description": "The model cannot be loaded."}},
              tags=["provenance"])
    def generate(body: schemas.GenerateRequest, who: Tenant = Depends(tenant)) -> schemas.GenerateResponse:
        """Issue a record under the key and generate a watermarked continuation of the prompt whose
        payload is the record's number (multi-bit keys); the record stores the text's hash."""
        generation, record = provenance.generate(
            tenant_id=who.id, key_id=body.key_id, prompt=body.prompt, metadata=body.metadata, chat=body.chat,
            seed=body.seed, max_new_tokens=body.max_new_tokens, temperature=body.temperature,
        )
        return schemas.GenerateResponse(text=generation.text, num_tokens=len(generation.token_ids),
                                        record=_record_out(record))

    @app.post("/v1/embed", status_code=201, response_model=schemas.EmbedResponse,
              responses={**_ERRORS, 503: {"model": schemas.ErrorBody, "description": "The model cannot be loaded."}},
              tags=["provenance"])
    def embed(body: schemas.EmbedRequest, who: Tenant = Depends(tenant)) -> schemas.EmbedResponse:
        """Issue a record under a synonym key and watermark the caller's finished text with it
        (keyed synonym substitution); the record stores the watermarked text's hash, by which
        ``/v1/verify`` finds it."""
        embedding, record = provenance.embed(tenant_id=who.id, key_id=body.key_id, text=body.text,
                                             metadata=body.metadata)
        return schemas.EmbedResponse(
            text=embedding.text, num_words=embedding.num_words, num_eligible=embedding.num_eligible,
            substitutions=[schemas.SubstitutionOut(start=s.start, end=s.end, original=s.original,
                                                   replacement=s.replacement) for s in embedding.substitutions],
            record=_record_out(record),
        )

    # Detection is CPU work: it runs off the event loop in at most ``verify_workers`` threads, so
    # queued requests wait their turn instead of 40 threadpool threads contending for the GIL
    # (on 2 cores at 50 clients that cut the p99 latency from 1.5 s to 0.6 s).
    verify_slots = anyio.CapacityLimiter(verify_workers)

    async def run_verify(who: Caller, texts: list[str], options, fields: list[str] | None = None):
        def work():
            return provenance.verify(
                texts, verify_keys(who, options.key_ids), tenant_id=who.tenant and who.tenant.id,
                alpha=options.alpha, min_tokens=options.min_tokens, nearest=options.nearest, fields=fields,
            )

        return await anyio.to_thread.run_sync(work, limiter=verify_slots)

    def verify_keys(who: Caller, key_ids: list[str] | None) -> list[KeyRef]:
        if who.tenant is not None:
            pool = registry.key_refs(who.tenant.id)
        else:
            pool = registry.key_refs(public_only=True)
            if not pool:
                raise AuthError("verify needs an API token (no key is open to public verification)",
                                field="authorization")
        if key_ids is None:
            return pool
        by_id = {k.key_id: k for k in pool}
        for index, key_id in enumerate(key_ids):
            if key_id not in by_id:
                raise NotFoundError(f"no key {key_id!r}", field=f"key_ids.{index}")
        return [by_id[k] for k in dict.fromkeys(key_ids)]

    # The token is optional on verify (public keys), which the schema says with an empty alternative.
    optional_token = {"security": [{}]}  # appended to the bearer requirement FastAPI writes

    @app.post("/v1/verify", response_model=schemas.VerifyResponse, responses=_ERRORS, tags=["provenance"],
              openapi_extra=optional_token)
    async def verify(body: schemas.VerifyRequest, who: Caller = Depends(caller)) -> schemas.VerifyResponse:
        """Detect the text with every key the caller may use (its tenant's keys; without a token,
        the keys open to public verification) and return each result with the matching record."""
        (item,) = await run_verify(who, [body.text], body, fields=["text"])
        return _text_out(item)

    @app.post("/v1/verify/batch", response_model=schemas.VerifyBatchResponse, responses=_ERRORS, tags=["provenance"],
              openapi_extra=optional_token)
    async def verify_batch(body: schemas.VerifyBatchRequest, who: Caller = Depends(caller)) -> schemas.VerifyBatchResponse:
        """``/v1/verify`` for up to 32 texts at once (each key decodes them in one batch)."""
        items = await run_verify(who, body.texts, body)
        return schemas.VerifyBatchResponse(items=[_text_out(i) for i in items])

    @app.get("/v1/records/{record_id}", response_model=schemas.RecordOut, responses=_ERRORS, tags=["provenance"])
    def get_record(record_id: str, who: Tenant = Depends(tenant)) -> schemas.RecordOut:
        """One of the caller's records."""
        return _record_out(registry.record(record_id, tenant_id=who.id))

    return app


SERVE_SETTINGS_ENV = "PROVMARK_SERVE_SETTINGS"
"""Environment variable through which ``provmark serve`` hands its ``ServeSettings`` to the workers."""


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """What ``provmark serve`` tells each worker process, as JSON in ``$PROVMARK_SERVE_SETTINGS``.

    Never the master key: workers read it where serve did, from ``$PROVMARK_MASTER_KEY`` (inherited)
    or from ``master_key_file``."""

    db_path: str
    master_key_file: str | None
    rate: float
    burst: int
    max_body_bytes: int
    torch_threads: int
    model_path: str | None
    workers: int
    """Worker processes in all: each enforces 1/workers of the rate limit and verifies in
    cores/workers threads (at least 1)."""

    def to_environment(self) -> dict[str, str]:
        """The environment entry that ``from_environment`` reads back."""
        return {SERVE_SETTINGS_ENV: json.dumps(asdict(self))}

    @classmethod
    def from_environment(cls) -> ServeSettings:
        """The settings in ``$PROVMARK_SERVE_SETTINGS``; a clear error when they are absent."""
        value = os.environ.get(SERVE_SETTINGS_ENV)
        if not value:
            raise ProvmarkError(f"${SERVE_SETTINGS_ENV} is not set: app_from_environment builds the workers of "
                                "`provmark serve`; run that, or call create_app")
        return cls(**json.loads(value))


def app_from_environment() -> FastAPI:
    """One ``provmark serve`` worker's app (the uvicorn factory): opens the registry and the master key,
    sets torch's threads, loads the tokenizer and builds ``create_app`` from ``ServeSettings``.

    The registry stays open for the life of the process; serve has already migrated it and checked the
    master key, so several workers starting at once only read the schema."""
    import torch
    import transformers

    from provmark.api.crypto import load_master_key

    settings = ServeSettings.from_environment()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(settings.torch_threads)
    registry = Registry.open(settings.db_path, load_master_key(settings.master_key_file))
    models = Models(settings.model_path)
    models.tokenizer()
    return create_app(
        registry, models=models, rate=settings.rate, burst=settings.burst, max_body_bytes=settings.max_body_bytes,
        verify_workers=max(1, (os.cpu_count() or 1) // settings.workers), processes=settings.workers,
    )
