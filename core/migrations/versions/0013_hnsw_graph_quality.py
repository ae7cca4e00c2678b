"""The shared HNSW index is rebuilt with ef_construction = 128 (was pgvector's default, 64).

Chunks of many practices sit in one graph, and their texts cluster: the same lens, fee and
protocol wording recurs across practices, so the graph holds tight groups of near-duplicates.
Built with a candidate list of 64, a group's links can all stay inside it and the group
becomes an island the search cannot enter from outside: a query that belongs there gets 10
rows from the wrong neighbourhood (recall@10 of 0.0) however wide ef_search is at query time.
Measured on the 20k-chunk skewed-tenant store of tests/test_retrieval_hnsw.py (forced
shared-index plan, 32 queries per tenant): with 64, 2 of 3 builds had such a query (recall
0.0 and 0.5, at ef_search 200 and 400 alike); with 128, none in 11 builds, for a build about
1.4x as long. Per-company indexes (core/tenant_indexes.py) are built with the same options.

On a large table the rebuild takes minutes and holds a lock that blocks chunk writes (reads
keep working through the exact-scan and per-company plans); run it in a quiet window, or
build `data_chunks_embedding_idx_new` CONCURRENTLY by hand first and swap the names.

Revision ID: 0013
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

INDEX = "data_chunks_embedding_idx"


def _rebuild(ef_construction: int) -> None:
    op.execute(f"DROP INDEX IF EXISTS {INDEX}")
    op.execute("SET LOCAL maintenance_work_mem = '256MB'")
    op.execute(f"CREATE INDEX {INDEX} ON data_chunks USING hnsw (embedding vector_cosine_ops) "
               f"WITH (m = 16, ef_construction = {int(ef_construction)})")


def upgrade() -> None:
    _rebuild(128)


def downgrade() -> None:
    _rebuild(64)
