"""API keys, and the namespace (tenant) of each job.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Kept literally (see 0001): the statuses the namespace list index covers, as in 0001's
# jobs_status_seq, so that a tenant's dead letter queue and active jobs are one index range.
LISTED = "'PENDING', 'QUEUED', 'PROCESSING', 'RETRYING', 'FAILED'"


def upgrade() -> None:
    # Nullable and without a default: PostgreSQL adds it without rewriting the table.
    # NULL is "no tenant": jobs created by an unbound key, seen only by unbound callers.
    op.execute("ALTER TABLE jobs ADD COLUMN namespace text")
    # Partial on namespace: a single-tenant deployment (every job NULL) pays nothing on
    # insert. The first serves a tenant's newest-first listing, the second its listing by
    # status (the dead letter queue is status FAILED).
    op.execute("CREATE INDEX jobs_namespace_seq ON jobs (namespace, seq) "
               "WHERE namespace IS NOT NULL")
    op.execute("CREATE INDEX jobs_namespace_status_seq ON jobs (namespace, status, seq) "
               f"WHERE namespace IS NOT NULL AND status IN ({LISTED})")
    op.execute(
        """
        CREATE TABLE api_keys (
            id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
            prefix       text NOT NULL,
            key_hash     bytea NOT NULL CHECK (length(key_hash) = 32),
            scopes       text[] NOT NULL CHECK (cardinality(scopes) > 0),
            namespace    text,
            created_at   timestamptz NOT NULL DEFAULT now(),
            last_used_at timestamptz,
            revoked_at   timestamptz
        )"""
    )
    op.execute("CREATE UNIQUE INDEX api_keys_key_hash ON api_keys (key_hash)")


def downgrade() -> None:
    op.execute("DROP TABLE api_keys")
    op.execute("DROP INDEX jobs_namespace_status_seq")
    op.execute("DROP INDEX jobs_namespace_seq")
    op.execute("ALTER TABLE jobs DROP COLUMN namespace")
