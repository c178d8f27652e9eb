"""The HTTP routes, as module-level functions on one ``APIRouter``; ``app.create_app`` assembles them.

Each route reaches the service it runs on (registry, provenance, rate limiter) through the
``service`` dependency, which reads ``request.app.state.service``: a route can be mounted on any
app that carries a ``Service`` and tested alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

import provmark
from provmark.api import schemas
from provmark.api.admission import Admission, Cancellation
from provmark.api.auth import token_digest
from provmark.api.errors import AuthError, InvalidInputError, NotFoundError, RateLimitedError
from provmark.api.limits import HEAVY_WORK, TOKENS_PER_REQUEST, RateLimiter, WorkLimits, work_bound
from provmark.api.provenance import AttributionRequest, KeyVerification, Provenance, TextVerification
from provmark.api.registry import KeyInfo, KeyRef, Record, Registry, Tenant
from provmark.detector.zero_shot import SamplingSettings
from provmark.errors import ProvmarkError

__all__ = ["ERRORS", "Caller", "Service", "caller", "identify", "router", "service", "tenant"]

_bearer = HTTPBearer(auto_error=False, description="An API token from `provmark tenants create`.")

ERRORS = {
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
"""The error responses every route documents (one JSON shape, ``schemas.ErrorBody``)."""
_UNAVAILABLE = {503: {"model": schemas.ErrorBody, "description": "The model cannot be loaded."}}
_BUSY = {503: {"model": schemas.ErrorBody, "description": (
    "Heavy verifications queued past the limit (see Retry-After), the server is shutting down, or the "
    "serving model cannot be loaded (attribution).")}}


@dataclass(frozen=True)
class Service:
    """What the routes run on; ``create_app`` puts one in ``app.state.service``."""

    registry: Registry
    provenance: Provenance
    limiter: RateLimiter
    admission: Admission
    """Where verifications run (``api.admission``): light ones in a few threads of the shared pool, so
    queued requests wait their turn instead of 40 threadpool threads contending for the GIL (on 2
    cores at 50 clients that cut the p99 latency from 1.5 s to 0.6 s); heavy ones in a low-priority
    lane of their own, a bounded number per client."""
    stopping: Cancellation = field(default_factory=Cancellation)
    """Set when the server shuts down: every verification in flight stops (``app.create_app``)."""
    processes: int = 1
    """Server processes sharing the rate limit (``serve --workers``)."""
    work_limits: WorkLimits = WorkLimits()
    """What one verification may cost (``serve --max-tokens-scored`` and the per-key caps)."""


def service(request: Request) -> Service:
    return request.app.state.service


@dataclass(frozen=True)
class Caller:
    tenant: Tenant | None


def identify(svc: Service, authorization: str | None, address: str | None) -> tuple[Tenant | None, str | None, str]:
    """(tenant, problem, client) of a request: the tenant of its bearer token (None without one), why
    the Authorization header is refused (None when it is not), and the rate limiter's client: the
    token's digest for a known token, else the peer address (after ``--trusted-proxies``)."""
    tenant = problem = None
    token = None
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        token = credentials.strip() if scheme.lower() == "bearer" else ""
        if not token:
            problem = "the Authorization header must be 'Bearer <token>'"
        else:
            tenant = svc.registry.tenant_for_token(token)
            problem = None if tenant is not None else "unknown API token"
    client = "token:" + token_digest(token) if tenant is not None else "addr:" + (address or "unknown")
    return tenant, problem, client


# Async on purpose: a sync dependency costs a threadpool round trip per request (two handoffs
# of the GIL, each of which can wait behind a busy verify thread), while the work here is a
# SHA-256 and one indexed SELECT. The SELECT takes the registry lock, so it can wait on the
# event loop for a write transaction in flight (its fsync, milliseconds).
async def caller(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
                 svc: Service = Depends(service)) -> Caller:
    """The caller's tenant (None without a token); 401 for a bad token. The rate limit was applied by
    ``app.RateLimit`` before the body was read, which left its identification in the request state;
    a route mounted without that middleware identifies the caller here (unlimited)."""
    found = getattr(request.state, "identity", None)
    if found is None:
        found = identify(svc, request.headers.get("authorization"), request.client.host if request.client else None)
    tenant, problem, _ = found
    if problem:
        raise AuthError(problem, field="authorization")
    return Caller(tenant)


async def tenant(who: Caller = Depends(caller)) -> Tenant:
    """The caller's tenant; 401 without a token."""
    if who.tenant is None:
        raise AuthError("this endpoint needs an API token: 'Authorization: Bearer <token>'", field="authorization")
    return who.tenant


def key_out(info: KeyInfo) -> schemas.KeyOut:
    return schemas.KeyOut(**{k: v for k, v in info.to_dict().items() if k != "tenant_id"})


def record_out(record: Record, *, public: bool = False) -> schemas.RecordOut:
    return schemas.RecordOut(**{k: v for k, v in record.to_dict(public=public).items() if k != "tenant_id"})


def verification_out(item: KeyVerification) -> schemas.KeyVerificationOut:
    return schemas.KeyVerificationOut(
        **item.result.to_dict(),
        match=item.match,
        record=None if item.record is None else record_out(item.record, public=item.public),
        nearest_records=[
            schemas.NearRecordOut(record=record_out(n.record, public=item.public), bit_distance=n.bit_distance,
                                  bits_differ=n.bits_differ)
            for n in item.nearest
        ],
        note=item.note,
        capped_at=item.capped_at,
        error=item.error,
        record_test=None if item.record_test is None else record_test_out(item.record_test, item.result),
    )


def record_test_out(match, result) -> schemas.RecordTestOut:
    """The record test's result with record ids, and whether the open-set decode agreed."""
    def record_id(payload):
        return None if payload is None else f"{match.key_id}.{payload}"

    return schemas.RecordTestOut(
        **match.to_dict(), record_id=record_id(match.payload), runner_up_record_id=record_id(match.runner_up),
        open_set_agrees=None if match.payload is None else result.payload == match.payload,
    )


def text_out(item: TextVerification) -> schemas.VerifyResponse:
    found = item.attribution
    return schemas.VerifyResponse(
        text_sha256=item.text_sha256, num_tokens=item.num_tokens, watermarked=item.watermarked,
        results=[verification_out(k) for k in item.results],
        attribution=None if found is None else schemas.AttributionOut(**found.result.to_dict(), note=found.note),
    )


def attribution_request(option, count: int) -> AttributionRequest | None:
    """The request's ``attribution`` field (false or null when off, else options) as the library's
    request (None when off); a prompt applies to the one text of ``/v1/verify``."""
    if option is None or option is False:  # the default stays False: pydantic does not validate defaults
        return None
    prompt = getattr(option, "prompt", None)
    return AttributionRequest(
        sampling=SamplingSettings(temperature=option.temperature, top_k=option.top_k, top_p=option.top_p),
        prompts=None if prompt is None else (prompt,) * count, chat=getattr(option, "chat", None))


router = APIRouter()


@router.get("/healthz", response_model=schemas.Health, tags=["service"])
def healthz(svc: Service = Depends(service)) -> schemas.Health:
    """Liveness and schema version; needs no token."""
    return schemas.Health(ok=True, schema_version=svc.registry.schema_version(), version=provmark.__version__)


@router.post("/v1/keys", status_code=201, response_model=schemas.KeyOut, responses=ERRORS, tags=["keys"])
def create_key(body: schemas.KeyCreate, who: Tenant = Depends(tenant),
               svc: Service = Depends(service)) -> schemas.KeyOut:
    """Create a key for the caller's tenant; its secret is sealed in the registry and never returned."""
    try:
        info = svc.registry.create_key(who.id, body.scheme, body.params.model_dump(exclude_none=True),
                                       public_verify=body.public_verify)
    except (ProvmarkError, TypeError) as exc:
        raise InvalidInputError(str(exc), field="params") from None
    return key_out(info)


@router.get("/v1/keys", response_model=schemas.KeyList, responses=ERRORS, tags=["keys"])
def list_keys(who: Tenant = Depends(tenant), svc: Service = Depends(service)) -> schemas.KeyList:
    """The caller's keys, active and retired, oldest first (never their secrets)."""
    return schemas.KeyList(keys=[key_out(k) for k in svc.registry.keys(who.id)])


@router.patch("/v1/keys/{key_id}", response_model=schemas.KeyOut, responses=ERRORS, tags=["keys"])
def update_key(key_id: str, body: schemas.KeyPatch, who: Tenant = Depends(tenant),
               svc: Service = Depends(service)) -> schemas.KeyOut:
    """Open a key to public verification (no token needed) or close it."""
    return key_out(svc.registry.set_public_verify(key_id, body.public_verify, tenant_id=who.id))


@router.post("/v1/keys/{key_id}/rotate", status_code=201, response_model=schemas.KeyOut, responses=ERRORS,
             tags=["keys"])
def rotate_key(key_id: str, who: Tenant = Depends(tenant), svc: Service = Depends(service)) -> schemas.KeyOut:
    """Retire an active key and return its successor (same scheme and parameters, new secret).
    The retired key still verifies the records issued under it."""
    return key_out(svc.registry.rotate_key(key_id, tenant_id=who.id))


@router.post("/v1/generate", status_code=201, response_model=schemas.GenerateResponse,
             responses={**ERRORS, **_UNAVAILABLE}, tags=["provenance"])
def generate(body: schemas.GenerateRequest, who: Tenant = Depends(tenant),
             svc: Service = Depends(service)) -> schemas.GenerateResponse:
    """Issue a record under the key and generate a watermarked continuation of the prompt whose
    payload is the record's number (multi-bit keys); the record stores the text's hash."""
    generation, record = svc.provenance.generate(
        tenant_id=who.id, key_id=body.key_id, prompt=body.prompt, metadata=body.metadata, chat=body.chat,
        seed=body.seed, max_new_tokens=body.max_new_tokens, temperature=body.temperature,
    )
    return schemas.GenerateResponse(text=generation.text, num_tokens=len(generation.token_ids),
                                    record=record_out(record))


@router.post("/v1/embed", status_code=201, response_model=schemas.EmbedResponse,
             responses={**ERRORS, **_UNAVAILABLE}, tags=["provenance"])
def embed(body: schemas.EmbedRequest, who: Tenant = Depends(tenant),
          svc: Service = Depends(service)) -> schemas.EmbedResponse:
    """Issue a record under a synonym key and watermark the caller's finished text with it
    (keyed synonym substitution); the record stores the watermarked text's hash, by which
    ``/v1/verify`` finds it."""
    embedding, record = svc.provenance.embed(tenant_id=who.id, key_id=body.key_id, text=body.text,
                                             metadata=body.metadata)
    return schemas.EmbedResponse(
        text=embedding.text, num_words=embedding.num_words, num_eligible=embedding.num_eligible,
        substitutions=[schemas.SubstitutionOut(start=s.start, end=s.end, original=s.original,
                                               replacement=s.replacement) for s in embedding.substitutions],
        record=record_out(record),
    )


def verify_keys(svc: Service, who: Caller, key_ids: list[str] | None) -> list[KeyRef]:
    """The keys a verification uses: the caller's tenant's (or, anonymous, the public ones), all of
    them or those named; 404 for a named key the caller may not use, like a missing one."""
    if who.tenant is not None:
        pool = svc.registry.key_refs(who.tenant.id)
    else:
        pool = svc.registry.key_refs(public_only=True)
        if not pool:
            raise AuthError("verify needs an API token (no key is open to public verification)", field="authorization")
    if key_ids is None:
        return pool
    by_id = {k.key_id: k for k in pool}
    for index, key_id in enumerate(key_ids):
        if key_id not in by_id:
            raise NotFoundError(f"no key {key_id!r}", field=f"key_ids.{index}")
    return [by_id[k] for k in dict.fromkeys(key_ids)]


async def run_verify(request: Request, svc: Service, who: Caller, texts: list[str], options,
                     fields: list[str] | None = None):
    """``Provenance.verify`` under ``svc.work_limits``, in the lane ``svc.admission`` sorts it into by
    its work bound; the rate limiter's client (when ``app.RateLimit`` identified one) is charged for
    the work. Detection stops when the client disconnects or the server shuts down."""
    client = _client(request)
    keys = verify_keys(svc, who, options.key_ids)
    limits = svc.work_limits

    def charge(work: float) -> None:  # the middleware charged one request; the rest is work
        limiter = svc.limiter
        cost = work / TOKENS_PER_REQUEST
        wait = limiter.acquire(client, cost, prepaid=1.0) if client is not None else 0.0
        if wait:
            raise RateLimitedError(
                f"rate limit exceeded: this verification's work is {work:.0f} kgw tokens (tokens scored, "
                f"weighted by scheme), charged as {cost:.3g} requests ({TOKENS_PER_REQUEST} each) on top of the "
                f"request itself (limit {limiter.rate:g} requests/s, burst {limiter.burst})", retry_after=wait)

    cancel = Cancellation(svc.stopping)
    attribution = attribution_request(options.attribution, len(texts))
    # A forward pass of the serving model weighs limits.ATTRIBUTION_WORK_WEIGHT kgw tokens a token: always heavy.
    heavy = attribution is not None or work_bound([len(t) for t in texts], [k.scheme for k in keys], limits) > HEAVY_WORK

    def work():
        return svc.provenance.verify(
            texts, keys, tenant_id=who.tenant and who.tenant.id, alpha=options.alpha, min_tokens=options.min_tokens,
            nearest=options.nearest, fields=fields, limits=limits, charge=charge, cancel=cancel,
            detect=svc.admission.detector(heavy), attribution=attribution,
        )

    watcher = asyncio.ensure_future(_watch_disconnect(request, cancel))  # not a task group: errors stay whole
    try:
        return await svc.admission.run(work, heavy=heavy, client=client, cancel=cancel)
    finally:
        watcher.cancel()


async def _watch_disconnect(request: Request, cancel: Cancellation) -> None:
    """Set ``cancel`` when the client goes away (the body is read: the next ASGI message is the
    disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancel.cancel("the client disconnected")


def _client(request: Request) -> str | None:
    """The rate limiter's client of the request (``app.RateLimit`` identified it), or None."""
    identity = getattr(request.state, "identity", None)
    return None if identity is None else identity[2]


# The token is optional on verify (public keys), which the schema says with an empty alternative.
_OPTIONAL_TOKEN = {"security": [{}]}  # appended to the bearer requirement FastAPI writes


@router.post("/v1/verify", response_model=schemas.VerifyResponse, responses={**ERRORS, **_BUSY}, tags=["provenance"],
             openapi_extra=_OPTIONAL_TOKEN)
async def verify(request: Request, body: schemas.VerifyRequest, who: Caller = Depends(caller),
                 svc: Service = Depends(service)) -> schemas.VerifyResponse:
    """Detect the text with every key the caller may use (its tenant's keys; without a token,
    the keys open to public verification) and return each result with the matching record; with
    ``attribution``, also test whether the serving model wrote it (zero-shot, no key)."""
    (item,) = await run_verify(request, svc, who, [body.text], body, fields=["text"])
    return text_out(item)


@router.post("/v1/verify/batch", response_model=schemas.VerifyBatchResponse, responses={**ERRORS, **_BUSY},
             tags=["provenance"],
             openapi_extra=_OPTIONAL_TOKEN)
async def verify_batch(request: Request, body: schemas.VerifyBatchRequest, who: Caller = Depends(caller),
                       svc: Service = Depends(service)) -> schemas.VerifyBatchResponse:
    """``/v1/verify`` for up to 32 texts at once (each key decodes them in one batch)."""
    items = await run_verify(request, svc, who, body.texts, body)
    return schemas.VerifyBatchResponse(items=[text_out(i) for i in items])


@router.get("/v1/records/{record_id}", response_model=schemas.RecordOut, responses=ERRORS, tags=["provenance"])
def get_record(record_id: str, who: Tenant = Depends(tenant), svc: Service = Depends(service)) -> schemas.RecordOut:
    """One of the caller's records."""
    return record_out(svc.registry.record(record_id, tenant_id=who.id))
