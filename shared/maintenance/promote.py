"""Promote: PENDING jobs due before the next tick (plus margin) go to Redis's delayed set
now, so workers start them on time; PENDING jobs whose push failed go to their ready queue.
SKIP LOCKED in the statement lets overlapping ticks split the work instead of doubling it."""

from __future__ import annotations

from dataclasses import dataclass

from shared.core.lifecycle import Lifecycle, horizon


@dataclass
class Promoted:
    promoted: int = 0


async def promote(lifecycle: Lifecycle, lookahead_seconds: float, batch: int = 1000
                  ) -> Promoted:
    done = Promoted()
    until = horizon(lookahead_seconds)
    while True:
        n = await lifecycle.promote_due(until, batch)
        done.promoted += n
        if n < batch:
            return done
