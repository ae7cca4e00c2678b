"""The ingestion queue: uploads too large to index inline wait here for `ils-rag worker`.

A plain Postgres table consumed with `SELECT ... FOR UPDATE SKIP LOCKED` (indexing/queue.py
says why not a queue library). Each job belongs to one company and one `documents` row:

- `company_id` leads the primary key and the foreign key to `documents`, so the table is
  distributed with the rest of a company's rows (Citus) and a deleted document takes its
  pending job with it;
- the request role enqueues inside its own tenant transaction (the job and the document's
  'queued' state commit together) under the same row-level security policy as every tenant
  table; workers claim jobs across companies as the owner, then index each one as its
  company, through the request role;
- `payload` holds the uploaded bytes until the job ends (then it is emptied: the chunks are
  the document now); `attempts` counts claims, committed before the work starts, so a job
  that kills its worker every time still ends as 'failed' after `max_attempts` claims.

Revision ID: 0010
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TENANT_EXPR = "company_id = (SELECT ils_current_company())"


def upgrade() -> None:
    op.execute("""
        CREATE TABLE ingest_jobs (
            company_id varchar(64) NOT NULL,
            id varchar(64) NOT NULL,
            document_id varchar(64) NOT NULL,
            filename varchar(512) NOT NULL,
            category varchar(100),
            uploaded_by varchar(64),
            payload bytea,
            status varchar(16) NOT NULL DEFAULT 'queued',
            attempts integer NOT NULL DEFAULT 0,
            max_attempts integer NOT NULL DEFAULT 3,
            run_after timestamptz NOT NULL DEFAULT now(),
            error text,
            created_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz,
            finished_at timestamptz,
            PRIMARY KEY (company_id, id),
            CONSTRAINT fk_ingest_jobs_document FOREIGN KEY (company_id, document_id)
                REFERENCES documents (company_id, id) ON DELETE CASCADE DEFERRABLE INITIALLY IMMEDIATE,
            CONSTRAINT ck_ingest_jobs_status CHECK (status IN ('queued', 'running', 'done', 'failed')),
            CONSTRAINT ck_ingest_jobs_attempts CHECK (max_attempts >= 1 AND attempts >= 0)
        )
    """)
    # What a worker scans for: the few pending rows, oldest first.
    op.execute("CREATE INDEX ix_ingest_jobs_pending ON ingest_jobs (run_after, created_at) "
               "WHERE status IN ('queued', 'running')")
    op.execute("CREATE INDEX ix_ingest_jobs_document ON ingest_jobs (company_id, document_id)")
    op.execute("ALTER TABLE ingest_jobs ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE ingest_jobs FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY tenant_isolation ON ingest_jobs USING ({TENANT_EXPR}) WITH CHECK ({TENANT_EXPR})")
    op.execute("CREATE POLICY owner_maintenance ON ingest_jobs TO CURRENT_USER USING (true) WITH CHECK (true)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS ingest_jobs")
