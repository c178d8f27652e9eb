"""Errors the registry and the HTTP API report, and the one JSON shape every error response has.

Every error body, whatever produced it (a registry lookup, request validation, authentication,
rate limiting, the body-size limit, an unknown route), is::

    {"ok": false, "status": 422, "error": "text: ...",
     "errors": [{"field": "text", "message": "...", "type": "string_too_short"}]}

``status`` repeats the HTTP status, ``error`` is one human-readable line, and ``errors`` lists each
problem with the request field it concerns (dotted for nested fields, ``texts.2``; ``None`` when
the problem concerns no field, as for rate limiting).
"""

from __future__ import annotations

from provmark.errors import ProvmarkError

__all__ = [
    "APIError",
    "AuthError",
    "ConflictError",
    "InvalidInputError",
    "KeyExhaustedError",
    "NotFoundError",
    "RateLimitedError",
    "RetryLaterError",
    "error_body",
]


class APIError(ProvmarkError):
    """An error with an HTTP status and the request field it concerns."""

    status = 400
    kind = "bad_request"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field

    def body(self) -> dict:
        return error_body(self.status, [{"field": self.field, "message": str(self), "type": self.kind}])


class AuthError(APIError):
    """A missing, malformed or unknown API token."""

    status = 401
    kind = "unauthorized"


class NotFoundError(APIError):
    """No such key, record or tenant *for this caller* (another tenant's are reported the same way)."""

    status = 404
    kind = "not_found"


class ConflictError(APIError):
    """The request is well formed but the registry's state refuses it (a retired key, a taken name)."""

    status = 409
    kind = "conflict"


class KeyExhaustedError(ConflictError):
    """Every payload of a multi-bit key is taken: rotate the key."""

    kind = "key_exhausted"


def error_body(status: int, errors: list[dict]) -> dict:
    """The JSON error body for ``status`` and a non-empty list of ``{field, message, type}``."""
    first = errors[0]
    line = first["message"] if first.get("field") is None else f"{first['field']}: {first['message']}"
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more)"
    return {"ok": False, "status": status, "error": line, "errors": errors}


class RetryLaterError(APIError):
    """A refusal that passes: ``retry_after`` seconds until a retry may succeed (the Retry-After header)."""

    def __init__(self, message: str, *, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitedError(RetryLaterError):
    """Too many requests from one token (or address); ``retry_after`` seconds until the next one."""

    status = 429
    kind = "rate_limited"


class InvalidInputError(APIError):
    """A request that passed schema validation but that the library refuses (too short a text, a
    parameter out of range)."""

    status = 422
    kind = "invalid"
