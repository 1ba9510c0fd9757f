"""Retries with exponential backoff, the dead letter queue, and redrive."""

from __future__ import annotations

import itertools

from shared.api_schemas import JobCreate
from shared.core.backoff import retry_delay
from shared.registry import Backoff
from tests.support.waits import eventually


async def _status(store, job_id, *statuses):
    async def check():
        row = await store.get(job_id)
        return row if row["status"] in statuses else None
    return check


async def test_failed_attempts_retry_on_the_backoff_timeline(service, store, db, start_worker):
    # flaky's backoff: base 0.2 s, factor 2, no jitter -> waits of 0.2 s then 0.4 s
    row, _ = await service.create(JobCreate(job_type="flaky", payload={"fail_times": 2}))
    await start_worker()
    done = await eventually(await _status(store, row["id"], "COMPLETED"), what="completion")
    assert done["attempts"] == 3
    assert done["result"] == {"attempt": 3}
    runs = await db.fetch("SELECT attempt, at FROM runs WHERE job_id = $1 ORDER BY at",
                          row["id"])
    assert [r["attempt"] for r in runs] == [1, 2, 3]
    gaps = [(b["at"] - a["at"]).total_seconds() for a, b in itertools.pairwise(runs)]
    assert 0.2 <= gaps[0] < 0.2 + 0.5
    assert 0.4 <= gaps[1] < 0.4 + 0.5
    history = [(h["from_status"], h["to_status"]) for h in await store.history(row["id"])]
    assert history == [(None, "QUEUED"), ("QUEUED", "PROCESSING"), ("PROCESSING", "RETRYING"),
                       ("RETRYING", "PROCESSING"), ("PROCESSING", "RETRYING"),
                       ("RETRYING", "PROCESSING"), ("PROCESSING", "COMPLETED")]


async def test_exhausted_job_goes_to_dead_letter_queue_and_redrive_runs_it_again(
        service, store, db, start_worker):
    # broken always raises; max_retries=2 -> three attempts, then FAILED
    row, _ = await service.create(JobCreate(job_type="broken", payload={"tag": "x"}))
    await start_worker()
    dead = await eventually(await _status(store, row["id"], "FAILED"), what="dead letter")
    assert dead["attempts"] == 3
    assert "ValueError: boom" in dead["last_error"]
    assert dead["finished_at"] is not None
    assert await store.dead_letter_size() == 1

    redriven = await service.redrive(job_ids=[row["id"]])
    assert [r["id"] for r in redriven] == [row["id"]]
    await eventually(await _status(store, row["id"], "FAILED"), what="second dead letter")
    runs = await db.fetchval("SELECT count(*) FROM runs WHERE job_id = $1", row["id"])
    assert runs == 6  # three attempts, redrive, three more


async def test_permanent_error_skips_retries(service, store, db, start_worker):
    row, _ = await service.create(JobCreate(job_type="flaky",
                                            payload={"fail_times": 5, "permanent": True}))
    await start_worker()
    dead = await eventually(await _status(store, row["id"], "FAILED"), what="dead letter")
    assert dead["attempts"] == 1
    assert "refused for good" in dead["last_error"]


async def test_timeout_fails_the_attempt_and_retries(service, store, start_worker):
    row, _ = await service.create(JobCreate(job_type="record", payload={"seconds": 30},
                                            timeout_seconds=1, max_retries=1))
    await start_worker()
    dead = await eventually(await _status(store, row["id"], "FAILED"), what="timeouts")
    assert dead["attempts"] == 2
    assert "timed out after 1 s" in dead["last_error"]


async def test_retry_after_from_the_handler_overrides_backoff(service, store, db,
                                                              start_worker):
    row, _ = await service.create(JobCreate(job_type="flaky",
                                            payload={"fail_times": 1, "retry_after": 1.0}))
    await start_worker()
    await eventually(await _status(store, row["id"], "COMPLETED"), what="completion")
    runs = await db.fetch("SELECT at FROM runs WHERE job_id = $1 ORDER BY at", row["id"])
    assert 1.0 <= (runs[1]["at"] - runs[0]["at"]).total_seconds() < 1.6


async def test_default_backoff_is_5_25_125_seconds(settings):
    defaults = settings.model_copy(update={"retry_backoff_base": 5.0,
                                           "retry_backoff_factor": 5.0, "retry_jitter": 0.0})
    assert [retry_delay(n, defaults) for n in (1, 2, 3)] == [5.0, 25.0, 125.0]
    jittery = defaults.model_copy(update={"retry_jitter": 0.1})
    assert all(4.5 <= retry_delay(1, jittery) <= 5.5 for _ in range(100))
    assert retry_delay(1, defaults, Backoff(base=1.0, factor=3.0)) == 1.0
    assert retry_delay(3, defaults, Backoff(base=1.0, factor=3.0)) == 9.0
    assert retry_delay(10, defaults, Backoff(max_delay=60.0)) == 60.0
