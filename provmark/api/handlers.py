"""The exception handlers that give every error, from any layer, the one JSON shape
(``api.errors``): registry and library errors, request validation, unknown routes and methods,
and anything unexpected (a logged 500)."""

from __future__ import annotations

import logging
import sqlite3

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from provmark.api.crypto import MasterKeyError
from provmark.api.errors import APIError, AuthError, RetryLaterError, error_body
from provmark.api.limits import retry_after
from provmark.api.stores import StoreUnavailableError
from provmark.errors import ModelLoadError, ProvmarkError

__all__ = ["api_error", "http_error", "install", "library_error", "registry_error", "unexpected", "validation_error"]

_log = logging.getLogger("provmark.api.app")


def _error_response(status: int, errors: list[dict], headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, errors), status_code=status, headers=headers)


def _field(loc) -> str:
    located = loc and loc[0] in ("body", "query", "path", "header")
    return ".".join(str(p) for p in (loc[1:] if located else loc)) or "body"


async def api_error(request: Request, exc: APIError) -> JSONResponse:
    headers = {"Retry-After": retry_after(exc.retry_after)} if isinstance(exc, RetryLaterError) else None
    if isinstance(exc, AuthError):
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    for e in exc.errors():
        message = e["msg"]
        if e["type"] == "json_invalid":
            field, message = "body", f"invalid JSON: {e.get('ctx', {}).get('error', message)}"
        else:
            field = _field(e["loc"])
        errors.append({"field": field, "message": message, "type": e["type"]})
    return _error_response(422, errors)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    field = {404: "path", 405: "method"}.get(exc.status_code, "body" if exc.status_code == 400 else None)
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        # Starlette names the methods of the first route on the path; FastAPI has one route per method.
        path = request.scope["path"]
        methods = {m for r in request.app.routes if isinstance(r, APIRoute) and r.path_regex.match(path)
                   for m in r.methods}
        headers = {"Allow": ", ".join(sorted(methods))}
    return _error_response(exc.status_code, [{"field": field, "message": str(exc.detail), "type": "http"}],
                           headers=headers)


async def library_error(request: Request, exc: ProvmarkError) -> JSONResponse:
    if isinstance(exc, (ModelLoadError, MasterKeyError, StoreUnavailableError)):
        _log.error("service unavailable: %s", exc)
        return _error_response(503, [{"field": None, "message": str(exc), "type": "unavailable"}])
    return _error_response(422, [{"field": None, "message": str(exc), "type": "invalid"}])


async def registry_error(request: Request, exc: sqlite3.DatabaseError) -> JSONResponse:
    """A registry that fails at run time (disk full, made read-only, locked past the busy timeout,
    damaged) is the service's state, not the caller's doing: 503, logged. A constraint violation is a
    bug (every write checks its constraints first) and stays a logged 500."""
    if isinstance(exc, sqlite3.IntegrityError):
        return await unexpected(request, exc)
    _log.error("registry unavailable on %s %s: %s", request.method, request.url.path, exc)
    return _error_response(503, [{"field": None, "message": "the registry cannot be written or read now; try again later",
                                  "type": "unavailable"}])


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    _log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _error_response(500, [{"field": None, "message": "internal error (logged)", "type": "internal"}])


def install(app: FastAPI) -> None:
    """Register every handler above on ``app``."""
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ProvmarkError, library_error)
    app.add_exception_handler(sqlite3.DatabaseError, registry_error)
    app.add_exception_handler(Exception, unexpected)
