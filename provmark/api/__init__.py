"""The provenance registry and its HTTP API.

Submodules, lowest first: ``db`` (SQLite, migrations), ``crypto`` (secrets at rest), ``auth``
(API tokens), ``errors`` (the one JSON error shape), ``registry`` (tenants, keys, records),
``provenance`` (generate and verify), ``limits`` (rate, size and work limits), ``admission`` (the
light and heavy verification lanes, cancellation), ``schemas`` (request and
response bodies), ``app`` (FastAPI routes). Import them directly: this package imports nothing,
so the command line can read ``limits`` without loading FastAPI or torch.
"""

__all__ = ["admission", "app", "auth", "crypto", "db", "errors", "limits", "provenance", "registry", "schemas"]
