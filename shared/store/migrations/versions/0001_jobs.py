"""Jobs table, transition history, and the trigger that guards and records transitions.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Kept literally here (not imported from shared.core.status) so this migration never changes
# after it shipped; tests/test_transitions.py checks it still equals shared.status.
LEGAL = {
    "PENDING": ["QUEUED", "CANCELLED"],
    "QUEUED": ["PROCESSING", "PENDING", "CANCELLED"],
    "PROCESSING": ["COMPLETED", "RETRYING", "FAILED", "CANCELLED", "QUEUED"],
    "RETRYING": ["PROCESSING", "CANCELLED"],
    "FAILED": ["QUEUED"],
}
STATUSES = ["PENDING", "QUEUED", "PROCESSING", "RETRYING", "COMPLETED", "FAILED", "CANCELLED"]


def upgrade() -> None:
    statuses = ", ".join(f"'{s}'" for s in STATUSES)
    op.execute(
        """
        CREATE TABLE job_status_transitions (
            from_status text NOT NULL,
            to_status   text NOT NULL,
            PRIMARY KEY (from_status, to_status)
        )"""
    )
    pairs = ", ".join(f"('{a}', '{b}')" for a, targets in LEGAL.items() for b in targets)
    op.execute(f"INSERT INTO job_status_transitions VALUES {pairs}")
    op.execute(
        f"""
        CREATE TABLE jobs (
            id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            seq              bigint GENERATED ALWAYS AS IDENTITY,
            queue            text NOT NULL DEFAULT 'default',
            job_type         text NOT NULL,
            payload          jsonb NOT NULL,
            priority         smallint NOT NULL CHECK (priority BETWEEN 1 AND 10),
            status           text NOT NULL CHECK (status IN ({statuses})),
            status_reason    text,
            scheduled_at     timestamptz,
            run_at           timestamptz,
            attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            max_retries      integer NOT NULL CHECK (max_retries >= 0),
            timeout_seconds  double precision NOT NULL CHECK (timeout_seconds > 0),
            last_error       text,
            result           jsonb,
            idempotency_key  text,
            request_hash     text,
            cancel_requested boolean NOT NULL DEFAULT false,
            lease_owner      text,
            created_at       timestamptz NOT NULL DEFAULT now(),
            updated_at       timestamptz NOT NULL DEFAULT now(),
            started_at       timestamptz,
            finished_at      timestamptz
        )"""
    )
    op.execute("CREATE UNIQUE INDEX jobs_seq_key ON jobs (seq)")
    # Only the states that are looked up by status (listing, the dead letter queue, the
    # scheduler's sweeps): finished jobs, the bulk of the table, cost no entry here.
    op.execute(
        "CREATE INDEX jobs_status_seq ON jobs (status, seq) "
        "WHERE status IN ('PENDING', 'QUEUED', 'PROCESSING', 'RETRYING', 'FAILED')"
    )
    op.execute(
        "CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key) "
        "WHERE idempotency_key IS NOT NULL"
    )
    op.execute("CREATE INDEX jobs_pending_due ON jobs (run_at) WHERE status = 'PENDING'")
    op.execute(
        """
        CREATE TABLE job_transitions (
            id          bigint GENERATED ALWAYS AS IDENTITY,
            job_id      uuid NOT NULL,
            from_status text,
            to_status   text NOT NULL,
            attempt     integer NOT NULL,
            reason      text,
            worker      text,
            at          timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (job_id, id)
        )"""
    )
    # One index, the one a job's history is read by. No foreign key to jobs: its per-row
    # check doubled the cost of every batch insert; rows are written only by the triggers
    # below and removed with their job by purge.
    # A statement-level trigger with transition tables: one INSERT into the history per
    # statement, however many jobs it touched, so batch claims and settles stay cheap.
    # Inserts write no history: a job's creation is read from its row (JobStore.history).
    op.execute(
        """
        CREATE FUNCTION jobs_record_update() RETURNS trigger LANGUAGE plpgsql AS $$
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
            INSERT INTO job_transitions
                (job_id, from_status, to_status, attempt, reason, worker, at)
            SELECT n.id, o.status, n.status, n.attempts, n.status_reason,
                   coalesce(n.lease_owner, o.lease_owner),
                   n.updated_at
            FROM old_rows o JOIN new_rows n ON n.id = o.id
            WHERE o.status <> n.status;
            RETURN NULL;
        END $$"""
    )
    op.execute(
        """
        CREATE TRIGGER jobs_update_history AFTER UPDATE ON jobs
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION jobs_record_update()"""
    )


def downgrade() -> None:
    op.execute("DROP TABLE job_transitions")
    op.execute("DROP TABLE jobs")
    op.execute("DROP FUNCTION jobs_record_update()")
    op.execute("DROP TABLE job_status_transitions")
