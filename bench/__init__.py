"""Durable benchmark of the scheduler: enqueue, drain, pickup latency, worker memory.

Run it with ``uv run python -m bench`` (``--quick`` for a smoke run); see
``bench/__main__.py`` for the options and ``bench/RESULTS.md`` for figures.
"""
