"""Rate-limit counters every API process shares: failed sign-ins, searches and chats.

Counted per process, N API replicas would allow N times each budget (an attacker spreading
password guesses over replicas gets 5 x N checks per window). The counters move to one table:
one row per (scope, hashed key) holding the window's event stamps (microseconds of the
database's clock, so every replica agrees on "now"), a sliding log as the in-process limiter
kept.

An operator table, not tenant data: keys are SHA-256 digests of what is limited (an email, a
client address, a company's user), never the text, and nobody but the owner has any privilege
on the table. Processes use it only through four SECURITY DEFINER functions, executable by
the sign-in role `ils_auth` alone (as `ils_token_state` of migration 0005): the request role
`ils_app` gains nothing, so SQL running as it can neither read the counters nor reset its own.

- `ils_rate_take(scope, key, limit, window_us)`: check and record in ONE statement. The
  `INSERT ... ON CONFLICT DO UPDATE ... WHERE` locks the key's row, so N attempts in flight on
  any number of processes serialise on it: at most `limit` of them get a stamp per window.
  Returns (stamp, 0), or (NULL, microseconds to wait) when the budget is spent.
- `ils_rate_give_back(scope, key, stamp)`: take one recorded event back (a sign-in that
  turned out not to be a failure).
- `ils_rate_wait(scope, key, limit, window_us)`: microseconds until the key may act again.
- `ils_rate_forget(scope, key)`: forget a key (a successful sign-in clears its account).

UNLOGGED: a counter is worth nothing after a crash (the table is emptied then, which only
forgets the last window's failures), and a transaction that wrote nothing but unlogged rows
commits without waiting for a WAL flush: a search's check-and-record costs a round trip, not
an fsync.

Stamps within one row are strictly increasing (`greatest(now, last + 1)`), so a give-back
removes exactly the event it took. Rows whose last event left its window are deleted now and
then by `ils_rate_take` itself (about one call in a hundred), so attacker-chosen keys (emails,
addresses) cannot grow the table without bound.

Revision ID: 0011
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

APP_ROLE = "ils_app"
AUTH_ROLE = "ils_auth"
_FUNCTIONS = ("ils_rate_take(text, text, integer, bigint)", "ils_rate_give_back(text, text, bigint)",
              "ils_rate_wait(text, text, integer, bigint)", "ils_rate_forget(text, text)")


def upgrade() -> None:
    op.execute("""
        CREATE UNLOGGED TABLE ils_rate_limits (
            scope text NOT NULL,
            key_hash text NOT NULL,
            events bigint[] NOT NULL,
            expires_us bigint NOT NULL,
            PRIMARY KEY (scope, key_hash)
        )
    """)
    op.execute("CREATE INDEX ix_ils_rate_limits_expires ON ils_rate_limits (expires_us)")
    op.execute("REVOKE ALL ON ils_rate_limits FROM PUBLIC")
    # Migration 0002's default privileges grant the request role every new table: not this one.
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                EXECUTE 'REVOKE ALL ON ils_rate_limits FROM {APP_ROLE}';
            END IF;
        END
        $$
    """)
    op.execute("""
        CREATE FUNCTION ils_rate_take(p_scope text, p_key text, p_limit integer, p_window_us bigint,
                                      OUT stamp bigint, OUT wait_us bigint)
        LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = public, pg_temp
        AS $$
        DECLARE
            now_us bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
            live bigint[];
        BEGIN
            IF random() < 0.01 THEN
                DELETE FROM ils_rate_limits WHERE expires_us < now_us;
            END IF;
            INSERT INTO ils_rate_limits AS r (scope, key_hash, events, expires_us)
            VALUES (p_scope, p_key, ARRAY[now_us], now_us + p_window_us)
            ON CONFLICT (scope, key_hash) DO UPDATE
                SET events = ARRAY(SELECT e FROM unnest(r.events) AS e WHERE e > now_us - p_window_us ORDER BY e)
                             || greatest(now_us, r.events[cardinality(r.events)] + 1),
                    expires_us = greatest(now_us, r.events[cardinality(r.events)] + 1) + p_window_us
                WHERE (SELECT count(*) FROM unnest(r.events) AS e WHERE e > now_us - p_window_us) < p_limit
            RETURNING r.events[cardinality(r.events)] INTO stamp;
            IF stamp IS NOT NULL THEN
                wait_us := 0;
                RETURN;
            END IF;
            -- Refused: the row is locked by the upsert above, so this reads the events it judged.
            SELECT ARRAY(SELECT e FROM unnest(r.events) AS e WHERE e > now_us - p_window_us ORDER BY e)
              INTO live FROM ils_rate_limits r WHERE r.scope = p_scope AND r.key_hash = p_key;
            wait_us := greatest(1, live[cardinality(live) - p_limit + 1] + p_window_us - now_us);
        END
        $$
    """)
    op.execute("""
        CREATE FUNCTION ils_rate_give_back(p_scope text, p_key text, p_stamp bigint) RETURNS void
        LANGUAGE sql SECURITY DEFINER
        SET search_path = public, pg_temp
        AS $$
            UPDATE ils_rate_limits SET events = array_remove(events, p_stamp)
            WHERE scope = p_scope AND key_hash = p_key
        $$
    """)
    op.execute("""
        CREATE FUNCTION ils_rate_wait(p_scope text, p_key text, p_limit integer, p_window_us bigint)
        RETURNS bigint
        LANGUAGE sql STABLE SECURITY DEFINER
        SET search_path = public, pg_temp
        AS $$
            WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS us),
                 live AS (SELECT ARRAY(SELECT e FROM unnest(r.events) AS e, now
                                       WHERE e > now.us - p_window_us ORDER BY e) AS events
                          FROM ils_rate_limits r WHERE r.scope = p_scope AND r.key_hash = p_key)
            SELECT coalesce((SELECT CASE WHEN cardinality(live.events) < p_limit THEN 0
                                         ELSE greatest(0, live.events[cardinality(live.events) - p_limit + 1]
                                                          + p_window_us - now.us) END
                             FROM live, now), 0)
        $$
    """)
    op.execute("""
        CREATE FUNCTION ils_rate_forget(p_scope text, p_key text) RETURNS void
        LANGUAGE sql SECURITY DEFINER
        SET search_path = public, pg_temp
        AS $$
            DELETE FROM ils_rate_limits WHERE scope = p_scope AND key_hash = p_key
        $$
    """)
    for function in _FUNCTIONS:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        op.execute(f"""
            DO $$
            BEGIN
                IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{AUTH_ROLE}') THEN
                    EXECUTE 'GRANT EXECUTE ON FUNCTION {function} TO {AUTH_ROLE}';
                END IF;
            END
            $$
        """)


def downgrade() -> None:
    for function in _FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    op.execute("DROP TABLE IF EXISTS ils_rate_limits")
