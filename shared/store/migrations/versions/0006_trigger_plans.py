"""The history trigger plans its joins for each statement's own rows.

``jobs_record_update`` (0001, counting added in 0003) joins the statement's old and new
rows (its transition tables) three times. PL/pgSQL plans a static query once per
connection, at its first call, and keeps that plan: a query without parameters never gets
a custom plan. The planner sizes a transition table by its rows at that moment, so a
connection whose first UPDATE of ``jobs`` touched no row (the worker's warm-up runs the
claim and the settle with empty arrays) or one row kept nested-loop joins for every later
statement: n x n comparisons, 5.9 ms of trigger time for 100 jobs instead of 0.6 ms, and
the drain at concurrency 100 fell from ~11k to ~7k jobs/s (bench/RESULTS.md, issue 12
round four). ``EXECUTE`` plans each query with the rows it has (hash joins at any size);
planning the three costs about 0.1 ms per statement, not per job.

Nothing else changes: same checks, same history and count rows.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

RECORD_UPDATE = """
CREATE OR REPLACE FUNCTION jobs_record_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    EXECUTE $q$
        SELECT o.id, o.status AS from_status, n.status AS to_status
        FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE o.status <> n.status AND NOT EXISTS (
            SELECT 1 FROM job_status_transitions t
            WHERE t.from_status = o.status AND t.to_status = n.status)
        LIMIT 1$q$ INTO bad;
    -- EXECUTE does not set FOUND; INTO leaves the record's fields null without a row.
    IF bad.id IS NOT NULL THEN
        RAISE EXCEPTION 'illegal job status transition % -> % for job %',
            bad.from_status, bad.to_status, bad.id USING ERRCODE = 'check_violation';
    END IF;
    EXECUTE $q$
        INSERT INTO job_transitions (job_id, from_status, to_status, attempt, reason, worker,
                                     at)
        SELECT n.id, o.status, n.status, n.attempts, n.status_reason,
               coalesce(n.lease_owner, o.lease_owner), n.updated_at
        FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE o.status <> n.status$q$;
    EXECUTE $q$
        INSERT INTO job_count_deltas (namespace, job_type, status, n, retries)
        SELECT ns, job_type, status, sum(n), sum(retries) FROM (
            SELECT coalesce(o.namespace, '') AS ns, o.job_type, o.status, -1 AS n,
                   -greatest(o.attempts - 1, 0) AS retries
            FROM old_rows o JOIN new_rows n ON n.id = o.id
            WHERE o.status <> n.status OR o.attempts <> n.attempts
            UNION ALL
            SELECT coalesce(n.namespace, ''), n.job_type, n.status, 1,
                   greatest(n.attempts - 1, 0)
            FROM old_rows o JOIN new_rows n ON n.id = o.id
            WHERE o.status <> n.status OR o.attempts <> n.attempts) d
        GROUP BY ns, job_type, status
        HAVING sum(n) <> 0 OR sum(retries) <> 0$q$;
    RETURN NULL;
END $$"""

# As 0003 wrote it.
RECORD_UPDATE_0003 = """
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


def upgrade() -> None:
    op.execute(RECORD_UPDATE)


def downgrade() -> None:
    op.execute(RECORD_UPDATE_0003)
