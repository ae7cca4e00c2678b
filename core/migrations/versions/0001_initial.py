"""Initial schema: companies, users, refresh tokens, documents, the chunk table,
the ingestion docstore, conversations, and the audit log.

Every tenant-owned table carries company_id in its primary key, so the schema can be
distributed by company_id (Citus) without change.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from core.embeddings import configured_dimensions

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

NOW = sa.text("now()")


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    ]


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")

    op.create_table(
        "companies",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("slug", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
        *_timestamps(),
    )

    op.create_table(
        "users",
        sa.Column("company_id", sa.String(64), sa.ForeignKey("companies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("full_name", sa.String(200), nullable=True),
        sa.Column("password_hash", sa.String(300), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        *_timestamps(),
        sa.PrimaryKeyConstraint("company_id", "id"),
        sa.UniqueConstraint("company_id", "email", name="uq_users_company_email"),
    )
    op.create_index("ix_users_email", "users", [sa.text("lower(email)")])

    op.create_table(
        "refresh_tokens",
        sa.Column("company_id", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),  # the token's jti
        sa.Column("family_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("company_id", "id"),
        sa.ForeignKeyConstraint(["company_id", "user_id"], ["users.company_id", "users.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_refresh_tokens_hash", "refresh_tokens", ["token_hash"])
    op.create_index("ix_refresh_tokens_family", "refresh_tokens", ["company_id", "family_id"])

    op.create_table(
        "documents",
        sa.Column("company_id", sa.String(64), sa.ForeignKey("companies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("source_key", sa.String(1024), nullable=False),  # relative path or upload name, unique per company
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("category", sa.String(100), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=True),
        sa.Column("uploaded_by", sa.String(64), nullable=True),
        sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("chunk_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("legacy_id", sa.String(64), nullable=True),
        sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=True),
        *_timestamps(),
        sa.PrimaryKeyConstraint("company_id", "id"),
        sa.UniqueConstraint("company_id", "source_key", name="uq_documents_company_source"),
        sa.CheckConstraint("status IN ('queued', 'indexing', 'indexed', 'failed')", name="ck_documents_status"),
    )
    op.create_index("ix_documents_legacy", "documents", ["company_id", "legacy_id"], unique=True,
                    postgresql_where=sa.text("legacy_id IS NOT NULL"))

    # The chunk table, in the exact shape PGVectorStore(hybrid_search=True, use_jsonb=True)
    # maps, plus a generated company_id column for the key, RLS and Citus.
    dims = configured_dimensions()
    op.execute(f"""
        CREATE TABLE data_chunks (
            id bigserial NOT NULL,
            text varchar NOT NULL,
            metadata_ jsonb NOT NULL,
            node_id varchar NOT NULL,
            embedding vector({int(dims)}),
            text_search_tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
            company_id varchar(64) GENERATED ALWAYS AS (metadata_->>'company_id') STORED NOT NULL,
            PRIMARY KEY (company_id, id),
            CONSTRAINT uq_chunks_company_node UNIQUE (company_id, node_id)
        )
    """)
    op.execute("CREATE INDEX data_chunks_embedding_idx ON data_chunks "
               "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)")
    # PGVectorStore filters compile to metadata_->>'key' = '...': index those expressions.
    op.execute("CREATE INDEX data_chunks_company_expr_idx ON data_chunks ((metadata_->>'company_id'))")
    op.execute("CREATE INDEX data_chunks_ref_doc_idx ON data_chunks "
               "((metadata_->>'company_id'), (metadata_->>'ref_doc_id'))")
    op.execute("CREATE INDEX data_chunks_tsv_idx ON data_chunks USING gin (text_search_tsv)")

    # IngestionPipeline docstore (llama-index-storage-kvstore-postgres' table shape); its
    # namespace is '<company_id>/docstore/...', so the company is derived from it.
    op.execute("""
        CREATE TABLE data_docstore (
            id serial NOT NULL,
            key varchar NOT NULL,
            namespace varchar NOT NULL,
            value jsonb,
            company_id varchar(64) GENERATED ALWAYS AS (split_part(namespace, '/', 1)) STORED NOT NULL,
            PRIMARY KEY (company_id, id),
            CONSTRAINT "data_docstore:unique_key_namespace" UNIQUE (key, namespace)
        )
    """)

    op.create_table(
        "conversations",
        sa.Column("company_id", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("title", sa.String(200), nullable=False, server_default=""),
        *_timestamps(),
        sa.PrimaryKeyConstraint("company_id", "id"),
    )
    op.create_index("ix_conversations_user", "conversations", ["company_id", "user_id", "updated_at"])
    op.create_table(
        "messages",
        sa.Column("company_id", sa.String(64), nullable=False),
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("conversation_id", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("sources", pg.JSONB, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("company_id", "id"),
        sa.ForeignKeyConstraint(["company_id", "conversation_id"], ["conversations.company_id", "conversations.id"],
                                ondelete="CASCADE"),
    )
    op.create_index("ix_messages_conversation", "messages", ["company_id", "conversation_id", "id"])

    op.create_table(
        "audit_log",
        sa.Column("company_id", sa.String(64), nullable=False),
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("user_id", sa.String(64), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(512), nullable=True),
        sa.Column("details", pg.JSONB, nullable=True),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("company_id", "id"),
    )


def downgrade() -> None:
    for table in ("audit_log", "messages", "conversations", "data_docstore", "data_chunks", "documents",
                  "refresh_tokens", "users", "companies"):
        op.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
