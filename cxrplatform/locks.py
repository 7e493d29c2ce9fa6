"""Named locks that serialise a check-then-create across processes, for the length of
the current transaction.

On PostgreSQL a transaction-scoped advisory lock (``pg_advisory_xact_lock``) keyed by
the name's hash: a second transaction asking for the same name waits until the first
commits or rolls back, then sees what it wrote. On SQLite every write transaction is
already exclusive (``transaction_mode = IMMEDIATE`` in the settings), so nothing is
needed. Used where no row exists yet to ``select_for_update`` (the first training run
and its root snapshot).
"""

from __future__ import annotations

import hashlib

from django.db import connection


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``name`` (PostgreSQL's bigint)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def serialize(name: str) -> None:
    """Hold the lock ``name`` until the current transaction ends. Call inside
    ``transaction.atomic()``; raises ``RuntimeError`` outside one (a lock that ends at
    once would serialise nothing)."""
    if not connection.in_atomic_block:
        raise RuntimeError(f"serialize({name!r}) needs a transaction")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key(name)])
