"""A schema Citus can distribute by company_id: plain company_id columns, keys led by it.

Citus routes an INSERT to a shard by the distribution column's value *in the statement*, on
the coordinator, before any trigger runs. A GENERATED company_id (data_chunks from its
metadata, data_docstore from its namespace) is never in the statement, so those inserts could
not be routed. Both become plain columns:

- **written by the stores**: the chunk store (core/vector_store.py) and the docstore
  (indexing/docstore.py) name company_id in every INSERT, which is what Citus routes on;
- **kept equal to what they were derived from** by a CHECK (`company_id = metadata_->>
  'company_id'`, `company_id = split_part(namespace, '/', 1)`), so the guarantee the generated
  column gave stays a guarantee;
- **filled by a BEFORE trigger when a writer leaves it out** (bulk COPY loads, and the
  metadata rewrite of `ils-rag companies set-id`): on one Postgres server that keeps every
  other writer working unchanged. On Citus such a writer cannot be routed and must name the
  column (docs/scaling.md), and moving a company to another id is a shard move, not an UPDATE.

The docstore's `UNIQUE (key, namespace)` becomes `UNIQUE (company_id, key, namespace)` (Citus
wants the distribution column in every unique constraint), and the docstore's upsert targets
it. Every other unique constraint and primary key of a tenant table already starts with
company_id (tests/test_citus_ready.py checks the catalog for every blocker).

Revision ID: 0012
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

CHUNK_CHECK = "ck_data_chunks_company_matches_metadata"
DOCSTORE_CHECK = "ck_data_docstore_company_matches_namespace"
OLD_DOCSTORE_UNIQUE = '"data_docstore:unique_key_namespace"'
DOCSTORE_UNIQUE = "uq_data_docstore_company_key_namespace"


def upgrade() -> None:
    op.execute("ALTER TABLE data_chunks ALTER COLUMN company_id DROP EXPRESSION")
    op.execute("ALTER TABLE data_docstore ALTER COLUMN company_id DROP EXPRESSION")

    op.execute("""
        CREATE FUNCTION ils_fill_chunk_company() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            -- Only for writers that leave company_id out (or rewrite the metadata alone);
            -- the CHECK below still refuses a company_id that disagrees with the metadata.
            IF NEW.company_id IS NULL
               OR (TG_OP = 'UPDATE' AND NEW.company_id IS NOT DISTINCT FROM OLD.company_id) THEN
                NEW.company_id := NEW.metadata_->>'company_id';
            END IF;
            RETURN NEW;
        END
        $$
    """)
    op.execute("""
        CREATE FUNCTION ils_fill_docstore_company() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.company_id IS NULL
               OR (TG_OP = 'UPDATE' AND NEW.company_id IS NOT DISTINCT FROM OLD.company_id) THEN
                NEW.company_id := split_part(NEW.namespace, '/', 1);
            END IF;
            RETURN NEW;
        END
        $$
    """)
    op.execute("CREATE TRIGGER ils_fill_company BEFORE INSERT OR UPDATE OF metadata_ ON data_chunks "
               "FOR EACH ROW EXECUTE FUNCTION ils_fill_chunk_company()")
    op.execute("CREATE TRIGGER ils_fill_company BEFORE INSERT OR UPDATE OF namespace ON data_docstore "
               "FOR EACH ROW EXECUTE FUNCTION ils_fill_docstore_company()")
    op.execute(f"ALTER TABLE data_chunks ADD CONSTRAINT {CHUNK_CHECK} "
               "CHECK (company_id = (metadata_->>'company_id'))")
    op.execute(f"ALTER TABLE data_docstore ADD CONSTRAINT {DOCSTORE_CHECK} "
               "CHECK (company_id = split_part(namespace, '/', 1))")

    op.execute(f"ALTER TABLE data_docstore ADD CONSTRAINT {DOCSTORE_UNIQUE} UNIQUE (company_id, key, namespace)")
    op.execute(f"ALTER TABLE data_docstore DROP CONSTRAINT {OLD_DOCSTORE_UNIQUE}")


def downgrade() -> None:
    """The old unique key back, the CHECKs gone. company_id stays a plain column filled by the
    triggers: Postgres cannot turn a column back into a generated one in place, and to the
    older code (whose inserts leave it out) a trigger-filled column is the same thing."""
    op.execute(f"ALTER TABLE data_docstore ADD CONSTRAINT {OLD_DOCSTORE_UNIQUE} UNIQUE (key, namespace)")
    op.execute(f"ALTER TABLE data_docstore DROP CONSTRAINT {DOCSTORE_UNIQUE}")
    op.execute(f"ALTER TABLE data_docstore DROP CONSTRAINT {DOCSTORE_CHECK}")
    op.execute(f"ALTER TABLE data_chunks DROP CONSTRAINT {CHUNK_CHECK}")
