"""Activity per minute (``job_activity``): what the console's overview reads, without a scan.

How many jobs of each (namespace, job_type) were created, completed, retried (an attempt
failed, another follows), dead-lettered and cancelled in each minute. The overview asks
for the last hour or day; counting those jobs in ``jobs`` would read every job of the
window (a million of them in a busy day), while this table holds a row per minute and type
that had any activity: 1,440 a day per type (and namespace) at most.

It is built from what the count triggers of 0003 already write, so no write to ``jobs``
does more work than before, bar one column:

- ``job_count_deltas`` gains ``at`` (the transaction's time: a constant default, so adding
  it rewrites nothing) and ``created`` (set by the insert trigger: how many of the rows a
  statement counts were inserted, not moved into that status);
- the fold (``JobStore.fold_counts``, each scheduler tick) adds each delta's positive count
  into its minute's row, and into the minute's row of all namespaces ('*'): one statement
  moves jobs into a status or out of it, never both, so a positive count is the number of
  jobs that entered it;
- readers add the deltas not yet folded, so the counts are current.

Rows older than two days are deleted by the fold (the console shows a day at most).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COUNT_INSERT = """
CREATE OR REPLACE FUNCTION jobs_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (namespace, job_type, status, n, retries, created)
    SELECT coalesce(namespace, ''), job_type, status, count(*),
           sum(greatest(attempts - 1, 0)), count(*)
    FROM new_rows GROUP BY 1, job_type, status;
    RETURN NULL;
END $$"""

# As 0003 wrote it.
COUNT_INSERT_0003 = """
CREATE OR REPLACE FUNCTION jobs_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (namespace, job_type, status, n, retries)
    SELECT coalesce(namespace, ''), job_type, status, count(*), sum(greatest(attempts - 1, 0))
    FROM new_rows GROUP BY 1, job_type, status;
    RETURN NULL;
END $$"""


def upgrade() -> None:
    op.execute("""
        ALTER TABLE job_count_deltas
            ADD COLUMN IF NOT EXISTS at timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN IF NOT EXISTS created bigint NOT NULL DEFAULT 0""")
    op.execute("""
        CREATE TABLE IF NOT EXISTS job_activity (
            -- '' for jobs without one, as in job_counts; '*' for all of them together
            -- (no namespace can be called that), so that the overview of the whole
            -- fleet reads one row per minute and type however many tenants there are
            namespace     text NOT NULL,
            minute        timestamptz NOT NULL,
            job_type      text NOT NULL,
            created       bigint NOT NULL DEFAULT 0,
            completed     bigint NOT NULL DEFAULT 0,
            retried       bigint NOT NULL DEFAULT 0,
            dead_lettered bigint NOT NULL DEFAULT 0,
            cancelled     bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (namespace, minute, job_type)
        )""")
    op.execute("CREATE INDEX IF NOT EXISTS job_activity_minute ON job_activity (minute)")
    op.execute(COUNT_INSERT)


def downgrade() -> None:
    op.execute(COUNT_INSERT_0003)
    op.execute("DROP TABLE job_activity")
    op.execute("ALTER TABLE job_count_deltas DROP COLUMN created, DROP COLUMN at")
