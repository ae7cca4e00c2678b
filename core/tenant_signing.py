"""The signed tenant claim that row-level security verifies.

The policies of every tenant table call `ils_current_company()` (migration 0004), which
accepts `ils.tenant = '<mac>:<company id>'` only when the MAC is HMAC-SHA256, under the
owner-only key in `ils_tenant_key`, of `<company id>:<backend pid>:<transaction start in
microseconds>`. The service knows the key (read once through the owner's engine); SQL
running as the service role does not, so it can neither forge a claim for another company
nor reuse one it observed on another connection or in another transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import threading

import sqlalchemy as sa

TENANT_SETTING = "ils.tenant"
_KEY_QUERY = sa.text("SELECT key FROM ils_tenant_key WHERE id = 1")


class TenantKeyMissing(RuntimeError):
    """The database has no tenant key: migrations have not run (`ils-rag db upgrade`)."""


class TenantSigner:
    """Signs tenant claims with the database's key, fetched once from the owner's engine."""

    def __init__(self, owner_engine: sa.Engine) -> None:
        self._owner_engine = owner_engine
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def _load_key(self) -> bytes:
        with self._lock:
            if self._key is None:
                with self._owner_engine.connect() as connection:
                    key = connection.execute(_KEY_QUERY).scalar()
                if key is None:
                    raise TenantKeyMissing("the tenant key is missing: run `ils-rag db upgrade`")
                self._key = bytes(key)
            return self._key

    def claim(self, company_id: str, backend_pid: int, transaction_start_us: int) -> str:
        key = self._key if self._key is not None else self._load_key()
        message = f"{company_id}:{backend_pid}:{transaction_start_us}".encode()
        return hmac.new(key, message, hashlib.sha256).hexdigest() + ":" + company_id
