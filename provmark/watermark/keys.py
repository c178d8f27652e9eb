"""Watermark keys: a 32-byte secret plus the whole watermark profile (scheme and parameters).

A key file is all that detection needs besides the tokenizer. Sub-keys for each purpose are
derived from the secret by HMAC-SHA256 domain separation over
``provmark/<prf version>/<scheme>/<purpose>``, so one secret never feeds two uses directly and a
PRF version change gives unrelated sub-keys.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from provmark.errors import KeyFileError, ProvmarkError
from provmark.kernels.prf import PRF_VERSION
from provmark.watermark.base import SchemeConfig
from provmark.watermark.schemes import config_for, stored_config

__all__ = ["KEY_FILE_FORMAT", "SECRET_BYTES", "WatermarkKey", "create_key", "load_key", "save_key", "derive_subkey"]

KEY_FILE_FORMAT = "provmark-key/1"
SECRET_BYTES = 32


def derive_subkey(secret: bytes, prf_version: str, scheme: str, purpose: str) -> int:
    """64-bit sub-key: the first 8 bytes (big-endian) of HMAC-SHA256(secret, domain tag)."""
    tag = f"provmark/{prf_version}/{scheme}/{purpose}".encode()
    return int.from_bytes(hmac.new(secret, tag, hashlib.sha256).digest()[:8], "big")


def _key_id(secret: bytes) -> str:
    return "k_" + hashlib.sha256(b"provmark/key-id\x00" + secret).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class WatermarkKey:
    """A secret and the watermark profile it drives. The secret never appears in ``repr``."""

    key_id: str
    """Public identifier, derived from the secret."""
    config: SchemeConfig
    """Scheme and parameters: everything detection needs besides the tokenizer."""
    secret: bytes = field(repr=False)
    """32 random bytes from ``secrets``."""
    prf_version: str = PRF_VERSION
    """Version of the PRF the key was made for."""
    created_at: str = ""
    """ISO 8601 UTC creation time."""

    @property
    def scheme(self) -> str:
        return self.config.scheme

    def subkey(self, purpose: str) -> int:
        """64-bit sub-key for one purpose of this key's scheme (e.g. ``"shard"``)."""
        return derive_subkey(self.secret, self.prf_version, self.scheme, purpose)

    def to_dict(self) -> dict:
        """JSON-ready dict of the key file, secret included (hex)."""
        return {
            "format": KEY_FILE_FORMAT,
            "key_id": self.key_id,
            "scheme": self.scheme,
            "params": self.config.to_params(),
            "prf_version": self.prf_version,
            "created_at": self.created_at,
            "secret": self.secret.hex(),
        }


def create_key(scheme: str, params: Mapping | None = None, *, secret: bytes | None = None) -> WatermarkKey:
    """A new key for ``scheme`` with validated ``params``; the secret comes from ``secrets``."""
    config = config_for(scheme, params)
    secret = secrets.token_bytes(SECRET_BYTES) if secret is None else secret
    if len(secret) != SECRET_BYTES:
        raise KeyFileError(f"a key secret has {SECRET_BYTES} bytes, got {len(secret)}")
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    return WatermarkKey(key_id=_key_id(secret), config=config, secret=secret, created_at=created)


def key_from_dict(data: Mapping) -> WatermarkKey:
    """Rebuild a key from a key file's dict, checking every field."""
    if not isinstance(data, Mapping):
        raise KeyFileError("key file must hold a JSON object")
    if data.get("format") != KEY_FILE_FORMAT:
        raise KeyFileError(f"not a provmark key (format {data.get('format')!r}, expected {KEY_FILE_FORMAT!r})")
    missing = [name for name in ("scheme", "params", "prf_version", "secret") if name not in data]
    if missing:
        raise KeyFileError(f"key file lacks field(s): {', '.join(missing)}")
    if data["prf_version"] != PRF_VERSION:
        raise KeyFileError(f"key uses PRF {data['prf_version']!r}; this provmark implements {PRF_VERSION!r}")
    try:
        secret = bytes.fromhex(data["secret"])
    except (TypeError, ValueError):
        raise KeyFileError("key secret must be a hex string") from None
    if len(secret) != SECRET_BYTES:
        raise KeyFileError(f"key secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if not isinstance(data["params"], Mapping):
        raise KeyFileError("key params must be a JSON object")
    try:
        config = stored_config(data["scheme"], data["params"])
    except TypeError as exc:
        raise KeyFileError(f"key params are malformed: {exc}") from None
    except ProvmarkError as exc:
        raise KeyFileError(f"key file: {exc}") from None
    key_id = _key_id(secret)
    if data.get("key_id", key_id) != key_id:
        raise KeyFileError(f"key_id {data.get('key_id')!r} does not match the secret (expected {key_id})")
    return WatermarkKey(
        key_id=key_id, config=config, secret=secret, prf_version=data["prf_version"], created_at=str(data.get("created_at", ""))
    )


def load_key(path: str | os.PathLike) -> WatermarkKey:
    """Read and validate a key file; every failure is a ``KeyFileError`` naming the file."""
    path = Path(path)
    if path.is_dir():
        raise KeyFileError(f"{path} is a folder; give the key file (JSON)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(f"key file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"key file {path} is not valid JSON: {exc}") from None
    try:
        return key_from_dict(data)
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def save_key(key: WatermarkKey, path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Write the key file readable by its owner only (0600); refuse to replace one unless asked.

    The key goes to a new temporary file in the target folder (created 0600, O_EXCL and O_NOFOLLOW:
    never an existing file or a symlink's target), is flushed to disk and then renamed over the target.
    So an existing file's mode never carries over, ``overwrite`` replaces a symlink itself and never
    writes through it, and a crash leaves the old file or the new one, not half of either."""
    path = Path(path)
    if path.is_dir():
        raise KeyFileError(f"{path} is a folder; give a file path for the key")
    if not overwrite and os.path.lexists(path):
        raise KeyFileError(f"{path} exists; choose another path or pass --force to overwrite it")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(temporary, flags, 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot write key file {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(key.to_dict(), handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if the path appeared meanwhile: never replaces a file unasked
            os.unlink(temporary)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; choose another path or pass --force to overwrite it") from None
    except OSError as exc:
        raise KeyFileError(f"cannot write key file {path}: {exc.strerror}") from None
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
