"""Maintenance passes that keep the system in line with PostgreSQL, apart from the hot path.

One pass per file, each idempotent, safe to run concurrently with itself, and returning its
own small result: ``promote`` (PENDING jobs due soon into Redis), ``recover`` (expired
leases), ``reconcile`` (re-place what Redis lost), ``retention`` (delete finished jobs past
their age). The scheduler tick runs all of them;
every worker also runs ``recover`` every few seconds, so a dead worker's jobs come back
quickly.
"""
