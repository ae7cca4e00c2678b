"""The tenant scope: which company the enclosed database work runs as, proven at BEGIN.

The scope is a context variable copied into every transaction with a transaction-local
setting, so a pooled connection never carries one request's company into the next one;
row-level security policies read it. The service role proves the company with a signed
claim (core.tenant_signing) bound to the transaction's backend and start, which SQL running
as that role can neither forge nor replay.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from core.settings import get_settings
from core.tenant_signing import TENANT_SETTING, TenantSigner

_current_company: contextvars.ContextVar[str | None] = contextvars.ContextVar("company_id", default=None)

# Planner settings for the next transactions of this context (see `transaction_settings`).
_local_settings: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "local_settings", default=())
_SETTING_NAMES = frozenset({"enable_indexscan", "enable_sort", "enable_seqscan", "enable_bitmapscan",
                            "hnsw.ef_search"})
# What a signed tenant claim is bound to (core.tenant_signing), read in the transaction's first
# round trip, which also applies its planner settings. Names and values are bound arrays.
_TRANSACTION_FACTS = sa.text(
    "SELECT pg_backend_pid() AS pid, (extract(epoch FROM transaction_timestamp()) * 1000000)::bigint AS started, "
    "(SELECT count(set_config(s.name, s.value, true)) FROM unnest(CAST(:names AS text[]), CAST(:values AS text[])) "
    "AS s(name, value)) AS applied").bindparams(sa.bindparam("names", type_=ARRAY(sa.Text)),
                                                sa.bindparam("values", type_=ARRAY(sa.Text)))
_SET_CLAIM = sa.text(f"SELECT set_config('{TENANT_SETTING}', :claim, true)")
_PLANNER_ONLY = sa.text(
    "SELECT count(set_config(s.name, s.value, true)) FROM unnest(CAST(:names AS text[]), CAST(:values AS text[])) "
    "AS s(name, value)").bindparams(sa.bindparam("names", type_=ARRAY(sa.Text)),
                                    sa.bindparam("values", type_=ARRAY(sa.Text)))

PROOF_ROUND_TRIPS = 2  # per tenant transaction: the transaction's facts, then the signed claim
# What the proof statements start with as sent (up to their first bound name, which the driver
# spells its own way), taken from the statements themselves so a change to them cannot go unseen.
_PROOF_PREFIXES = (*(s.text.split(":", 1)[0] for s in (_TRANSACTION_FACTS, _SET_CLAIM)), f"SET LOCAL {TENANT_SETTING} ")

_CLAIM_SHAPE = re.compile(r"^[0-9a-f]{64}:[A-Za-z0-9_.:-]{1,64}$")


@contextmanager
def tenant(company_id: str) -> Iterator[None]:
    """Run the enclosed database work as `company_id` (read by RLS policies)."""
    token = _current_company.set(company_id)
    try:
        yield
    finally:
        _current_company.reset(token)


@contextmanager
def transaction_settings(**settings: str) -> Iterator[None]:
    """Planner settings (`enable_sort="off"`, `hnsw__ef_search="100"`; `__` stands for `.`) for
    every transaction begun inside the block, set transaction-locally in the same round trip
    as the tenant, so they never outlive the transaction on a pooled connection."""
    pairs = tuple((name.replace("__", "."), str(value)) for name, value in settings.items())
    unknown = [name for name, _ in pairs if name not in _SETTING_NAMES]
    if unknown:
        raise ValueError(f"not a planner setting this service sets: {', '.join(unknown)}")
    token = _local_settings.set(pairs)
    try:
        yield
    finally:
        _local_settings.reset(token)


def current_company() -> str | None:
    return _current_company.get()


def _set_local_claim(claim: str) -> str:
    """`SET LOCAL ils.tenant = '<claim>'` (TENANT_SET_LOCAL, for Citus, which forwards SET LOCAL
    to its workers but not set_config()). SET takes no bound parameter, so the claim is spelled
    into the statement: only after checking it is a hex MAC and an id-shaped company id."""
    if not _CLAIM_SHAPE.match(claim):
        raise ValueError("a tenant claim must be a hex MAC and an id-shaped company id")
    return f"SET LOCAL {TENANT_SETTING} = '{claim}'"


def is_tenant_proof(statement: str) -> bool:
    """Whether `statement` is one of the round trips that prove the tenant at BEGIN (for the
    tenant-context benchmark, which times them inside real searches)."""
    return statement.startswith(_PROOF_PREFIXES)  # as sent: bound names are the driver's placeholders by then


def begin_service_transaction(connection: sa.Connection, signer: Callable[[], TenantSigner]) -> None:
    """Prove the tenant to row-level security and apply planner settings, at BEGIN.

    Two round trips when a company is in scope (the claim is bound to the transaction's
    start, which the server tells us first), one with planner settings only, none otherwise.
    The signer is asked for only when a company is in scope: its key is read through the
    owner's engine, which a service engine does not own.
    """
    company_id = _current_company.get()
    extra = _local_settings.get()
    names, values = [name for name, _ in extra], [value for _, value in extra]
    if company_id:
        facts = connection.execute(_TRANSACTION_FACTS, {"names": names, "values": values}).one()
        claim = signer().claim(company_id, int(facts.pid), int(facts.started))
        if get_settings().tenant_set_local:
            connection.exec_driver_sql(_set_local_claim(claim))
        else:
            connection.execute(_SET_CLAIM, {"claim": claim})
    elif extra:
        connection.execute(_PLANNER_ONLY, {"names": names, "values": values})


def begin_owner_transaction(connection: sa.Connection) -> None:
    """The owner sees every company (its own policy); only planner settings apply."""
    extra = _local_settings.get()
    if extra:
        connection.execute(_PLANNER_ONLY, {"names": [n for n, _ in extra], "values": [v for _, v in extra]})
