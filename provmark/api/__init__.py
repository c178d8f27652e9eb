"""The provenance registry and its HTTP API.

Submodules, lowest first: ``db`` (SQLite, migrations), ``crypto`` (secrets at rest), ``auth``
(API tokens), ``errors`` (the one JSON error shape), ``registry`` (tenants, keys, records),
``provenance`` (generate and verify), ``limits`` (rate and size limits), ``schemas`` (request and
response bodies), ``app`` (FastAPI routes). Import them directly: this package imports nothing,
so the command line can read ``limits`` without loading FastAPI or torch.
"""

__all__ = ["app", "auth", "crypto", "db", "errors", "limits", "provenance", "registry", "schemas"]
