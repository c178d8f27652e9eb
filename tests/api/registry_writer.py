"""A process that writes to a registry at the same moment as others (test_registry's concurrency
test): spawned with ``multiprocessing``, so it imports no more than the registry. The registry is an
SQLite file or a PostgreSQL URL: processes on one PostgreSQL stand for API nodes on several machines."""

from provmark.api.crypto import MasterKey
from provmark.api.errors import ConflictError, KeyExhaustedError
from provmark.api.registry import Registry


def write(db_target, master_key: bytes, key_ids: list[str], tenant_id: str, rounds: int, start, results, *,
          small_key_id: str, rotate_key_id: str) -> None:
    """Once ``start`` (a barrier) opens: try to rotate ``rotate_key_id`` (one process may win), then
    issue ``rounds`` records under each of ``key_ids`` and under ``small_key_id`` (which runs out) in
    turn and try to create tenants w0..w{rounds-1}; put a dict of what was acknowledged, refused and
    unexpected (errors as strings) on ``results``."""
    registry = Registry.open(db_target, MasterKey(master_key))
    out = {"records": [], "created": [], "refused": [], "exhausted": 0, "rotated": [], "errors": []}
    start.wait()
    try:
        out["rotated"].append(registry.rotate_key(rotate_key_id).key_id)
    except ConflictError:
        pass
    except Exception as exc:  # reported to the test, which expects none
        out["errors"].append(f"rotate_key: {type(exc).__name__}: {exc}")
    for index in range(rounds):
        for key_id in [*key_ids, small_key_id]:
            try:
                out["records"].append(registry.new_record(key_id, tenant_id=tenant_id, model=None).id)
            except KeyExhaustedError:
                out["exhausted"] += 1
            except Exception as exc:
                out["errors"].append(f"new_record: {type(exc).__name__}: {exc}")
        try:
            registry.create_tenant(f"w{index}")
            out["created"].append(f"w{index}")
        except ConflictError:
            out["refused"].append(f"w{index}")
        except Exception as exc:
            out["errors"].append(f"create_tenant: {type(exc).__name__}: {exc}")
    registry.close()
    results.put(out)
