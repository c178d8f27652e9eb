"""API tokens: random, shown once, stored as their SHA-256.

A token is 32 bytes from ``secrets`` (256 bits), so a fast hash is enough: a slow password hash
(bcrypt, scrypt) protects low-entropy secrets against guessing, and nobody can enumerate 2**256
tokens whatever the hash costs. A plain digest also lets the registry find a token's tenant
through an index instead of trying every stored hash. The index lookup compares digests, never
tokens, so its timing could tell an attacker at most how a stored digest begins, which is useless
without a preimage of SHA-256; the registry then checks the row's digest against the presented
one with ``hmac.compare_digest`` as well, so the final equality takes the same time however much
of it matches.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["TOKEN_PREFIX", "new_token", "token_digest", "digests_match"]

TOKEN_PREFIX = "pmk_"


def new_token() -> str:
    """A fresh API token: ``pmk_`` and 43 URL-safe characters (32 random bytes)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """Hex SHA-256 of the token, what the registry stores."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def digests_match(stored: str, presented: str) -> bool:
    """Constant-time comparison of two hex digests."""
    return hmac.compare_digest(stored.encode(), presented.encode())
