"""Recover: jobs whose lease expired (their worker stopped heartbeating) are settled by the
dead-letter rule, back to their queue or to the dead letter queue (or CANCELLED when a
cancel was pending); see ``Lifecycle.recover``."""

from __future__ import annotations

from shared.core.lifecycle import Lifecycle, Recovered
from shared.queue.redis_queue import RedisQueue


async def recover(lifecycle: Lifecycle, queue: RedisQueue, limit: int = 1000,
                  rounds: int = 100) -> Recovered:
    """Every expired lease of ``queue``, in batches of ``limit`` (at most ``rounds``)."""
    done = Recovered()
    for _ in range(rounds):
        part = await lifecycle.recover(queue, limit)
        done.requeued += part.requeued
        done.dead_lettered += part.dead_lettered
        done.cancelled += part.cancelled
        if not part.any:
            break
    return done
