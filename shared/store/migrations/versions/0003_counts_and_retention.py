"""Counts that need no scan, and the indexes retention and filtered lists read.

- ``job_counts`` holds how many jobs are in each (namespace, job_type, status), with their
  retries (namespace '' for jobs without one),
  as of the last fold; ``job_count_deltas`` holds the changes since, one row per (type,
  status) per statement, written by statement-level triggers in the same transaction as
  the change itself (so the counts are exact, never approximate). The scheduler tick folds
  the deltas into the totals, so stats read a few hundred rows whatever the table's size.
  Deltas are appended, never updated: concurrent transactions never wait on a hot counter
  row.
- ``jobs_finished``: finished jobs by status and finish time, what retention deletes by.
- Autovacuum sooner on the tables retention and the fold churn: the count deltas are
  deleted every tick (vacuum after a few thousand dead rows, whatever the table's size),
  and on a table of millions the default 20 % of dead rows would let retention's deletes
  pile up long before space is reused.
- ``jobs_type_seq``: newest-first lists filtered by job type; the status index now also
  covers CANCELLED (a rare state: a filtered list must not scan every completed job), and
  ``jobs_status_type_seq`` serves both filters at once for every status but COMPLETED (the
  bulk of the table, which the type index finds quickly): without it, a rare pair (failed
  emails) scanned every failed job, 560 ms at 5 million rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Legal transitions are checked and recorded exactly as 0001 did; the counting is added.
RECORD_UPDATE = """
CREATE OR REPLACE FUNCTION jobs_record_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT o.id, o.status AS from_status, n.status AS to_status INTO bad
    FROM old_rows o JOIN new_rows n ON n.id = o.id
    WHERE o.status <> n.status AND NOT EXISTS (
        SELECT 1 FROM job_status_transitions t
        WHERE t.from_status = o.status AND t.to_status = n.status)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'illegal job status transition % -> % for job %',
            bad.from_status, bad.to_status, bad.id USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO job_transitions (job_id, from_status, to_status, attempt, reason, worker, at)
    SELECT n.id, o.status, n.status, n.attempts, n.status_reason,
           coalesce(n.lease_owner, o.lease_owner), n.updated_at
    FROM old_rows o JOIN new_rows n ON n.id = o.id
    WHERE o.status <> n.status;
    INSERT INTO job_count_deltas (namespace, job_type, status, n, retries)
    SELECT ns, job_type, status, sum(n), sum(retries) FROM (
        SELECT coalesce(o.namespace, '') AS ns, o.job_type, o.status, -1 AS n,
               -greatest(o.attempts - 1, 0) AS retries
        FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE o.status <> n.status OR o.attempts <> n.attempts
        UNION ALL
        SELECT coalesce(n.namespace, ''), n.job_type, n.status, 1, greatest(n.attempts - 1, 0)
        FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE o.status <> n.status OR o.attempts <> n.attempts) d
    GROUP BY ns, job_type, status
    HAVING sum(n) <> 0 OR sum(retries) <> 0;
    RETURN NULL;
END $$"""

COUNT_INSERT = """
CREATE FUNCTION jobs_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (namespace, job_type, status, n, retries)
    SELECT coalesce(namespace, ''), job_type, status, count(*), sum(greatest(attempts - 1, 0))
    FROM new_rows GROUP BY 1, job_type, status;
    RETURN NULL;
END $$"""

COUNT_DELETE = """
CREATE FUNCTION jobs_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (namespace, job_type, status, n, retries)
    SELECT coalesce(namespace, ''), job_type, status, -count(*),
           -sum(greatest(attempts - 1, 0))
    FROM old_rows GROUP BY 1, job_type, status;
    RETURN NULL;
END $$"""


def upgrade() -> None:
    op.execute("""
        CREATE TABLE job_counts (
            namespace text NOT NULL,
            job_type  text NOT NULL,
            status    text NOT NULL,
            n         bigint NOT NULL,
            retries   bigint NOT NULL,
            PRIMARY KEY (namespace, job_type, status)
        )""")
    op.execute("""
        CREATE TABLE job_count_deltas (
            id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            namespace text NOT NULL,
            job_type  text NOT NULL,
            status   text NOT NULL,
            n        bigint NOT NULL,
            retries  bigint NOT NULL
        )""")
    op.execute("""ALTER TABLE job_count_deltas SET (autovacuum_vacuum_scale_factor = 0,
                   autovacuum_vacuum_threshold = 5000)""")
    for table in ("jobs", "job_transitions"):
        op.execute(f"ALTER TABLE {table} SET (autovacuum_vacuum_scale_factor = 0.02)")
    op.execute(RECORD_UPDATE)
    op.execute(COUNT_INSERT)
    op.execute(COUNT_DELETE)
    op.execute("""
        CREATE TRIGGER jobs_insert_count AFTER INSERT ON jobs
        REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
        EXECUTE FUNCTION jobs_count_insert()""")
    op.execute("""
        CREATE TRIGGER jobs_delete_count AFTER DELETE ON jobs
        REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
        EXECUTE FUNCTION jobs_count_delete()""")
    # The triggers exist (and hold their lock on jobs) before the rows are counted: no
    # change can fall between the two.
    op.execute("""
        INSERT INTO job_counts (namespace, job_type, status, n, retries)
        SELECT coalesce(namespace, ''), job_type, status, count(*),
               sum(greatest(attempts - 1, 0))
        FROM jobs GROUP BY 1, job_type, status""")
    op.execute("""
        CREATE INDEX jobs_finished ON jobs (status, finished_at)
        WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED')""")
    op.execute("CREATE INDEX jobs_type_seq ON jobs (job_type, seq)")
    op.execute("""
        CREATE INDEX jobs_status_type_seq ON jobs (status, job_type, seq)
        WHERE status <> 'COMPLETED'""")
    op.execute("DROP INDEX jobs_status_seq")
    op.execute("""
        CREATE INDEX jobs_status_seq ON jobs (status, seq)
        WHERE status IN ('PENDING', 'QUEUED', 'PROCESSING', 'RETRYING', 'FAILED', 'CANCELLED')
        """)


def downgrade() -> None:
    op.execute("DROP INDEX jobs_status_seq")
    op.execute("""
        CREATE INDEX jobs_status_seq ON jobs (status, seq)
        WHERE status IN ('PENDING', 'QUEUED', 'PROCESSING', 'RETRYING', 'FAILED')""")
    op.execute("DROP INDEX jobs_status_type_seq")
    op.execute("DROP INDEX jobs_type_seq")
    op.execute("DROP INDEX jobs_finished")
    for table in ("jobs", "job_transitions"):
        op.execute(f"ALTER TABLE {table} RESET (autovacuum_vacuum_scale_factor)")
    op.execute("DROP TRIGGER jobs_delete_count ON jobs")
    op.execute("DROP TRIGGER jobs_insert_count ON jobs")
    op.execute("DROP FUNCTION jobs_count_delete()")
    op.execute("DROP FUNCTION jobs_count_insert()")
    op.execute(RECORD_UPDATE.split("    INSERT INTO job_count_deltas")[0]
               + "    RETURN NULL;\nEND $$")
    op.execute("DROP TABLE job_count_deltas")
    op.execute("DROP TABLE job_counts")
