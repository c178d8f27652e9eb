"""The HTTP API (FastAPI): keys, generation, verification and records over the registry.

``create_app`` builds the app around an open ``Registry``. ``provmark serve`` runs it with uvicorn in
one or more worker processes, each of which builds its own app with ``app_from_environment`` from the
``ServeSettings`` serve leaves in its environment.
The routes are module-level functions in ``api.routes`` and the error handlers in ``api.handlers``
(every error, from any layer, is one JSON shape: ``api.errors``); this module assembles them with
the body limit, and builds the workers' apps.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import anyio
from fastapi import FastAPI
from fastapi.responses import JSONResponse

import provmark
from provmark.api import handlers, routes
from provmark.api.errors import error_body
from provmark.api.limits import DEFAULT_BURST, DEFAULT_MAX_BODY_BYTES, DEFAULT_RATE, RateLimiter
from provmark.api.openai_compat import openai_router
from provmark.api.provenance import Provenance
from provmark.api.registry import Registry
from provmark.api.routes import Service, router
from provmark.errors import ProvmarkError
from provmark.watermark.models import Models

__all__ = ["SERVE_SETTINGS_ENV", "BodyLimit", "ServeSettings", "app_from_environment", "create_app"]


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
    """The API over ``registry`` (opened with its master key): the routes of ``api.routes``, the
    error handlers of ``api.handlers`` and the body limit, around one ``routes.Service``.

    Args:
        models: the serving model (default: the embedded SmolLM2, loaded on first use).
        rate, burst: token-bucket rate limit per API token (per address without one); rate 0 is off.
        max_body_bytes: larger request bodies get 413.
        verify_workers: verifications run at once (default: one per CPU core).
        processes: server processes sharing the limit (``serve --workers``); this one enforces its
            share of ``rate`` and ``burst`` (see ``RateLimiter``).
    """
    app = FastAPI(
        title="provmark",
        version=provmark.__version__,
        description="Watermarked generation under provenance records, and verification of text back to its record.",
    )
    app.state.service = Service(
        registry=registry,
        provenance=Provenance(registry, models or Models()),
        limiter=RateLimiter(rate=rate, burst=burst, processes=processes),
        verify_slots=anyio.CapacityLimiter(verify_workers),
        processes=processes,
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
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
