"""The HTTP API (FastAPI): keys, generation, verification and records over the registry.

``create_app`` builds the app around an open ``Registry``. ``provmark serve`` runs it with uvicorn in
one or more worker processes, each of which builds its own app with ``app_from_environment`` from the
``ServeSettings`` serve leaves in its environment.
The routes are module-level functions in ``api.routes`` and the error handlers in ``api.handlers``
(every error, from any layer, is one JSON shape: ``api.errors``); this module assembles them with
the body limit, and builds the workers' apps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass

from fastapi import FastAPI
from fastapi.responses import JSONResponse

import provmark
from provmark.api import handlers, routes
from provmark.api.admission import Admission, Cancellation
from provmark.api.errors import error_body
from provmark.api.limits import (
    DEFAULT_BURST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_RATE,
    RateLimiter,
    WorkLimits,
    retry_after,
)
from provmark.api.openai_compat import openai_router
from provmark.api.provenance import Provenance
from provmark.api.registry import Registry
from provmark.api.routes import Service, identify, router
from provmark.errors import ProvmarkError
from provmark.watermark.models import Models

__all__ = ["MAX_AUTHORIZATION_BYTES", "SERVE_SETTINGS_ENV", "BodyLimit", "QueryStringRedactor", "RateLimit", "ServeSettings", "app_from_environment", "create_app"]


def _too_large(max_bytes: int) -> JSONResponse:
    return JSONResponse(error_body(413, [{"field": "body", "message": f"request body exceeds {max_bytes} bytes",
                                          "type": "too_large"}]), status_code=413)


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413 (declared or streamed)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = _too_large(self.max_bytes)
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


MAX_AUTHORIZATION_BYTES = 1024
"""Longer Authorization headers are a 401 before any lookup (a token is 40-odd characters)."""


class QueryStringRedactor(logging.Filter):
    """Drops the query string from uvicorn's access log lines: a client that puts its token (or any
    secret) in the URL must not find it in the server's logs. ``app_from_environment`` installs it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?[redacted]", *args[3:])
        return True


class RateLimit:
    """ASGI middleware: the rate limit, applied to every request before anything else reads it, so
    requests refused later (a malformed body, 413, 401, an unknown route) and ``/healthz`` are
    charged too. It identifies the caller once (``routes.identify``) and leaves the result in the
    request state for the ``caller`` dependency; 429 in the JSON shape with Retry-After."""

    def __init__(self, app, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = [value for name, value in scope["headers"] if name == b"authorization"]
        if headers and len(headers[0]) > MAX_AUTHORIZATION_BYTES:
            message = f"the Authorization header is over {MAX_AUTHORIZATION_BYTES} bytes; send 'Bearer <token>'"
            response = JSONResponse(error_body(401, [{"field": "authorization", "message": message,
                                                      "type": "unauthorized"}]),
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
            self.service.limiter.acquire("addr:" + (scope["client"][0] if scope.get("client") else "unknown"))
            return await response(scope, receive, send)
        authorization = headers[0].decode("latin-1") if headers else None
        client = scope.get("client")
        identity = identify(self.service, authorization, client[0] if client else None)
        scope.setdefault("state", {})["identity"] = identity
        limiter = self.service.limiter
        wait = limiter.acquire(identity[2])
        if wait:
            split = f", shared by {limiter.processes} server processes" if limiter.processes > 1 else ""
            message = f"rate limit of {limiter.rate:g} requests/s (burst {limiter.burst}{split}) exceeded"
            response = JSONResponse(error_body(429, [{"field": None, "message": message, "type": "rate_limited"}]),
                                    status_code=429, headers={"Retry-After": retry_after(wait)})
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(
    registry: Registry,
    *,
    models: Models | None = None,
    rate: float = DEFAULT_RATE,
    burst: int = DEFAULT_BURST,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    verify_workers: int = os.cpu_count() or 1,
    processes: int = 1,
    trusted_proxies: str | None = None,
    work_limits: WorkLimits | None = None,
    heavy_processes: bool = False,
) -> FastAPI:
    """The API over ``registry`` (opened with its master key): the routes of ``api.routes``, the
    error handlers of ``api.handlers`` and the body limit, around one ``routes.Service``.

    Args:
        models: the serving model (default: the embedded SmolLM2, loaded on first use).
        rate, burst: token-bucket rate limit per API token (per address without one); rate 0 is off.
        max_body_bytes: larger request bodies get 413.
        verify_workers: light verifications run at once (default: one per CPU core); heavy ones run in
            a lane of their own (``api.admission``, bounded by ``work_limits``).
        processes: server processes sharing the limit (``serve --workers``); this one enforces its
            share of ``rate`` and ``burst`` (see ``RateLimiter``).
        trusted_proxies: comma-separated addresses (or CIDR ranges, "*" for any) of the reverse
            proxies whose X-Forwarded-For names the client (uvicorn's forwarded-allow-ips); None
            (the default) reads no proxy header, so a client cannot pick its own address.
        heavy_processes: run heavy verifications' detection in a low-priority process of their own
            (``api.admission``; ``provmark serve`` does), not in a thread of this one.
    """
    work_limits = work_limits or WorkLimits()
    admission = Admission(light_slots=verify_workers, per_client=work_limits.heavy_per_client,
                          queue=work_limits.heavy_queue, heavy_processes=heavy_processes,
                          model_path=models.path if models is not None else None)
    stopping = Cancellation()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        admission.start()
        yield
        # uvicorn's graceful shutdown (serve --shutdown-timeout) is over: stop the detection still running
        stopping.cancel("the server is shutting down")
        admission.close()

    app = FastAPI(
        lifespan=lifespan,
        title="provmark",
        version=provmark.__version__,
        description="Watermarked generation under provenance records, and verification of text back to its record.",
    )
    app.state.service = Service(
        registry=registry,
        provenance=Provenance(registry, models or Models()),
        limiter=RateLimiter(rate=rate, burst=burst, processes=processes),
        admission=admission,
        stopping=stopping,
        processes=processes,
        work_limits=work_limits,
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(RateLimit, service=app.state.service)  # outside the body limit: 413s are charged
    if trusted_proxies:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=trusted_proxies)  # outermost: first to run
    handlers.install(app)
    # The routes themselves, not an included router: the 405 handler lists every method of a path
    # from ``app.routes``, where FastAPI shows an included router as one opaque entry.
    app.router.routes.extend(router.routes)
    app.router.routes.extend(openai_router(registry, app.state.service.provenance.models, routes.tenant).routes)
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
    work_limits: dict | None = None
    """``serve --max-tokens-scored``, ``--max-proxy-tokens``, ``--max-text-words``,
    ``--max-attribution-tokens``, ``--max-heavy-per-client``, ``--heavy-queue`` (``WorkLimits`` fields)."""
    trusted_proxies: str | None = None
    """``serve --trusted-proxies``: the proxies whose X-Forwarded-For is read (None: no proxy header)."""
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
    logging.getLogger("uvicorn.access").addFilter(QueryStringRedactor())
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(settings.torch_threads)
    registry = Registry.open(settings.db_path, load_master_key(settings.master_key_file))
    models = Models(settings.model_path)
    models.tokenizer()
    return create_app(
        registry, models=models, rate=settings.rate, burst=settings.burst, max_body_bytes=settings.max_body_bytes,
        verify_workers=max(1, (os.cpu_count() or 1) // settings.workers), processes=settings.workers,
        trusted_proxies=settings.trusted_proxies, work_limits=WorkLimits(**(settings.work_limits or {})),
        heavy_processes=True,
    )
