"""Retry delays: exponential backoff with optional jitter (5 s, 25 s, 125 s by default)."""

from __future__ import annotations

import random

from shared.registry import Backoff
from shared.settings import Settings

NO_OVERRIDE = Backoff()


def retry_delay(attempt: int, settings: Settings, backoff: Backoff = NO_OVERRIDE,
                rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    base = settings.retry_backoff_base if backoff.base is None else backoff.base
    factor = settings.retry_backoff_factor if backoff.factor is None else backoff.factor
    cap = settings.retry_backoff_max if backoff.max_delay is None else backoff.max_delay
    jitter = settings.retry_jitter if backoff.jitter is None else backoff.jitter
    delay = min(base * factor ** max(attempt - 1, 0), cap)
    if jitter:
        delay *= 1 + (rng or random).uniform(-jitter, jitter)
    return max(delay, 0.0)
