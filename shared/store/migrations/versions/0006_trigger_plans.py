"""The history trigger joins a statement's old and new rows by hashing, at any size.

``jobs_record_update`` (0001, counting added in 0003) joins the statement's old and new
rows (its transition tables) three times. PL/pgSQL plans a static query once per
connection, at its first call, and keeps that plan (a query without parameters never gets
a custom plan), and the planner sizes a transition table by its rows at that moment. So a
connection whose first UPDATE of ``jobs`` touched no row (the worker's warm-up runs the
claim and the settle with empty arrays) or a single row kept nested-loop joins for every
later statement: the new rows rescanned once per old row, n x n for a batch (about 5 ms
more per 100-row statement; the drain at concurrency 100 fell from ~11k to ~7-8k jobs/s:
bench/RESULTS.md, issue 12 round four). With nested loops off inside the function the
cached plans hash (or merge) the two sides, whatever size they were planned for.

Planning each statement instead (``EXECUTE``) was measured too: as fast at 100 rows, but
about twice the backend's CPU per job at 5 rows a statement (the drain at 10).

A later ``CREATE OR REPLACE FUNCTION jobs_record_update`` drops this setting unless it
repeats it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER FUNCTION jobs_record_update() SET enable_nestloop = off")


def downgrade() -> None:
    op.execute("ALTER FUNCTION jobs_record_update() RESET enable_nestloop")
