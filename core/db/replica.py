"""Whether search and chat retrieval read from the replica: its health and lag, probed at most
every REPLICA_CHECK_S per process; reads fall back to the primary while it is unreachable or
lags past READ_MAX_LAG_S. Writes never come here."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core import metrics
from core.db.engines import forget_replica_engine, get_engine, replica_engine
from core.settings import get_settings

logger = logging.getLogger(__name__)

REPLICA_CHECK_S = 1.0  # how often (at most) a process probes the replica's health and lag


@dataclass(frozen=True)
class ReplicaStatus:
    reachable: bool
    serving_reads: bool  # False: reads go to the primary
    lag_s: float | None = None
    lag_bytes: int | None = None
    error: str | None = None


_replica_lock = threading.Lock()
# The last probe: (the engine probed, when, its result). Keyed by engine so a probe of an
# engine that `reset_engines` since replaced is never reused.
_replica_seen: tuple[Engine, float, ReplicaStatus] | None = None


def _probe_replica(engine: Engine) -> ReplicaStatus:
    try:
        with engine.connect() as connection:
            replica = connection.execute(sa.text(
                "SELECT pg_is_in_recovery() AS standby, pg_last_wal_replay_lsn()::text AS replayed, "
                "extract(epoch FROM now() - pg_last_xact_replay_timestamp()) AS age")).one()
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return ReplicaStatus(reachable=False, serving_reads=False, error=reason)
    if not replica.standby or replica.replayed is None:
        return ReplicaStatus(reachable=True, serving_reads=False, error="READ_DATABASE_URL is not a standby")
    with get_engine().connect() as connection:
        behind = int(connection.execute(sa.text(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), CAST(:replayed AS pg_lsn))"),
            {"replayed": replica.replayed}).scalar() or 0)
    # Caught up: no lag, however old the last replayed transaction (an idle primary sends none).
    lag_s = 0.0 if behind <= 0 else max(0.0, float(replica.age or 0.0))
    limit = get_settings().read_max_lag_s
    error = None if lag_s <= limit else f"replay lag {lag_s:.1f} s is above READ_MAX_LAG_S ({limit:g} s)"
    return ReplicaStatus(reachable=True, serving_reads=error is None, lag_s=round(lag_s, 3),
                         lag_bytes=max(behind, 0), error=error)


def _last_probe(engine: Engine, max_age_s: float) -> tuple[ReplicaStatus | None, ReplicaStatus | None]:
    """(the last probe of `engine` if still fresh, the last probe of `engine` at all)."""
    seen = _replica_seen
    if seen is None or seen[0] is not engine:
        return None, None
    return (seen[2] if time.monotonic() - seen[1] < max_age_s else None), seen[2]


def replica_status(max_age_s: float = REPLICA_CHECK_S) -> ReplicaStatus | None:
    """The read replica's health and lag, probed at most every `max_age_s`; None when none is set."""
    global _replica_seen
    engine = replica_engine()
    if engine is None:
        return None
    fresh, _ = _last_probe(engine, max_age_s)
    if fresh is not None:
        return fresh
    with _replica_lock:
        fresh, previous = _last_probe(engine, max_age_s)
        if fresh is not None:
            return fresh
        status = _probe_replica(engine)
        _replica_seen = (engine, time.monotonic(), status)
    if status.serving_reads != (previous.serving_reads if previous else True):
        logger.warning("read replica %s", "serving reads again" if status.serving_reads
                       else f"not serving reads, reading from the primary ({status.error})")
    metrics.REPLICA_LAG_SECONDS.set(status.lag_s if status.serving_reads and status.lag_s is not None else -1)
    return status


def forget_read_replica() -> None:
    """Drop the replica's engine and last probe (after READ_DATABASE_URL changes)."""
    global _replica_seen
    forget_replica_engine()
    _replica_seen = None


def read_engine() -> Engine:
    """Where search and chat retrieval read: the replica when it is set, reachable and caught up
    (READ_MAX_LAG_S), else the primary's service engine. Writes never come here."""
    status = replica_status()
    replica = replica_engine()
    if status is not None and status.serving_reads and replica is not None:
        return replica
    return get_engine()
