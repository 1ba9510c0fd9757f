"""EventBridge in LocalStack: a ``rate(1 minute)`` rule delivers to an SQS target, and
that very event, handed to the scheduler function (Lambda itself needs Docker here), moves
the jobs due within the lookahead from PENDING into Redis's delayed set.

The rule first fires a minute after it exists; the session's LocalStack creates it at
start, so in a full run this test mostly finds the event already waiting. Named to sort
after the other LocalStack tests for the same reason.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.api_schemas import JobCreate
from shared.connections import Stores
from shared.core.service import JobService
from shared.settings import Settings
from tests.support.localstack import LocalStack
from tests.support.waits import eventually

LOOKAHEAD = 300.0  # the function's; the API below creates with a much shorter one


def _receive(ls: LocalStack, queue_url: str) -> dict[str, Any] | None:
    sqs = ls.client("sqs")
    got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=5)
    for message in got.get("Messages", []):
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        body: dict[str, Any] = json.loads(message["Body"])
        return body
    return None


@pytest.mark.timeout(300)
async def test_rule_delivery_drives_the_scheduler_function(
        aws_env: LocalStack, settings: Settings, registry: Any, stores: Stores, spawn: Any,
        tmp_path: Path) -> None:
    queue_url, rule_arn = await asyncio.to_thread(aws_env.tick_queue)

    service = JobService(Stores(settings.model_copy(
        update={"schedule_lookahead_seconds": 10})), registry)
    now = datetime.now(UTC)
    soon, _ = await service.create(JobCreate(job_type="noop", payload={"tag": "soon"},
                                             scheduled_at=now + timedelta(seconds=200)))
    later, _ = await service.create(JobCreate(job_type="noop", payload={"tag": "later"},
                                              scheduled_at=now + timedelta(hours=2)))
    await service.stores.close()
    assert soon["status"] == later["status"] == "PENDING"

    event = await eventually(lambda: asyncio.to_thread(_receive, aws_env, queue_url),
                             timeout=150, interval=0.1, what="the rule's delivery to SQS")
    assert event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events"
    assert event["resources"] == [rule_arn]

    path = tmp_path / "delivered-event.json"
    path.write_text(json.dumps(event))
    proc = await spawn("-m", "tests.support.invoke", "functions.scheduler.handler:handler",
                       str(path), schedule_lookahead_seconds=LOOKAHEAD)
    assert await asyncio.wait_for(proc.wait(), 90) == 0, proc.log_path.read_text()
    [summary] = [json.loads(line[7:]) for line in proc.log_path.read_text().splitlines()
                 if line.startswith("RESULT ")]
    assert summary["event_id"] == event["id"]
    assert summary["promoted"] == 1

    store = await stores.store()
    assert (await store.get(soon["id"]))["status"] == "QUEUED"
    assert (await store.get(later["id"]))["status"] == "PENDING"
    score = await stores.redis.zscore(stores.queue().k_delayed, str(soon["id"]))
    assert score == int(soon["run_at"].timestamp() * 1000)
    assert await stores.redis.zscore(stores.queue().k_delayed, str(later["id"])) is None
