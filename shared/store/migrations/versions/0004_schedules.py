"""Recurring schedules, and the columns that tie a job to the (schedule, fire time) it runs.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS schedules (
            id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            namespace       text,  -- the tenant, as on jobs; NULL: unbound (and code)
            name            text NOT NULL,
            cron            text NOT NULL,
            timezone        text NOT NULL,
            job_type        text NOT NULL,
            payload         jsonb NOT NULL,
            priority        smallint NOT NULL CHECK (priority BETWEEN 1 AND 10),
            max_retries     integer NOT NULL CHECK (max_retries >= 0),
            timeout_seconds double precision NOT NULL CHECK (timeout_seconds > 0),
            queue           text NOT NULL,
            paused          boolean NOT NULL DEFAULT false,
            overlap         text NOT NULL CHECK (overlap IN ('allow', 'skip')),
            misfire         text NOT NULL CHECK (misfire IN ('run_once', 'skip')),
            start_at        timestamptz,
            end_at          timestamptz,
            source          text NOT NULL CHECK (source IN ('api', 'code')),
            -- The watermark: the earliest fire time not yet made into a job. NULL: the
            -- schedule has no fire time left (past its end). It only moves in the same
            -- transaction as the jobs it made.
            next_fire_at    timestamptz,
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now(),
            CHECK (end_at IS NULL OR start_at IS NULL OR end_at > start_at)
        )"""
    )
    # Names are unique per tenant: one cannot take (or learn of) another's, and only an
    # unbound caller's schedule can hold the name of one declared in code.
    op.execute("CREATE UNIQUE INDEX IF NOT EXISTS schedules_name ON schedules "
               "((coalesce(namespace, '')), name)")
    op.execute("CREATE INDEX IF NOT EXISTS schedules_due ON schedules (next_fire_at) "
               "WHERE NOT paused AND next_fire_at IS NOT NULL")
    # IF NOT EXISTS throughout: the indexes below commit on their own, so a migration that
    # failed there is run again from the top.
    # Added without defaults that rewrite the table (NULL / constant false): instant on a
    # large jobs table.
    op.execute("ALTER TABLE jobs ADD COLUMN IF NOT EXISTS schedule_id uuid, "
               "ADD COLUMN IF NOT EXISTS fire_time timestamptz, "
               "ADD COLUMN IF NOT EXISTS skip_overlap boolean NOT NULL DEFAULT false")
    # Exactly one job per (schedule, fire time), however many ticks race: the key, not
    # timing, makes a second insert a no-op. It also serves "the last runs of a schedule".
    # The overlap check at start looks only at running runs: a small index, whatever the
    # schedule's history holds. Both built CONCURRENTLY (outside a transaction): a plain
    # CREATE INDEX would block every write to a live jobs table while it scans it.
    with op.get_context().autocommit_block():
        op.execute("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS jobs_schedule_fire "
                   "ON jobs (schedule_id, fire_time) WHERE schedule_id IS NOT NULL")
        op.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_schedule_running "
                   "ON jobs (schedule_id, fire_time) "
                   "WHERE schedule_id IS NOT NULL AND status = 'PROCESSING'")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS jobs_schedule_running")
    op.execute("DROP INDEX IF EXISTS jobs_schedule_fire")
    op.execute("ALTER TABLE jobs DROP COLUMN skip_overlap, DROP COLUMN fire_time, "
               "DROP COLUMN schedule_id")
    op.execute("DROP TABLE schedules")
