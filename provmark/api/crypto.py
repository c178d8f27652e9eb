"""Key secrets at rest: AES-256-GCM under a master key that never enters the database.

The master key is 32 random bytes, given base64-encoded (standard or URL-safe alphabet) in the
``PROVMARK_MASTER_KEY`` environment variable or in a file (``--master-key-file``); make one with
``openssl rand -base64 32``. Each secret is sealed with a fresh 96-bit nonce, and the key id and
tenant are the associated data, so a ciphertext copied onto another key's row does not open.
The registry stores a check value (HMAC of a fixed tag) so a wrong master key is refused at
start-up instead of failing on the first key it tries to open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from provmark.errors import ProvmarkError

__all__ = ["MASTER_KEY_ENV", "MasterKey", "MasterKeyError", "load_master_key"]

MASTER_KEY_ENV = "PROVMARK_MASTER_KEY"
_NONCE_BYTES = 12


class MasterKeyError(ProvmarkError):
    """The master key is missing, malformed, or not the one the registry was created with."""


class MasterKey:
    """Seals and opens key secrets. ``repr`` never shows the key."""

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise MasterKeyError(f"the master key must be 32 bytes, got {len(key)}; make one with `openssl rand -base64 32`")
        self._aead = AESGCM(key)
        self.check_value = hmac.new(key, b"provmark/master-key-check", hashlib.sha256).hexdigest()[:16]
        """Public fingerprint stored in the registry to recognise this master key."""

    def __repr__(self) -> str:
        return f"MasterKey(check_value={self.check_value!r})"

    def seal(self, secret: bytes, context: str) -> bytes:
        """nonce || AES-GCM(secret) with ``context`` (key id and tenant) as associated data."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, secret, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        """Inverse of ``seal``; a wrong master key, context or a tampered blob is a ``MasterKeyError``."""
        try:
            return self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], context.encode())
        except InvalidTag:
            raise MasterKeyError(f"cannot decrypt the secret of {context}: wrong master key or tampered row") from None


def _decode(text: str, origin: str) -> MasterKey:
    text = text.strip()
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyError(f"{origin} is not base64; make a master key with `openssl rand -base64 32`") from None
    return MasterKey(raw)


def load_master_key(path: str | os.PathLike | None = None) -> MasterKey:
    """The master key from ``path`` when given, else from ``$PROVMARK_MASTER_KEY``; refuse without one."""
    if path is not None:
        try:
            return _decode(Path(path).read_text(encoding="ascii"), f"master key file {path}")
        except (OSError, UnicodeDecodeError) as exc:
            raise MasterKeyError(f"cannot read master key file {path}: {exc}") from None
    value = os.environ.get(MASTER_KEY_ENV)
    if not value:
        raise MasterKeyError(
            f"no master key: set {MASTER_KEY_ENV} or pass --master-key-file "
            "(32 random bytes in base64, e.g. `openssl rand -base64 32`); it encrypts key secrets at rest"
        )
    return _decode(value, MASTER_KEY_ENV)
