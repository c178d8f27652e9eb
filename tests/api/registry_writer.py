"""A process that writes to a registry file at the same moment as others (test_registry's
concurrency test): spawned with ``multiprocessing``, so it imports no more than the registry."""

from provmark.api.crypto import MasterKey
from provmark.api.errors import ConflictError
from provmark.api.registry import Registry


def write(db_path, master_key: bytes, key_ids: list[str], tenant_id: str, rounds: int, start, results) -> None:
    """Once ``start`` (a barrier) opens: issue ``rounds`` records under each key in turn and try to
    create tenants w0..w{rounds-1}; put (record ids acknowledged, tenant names created, tenant names
    refused as taken, unexpected errors as strings) on ``results``."""
    registry = Registry.open(db_path, MasterKey(master_key))
    records, created, refused, errors = [], [], [], []
    start.wait()
    for index in range(rounds):
        for key_id in key_ids:
            try:
                records.append(registry.new_record(key_id, tenant_id=tenant_id, model=None).id)
            except Exception as exc:  # reported to the test, which expects none
                errors.append(f"new_record: {type(exc).__name__}: {exc}")
        try:
            registry.create_tenant(f"w{index}")
            created.append(f"w{index}")
        except ConflictError:
            refused.append(f"w{index}")
        except Exception as exc:
            errors.append(f"create_tenant: {type(exc).__name__}: {exc}")
    registry.close()
    results.put((records, created, refused, errors))
