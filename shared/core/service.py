"""Creating, reading and steering jobs: the verbs the API (and any Python caller) uses.

The service checks input (job type, payload model, bounds, idempotency) and reads; every
state change goes through ``shared.core.lifecycle`` (PostgreSQL first, then Redis). The API
routes call this service, never the stores.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from pydantic import ValidationError

from shared.api_schemas import MAX_PAYLOAD_DEPTH, JobCreate
from shared.connections import Stores
from shared.core.enqueue_coalescer import EnqueueCoalescer
from shared.core.lifecycle import Lifecycle
from shared.core.status import Status
from shared.errors import Conflict, IdempotencyConflict, NotFound, ValidationFailed
from shared.observability.logs import get_logger
from shared.queue import presence
from shared.queue.presence import LimitInForce, WorkerPresence
from shared.registry import Registry
from shared.store import insights
from shared.store.insights import Activity, DeadLetterGroups, Window
from shared.store.jobs import JobStore, NewJob, Row

log = get_logger("api")

# Jobs validated per step of a keyless batch: each step's INSERT runs in PostgreSQL while
# the next step is validated (see ``JobService._prepared_chunks``).
PREPARED_CHUNK = 250
# The first step is half a step: nothing can run in PostgreSQL while it is validated. (So
# is the last, which runs in PostgreSQL with nothing left to validate: 1,000 jobs go as
# 125, 250, 250, 250 and 125.)
FIRST_CHUNK = PREPARED_CHUNK // 2
# The most time one step's validation may hold the event loop; the rest of it goes to a
# thread.
LOOP_BUDGET_S = 0.005


def request_hash(specs: Sequence[JobCreate], batch: bool = False) -> str:
    # The endpoint is part of the request: a batch of one reusing a single create's key
    # (``k#0`` vs ``k``) must be a conflict, never a replay of the other endpoint's job.
    canonical = json.dumps({"batch": batch, "jobs": [s.model_dump(mode="json") for s in specs]},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def idempotency_keys(key: str, count: int) -> list[str]:
    """The stored key of each job a create makes: the client's own key for the first.

    /jobs and /jobs/batch share one namespace: the first job of either holds the key
    itself, so reusing a key on the other endpoint collides in the unique index and ends
    as a 409 (the request hashes differ), never as a second job.
    """
    return [key, *(f"{key}#{i}" for i in range(1, count))]


def _payload_invalid(spec: JobCreate, loc: list[str | int], exc: ValidationError
                     ) -> ValidationFailed:
    details: list[dict[str, Any]] = []
    seen: set[tuple[str | int, ...]] = set()
    for e in exc.errors(include_url=False):
        where = (*loc, "payload", *_input_path(spec.payload, e["loc"], e["type"]))
        if where not in seen:  # one entry per field, not one per member of a union
            seen.add(where)
            details.append({"loc": list(where), "msg": e["msg"], "type": e["type"]})
    first = details[0]
    return ValidationFailed(
        f"invalid payload for job_type {spec.job_type!r}: "
        f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}", details)


def _input_path(data: Any, loc: Sequence[str | int], kind: str) -> list[str | int]:
    """A pydantic error location as a path through the client's own input.

    For a union field pydantic inserts the member's tag (``to.function-after[...]`` for
    ``EmailStr | list[EmailStr]``): a step the input does not have is such a tag, and is
    dropped. Only a missing field may end the path without being in the input.
    """
    path: list[str | int] = []
    for i, step in enumerate(loc):
        present = (step in data if isinstance(data, dict)
                   else isinstance(data, list) and isinstance(step, int)
                   and 0 <= step < len(data))
        if present:
            data = data[step]
            path.append(step)
        elif kind == "missing" and i == len(loc) - 1:
            path.append(step)
    return path


# PostgreSQL's jsonb refuses \u0000, and a lone surrogate cannot be encoded as UTF-8.
_UNSTORABLE_CHARS = re.compile("[\x00\ud800-\udfff]")


def _storable(payload: Any) -> bool:
    """Whether jsonb can store every value of a payload: the common case, checked without
    building the path to each value (which cost more than the check itself)."""
    todo: list[Any] = [payload]
    while todo:
        value = todo.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and _UNSTORABLE_CHARS.search(key):
                    return False
                if isinstance(item, str):
                    if _UNSTORABLE_CHARS.search(item):
                        return False
                elif isinstance(item, float):
                    if not math.isfinite(item):
                        return False
                elif isinstance(item, dict | list | tuple):
                    todo.append(item)
        elif isinstance(value, list | tuple):
            todo.extend(value)
        elif isinstance(value, str):
            if _UNSTORABLE_CHARS.search(value):
                return False
        elif isinstance(value, float) and not math.isfinite(value):
            return False
    return True


def _unstorable(payload: Any) -> tuple[list[str | int], str] | None:
    """Where a payload holds what jsonb cannot store: NaN, infinities, NUL, surrogates.

    Iterative: a payload may nest as deep as the JSON parser allowed.
    """
    if _storable(payload):
        return None
    todo: list[tuple[Any, list[str | int]]] = [(payload, [])]
    while todo:
        value, path = todo.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return path, "NaN and infinite numbers are not valid JSON"
        if isinstance(value, str) and _UNSTORABLE_CHARS.search(value):
            return path, "strings may not hold NUL (\\u0000) or unpaired surrogates"
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and _UNSTORABLE_CHARS.search(key):
                    return path, "keys may not hold NUL (\\u0000) or unpaired surrogates"
                todo.append((item, [*path, key]))
        elif isinstance(value, list | tuple):
            todo.extend((item, [*path, i]) for i, item in enumerate(value))
    return None


def _deeper_than(payload: Any, limit: int) -> list[str | int] | None:
    """The path to the first value nested more than ``limit`` levels deep, or None.

    Iterative, and run before pydantic sees the payload: its serializer gives up (a 500)
    somewhere past 255 levels, and nothing legitimate nests that deep.
    """
    # First by depth alone, visiting containers only: the path is built for the rare
    # payload that is too deep.
    level: list[Any] = [payload]
    for _ in range(limit):
        level = [item for value in level
                 for item in (value.values() if isinstance(value, dict) else value)
                 if isinstance(item, dict | list)]
        if not level:
            return None
    todo: list[tuple[Any, list[str | int]]] = [(payload, [])]
    while todo:
        value, path = todo.pop()
        if isinstance(value, dict | list) and len(path) >= limit:
            return path
        if isinstance(value, dict):
            todo.extend((item, [*path, key]) for key, item in value.items())
        elif isinstance(value, list):
            todo.extend((item, [*path, i]) for i, item in enumerate(value))
    return None


class JobService:
    def __init__(self, stores: Stores, registry: Registry, *,
                 coalesce_creates: bool = False) -> None:
        """``coalesce_creates``: concurrent single creates without an idempotency key share
        one INSERT, commit and push (``shared.core.enqueue_coalescer``); the API turns it
        on, a library caller awaiting one create at a time gains nothing from it."""
        self.stores = stores
        self.registry = registry
        self.settings = stores.settings
        self._coalescer = (EnqueueCoalescer(self._enqueue_now) if coalesce_creates
                           else None)

    async def _enqueue_now(self, jobs: Sequence[NewJob]) -> list[Row]:
        return await self._lifecycle(await self.stores.store()).enqueue(jobs)

    # --- create ---------------------------------------------------------------------------

    def _prepare(self, spec: JobCreate, loc: list[str | int], now: datetime,
                 namespace: str | None = None) -> NewJob:
        jt = self.registry.get(spec.job_type)
        if jt is None:
            raise ValidationFailed(
                f"unknown job_type {spec.job_type!r}; known types: "
                + ", ".join(self.registry.names()),
                [{"loc": [*loc, "job_type"], "msg": "unknown job type; known: "
                  + ", ".join(self.registry.names()), "type": "unknown_job_type"}],
            )
        too_deep = _deeper_than(spec.payload, MAX_PAYLOAD_DEPTH)
        if too_deep is not None:
            msg = f"nested deeper than {MAX_PAYLOAD_DEPTH} levels"
            raise ValidationFailed(
                f"invalid payload for job_type {spec.job_type!r}: "
                f"{'.'.join(str(p) for p in [*loc, 'payload', *too_deep])}: {msg}",
                [{"loc": [*loc, "payload", *too_deep], "msg": msg, "type": "too_deep"}])
        try:
            model = jt.parse(spec.payload, self.settings)
        except ValidationError as exc:
            raise _payload_invalid(spec, loc, exc) from None
        # Checked on the python dump: the JSON dump would silently turn NaN into null.
        problem = _unstorable(model.model_dump(exclude_unset=True))
        if problem is not None:
            where, msg = problem
            raise ValidationFailed(
                f"invalid payload for job_type {spec.job_type!r}: "
                f"{'.'.join(str(p) for p in [*loc, 'payload', *where])}: {msg}",
                [{"loc": [*loc, "payload", *where], "msg": msg, "type": "json_invalid"}])
        payload = model.model_dump(mode="json", exclude_unset=True)
        payload = jt.seal(payload, self.settings)  # stored form: credentials encrypted
        status = Status.QUEUED
        if spec.scheduled_at is not None:
            horizon = now + timedelta(seconds=self.settings.schedule_lookahead_seconds)
            if spec.scheduled_at > horizon:
                status = Status.PENDING
        return NewJob(
            job_type=jt.name,
            payload=payload,
            priority=spec.priority if spec.priority is not None else jt.priority,
            max_retries=(spec.max_retries if spec.max_retries is not None
                         else jt.max_retries if jt.max_retries is not None
                         else self.settings.default_max_retries),
            timeout_seconds=(spec.timeout_seconds or jt.timeout_seconds
                             or self.settings.default_timeout_seconds),
            queue=jt.queue,
            scheduled_at=spec.scheduled_at,
            status=status,
            namespace=namespace,
        )

    async def create(self, spec: JobCreate, idempotency_key: str | None = None,
                     namespace: str | None = None) -> tuple[Row, bool]:
        """Create one job. Returns the job and False when it is an idempotent replay."""
        rows, created = await self.create_many([spec], idempotency_key, batch=False,
                                               namespace=namespace)
        return rows[0], created

    async def create_many(self, specs: Sequence[JobCreate], idempotency_key: str | None = None,
                          *, batch: bool = True, namespace: str | None = None
                          ) -> tuple[list[Row], bool]:
        """Validate every job first (all or nothing), then one INSERT and one Redis push.

        A batch without a key of more than ``PREPARED_CHUNK`` jobs is validated and inserted
        in steps, each INSERT running while the next step is validated, all in one
        transaction: committed once every job has passed, then one Redis push.

        ``namespace``: the caller's tenant, stored on every job. Idempotency keys are per
        tenant: the stored key is prefixed with the namespace and a separator that a key
        cannot contain (control characters are refused), so one tenant's key can neither
        collide with nor replay another's.
        """
        if len(specs) > self.settings.batch_max_jobs:
            raise ValidationFailed(
                f"a batch holds at most {self.settings.batch_max_jobs} jobs, got {len(specs)}",
                [{"loc": ["body", "jobs"], "msg": f"at most {self.settings.batch_max_jobs} "
                  "jobs", "type": "too_long"}])
        now = datetime.now(UTC)
        if batch and not idempotency_key and len(specs) > PREPARED_CHUNK:
            store = await self.stores.store()
            return await self._lifecycle(store).enqueue_chunks(
                self._prepared_chunks(specs, now, namespace)), True

        def prepare() -> tuple[list[NewJob], str | None]:
            return ([self._prepare(s, ["body", "jobs", i] if batch else ["body"], now, namespace)
                     for i, s in enumerate(specs)],
                    request_hash(specs, batch) if idempotency_key else None)

        # Payload models, the jsonb check and the hash are Python work per value: for a
        # 5 MiB batch about a second, which on the event loop would stall every other
        # request. In a thread the GIL still hands the loop its turn every few ms.
        new, digest = await asyncio.to_thread(prepare) if len(specs) > 1 else prepare()
        if idempotency_key and namespace is not None:
            idempotency_key = f"{namespace}\x1f{idempotency_key}"
        if idempotency_key:
            keys = idempotency_keys(idempotency_key, len(new))
            new = [replace(j, idempotency_key=k, request_hash=digest)
                   for j, k in zip(new, keys, strict=True)]
        if self._coalescer is not None and not batch and not idempotency_key:
            return [await self._coalescer.enqueue(new[0])], True
        store = await self.stores.store()
        rows = await self._lifecycle(store).enqueue(new, all_or_nothing=bool(idempotency_key))
        if len(rows) < len(new):
            return await self._replay(store, new, digest), False
        return rows, True

    async def _prepared_chunks(self, specs: Sequence[JobCreate], now: datetime,
                               namespace: str | None) -> AsyncIterator[list[NewJob]]:
        """A keyless batch's jobs, validated a chunk at a time: the store inserts each
        chunk while the next one is validated (``JobStore.insert_chunks``), and commits
        them together once every job has passed.

        On the event loop while a chunk takes less than ``LOOP_BUDGET_S`` (small payloads:
        ~1.5 ms for 250); the rest of a chunk that takes longer (large payloads: a 5 MiB
        batch takes about a second) in a thread, where the GIL still hands the loop its
        turn every few ms. A thread for every chunk cost a 1,000-job batch ~2 ms more: the
        loop waits for the GIL to read each INSERT's answer.
        """
        def prepare(first: int, end: int) -> list[NewJob]:
            return [self._prepare(specs[i], ["body", "jobs", i], now, namespace)
                    for i in range(first, end)]

        starts = [0, *range(FIRST_CHUNK, len(specs), PREPARED_CHUNK)]
        for first, end in zip(starts, [*starts[1:], len(specs)], strict=True):
            chunk: list[NewJob] = []
            deadline = time.perf_counter() + LOOP_BUDGET_S
            while len(chunk) < end - first and time.perf_counter() < deadline:
                chunk.append(self._prepare(specs[first + len(chunk)],
                                           ["body", "jobs", first + len(chunk)], now, namespace))
            if len(chunk) < end - first:
                chunk += await asyncio.to_thread(prepare, first + len(chunk), end)
            yield chunk

    def _lifecycle(self, store: JobStore) -> Lifecycle:
        return Lifecycle(store, self.stores.queue)

    async def _replay(self, store: JobStore, new: Sequence[NewJob], digest: str | None
                      ) -> list[Row]:
        # Some keys existed already (and this request's insert was rolled back). Only a
        # complete, identical earlier request is a replay; anything else is a conflict.
        keys = [j.idempotency_key for j in new if j.idempotency_key]
        earlier = await store.get_by_idempotency_keys(keys)
        if len(earlier) == len(new) and all(r["request_hash"] == digest for r in earlier):
            order = {k: i for i, k in enumerate(keys)}
            return sorted(earlier, key=lambda r: order[r["idempotency_key"]])
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request body",
            [{"loc": ["header", "Idempotency-Key"], "msg": "key reused with another body",
              "type": "idempotency_conflict"}])

    # --- steer -------------------------------------------------------------------------------

    async def get(self, job_id: uuid.UUID, namespace: str | None = None) -> asyncpg.Record:
        """``namespace``: a job of another tenant is not found (404, not 403: ids of other
        tenants' jobs must not be confirmed). Likewise for cancel and redrive."""
        row = await (await self.stores.store()).get(job_id, namespace)
        if row is None:
            raise NotFound(f"job {job_id} not found")
        return row

    async def history(self, job_id: uuid.UUID) -> list[asyncpg.Record]:
        return await (await self.stores.store()).history(job_id)

    async def list_jobs(self, *, status: Status | None = None, job_type: str | None = None,
                        before_seq: int | None = None, limit: int = 50,
                        namespace: str | None = None) -> list[asyncpg.Record]:
        return await (await self.stores.store()).list_jobs(
            status=status, job_type=job_type, before_seq=before_seq, limit=limit,
            namespace=namespace)

    async def stats(self, namespace: str | None = None) -> dict[str, Any]:
        """Counts by status and type (PostgreSQL) and queue depth per queue (Redis).

        The queues are shared by every namespace: their depths only for unbound callers.
        """
        data = await (await self.stores.store()).stats(namespace)
        names = ({self.settings.queue, *(jt.queue for jt in self.registry.all())}
                 if namespace is None else set())
        data["queues"] = {name: await self.stores.queue(name).depth() for name in sorted(names)}
        return data

    async def cancel(self, job_id: uuid.UUID, namespace: str | None = None
                     ) -> tuple[str, Row]:
        """Cancel at once if waiting; signal the worker if running; 409 if finished."""
        outcome, row = await self._lifecycle(await self.stores.store()).cancel(
            job_id, namespace=namespace)
        if row is None:
            raise NotFound(f"job {job_id} not found")
        if outcome == "refused":
            raise Conflict(f"job {job_id} is {row['status']} and can no longer be cancelled")
        return outcome, row

    async def redrive(self, *, job_ids: Sequence[uuid.UUID] | None = None,
                      job_type: str | None = None, namespace: str | None = None
                      ) -> list[Row]:
        store = await self.stores.store()
        return await self._lifecycle(store).redrive(job_ids=job_ids, job_type=job_type,
                                                    namespace=namespace)

    async def purge_dead(self, job_type: str | None = None, namespace: str | None = None
                         ) -> int:
        return await (await self.stores.store()).purge_dead(job_type, namespace)

    # --- what the console reads ------------------------------------------------------------

    async def activity(self, window: Window, namespace: str | None = None) -> Activity:
        """Jobs created, finished and retried in the last hour or day (migration 0005)."""
        return await insights.activity(await self.stores.pool(), window, namespace)

    async def dead_letter_groups(self, namespace: str | None = None,
                                 job_type: str | None = None) -> DeadLetterGroups:
        return await insights.dead_letter_groups(await self.stores.pool(), namespace,
                                                 job_type)

    async def workers(self) -> tuple[list[WorkerPresence], list[LimitInForce]]:
        """The workers alive (their presence records) and the limits in force now."""
        redis, prefix = self.stores.redis, self.settings.redis_prefix
        return (await presence.workers_alive(redis, prefix),
                await presence.limits_in_force(redis, prefix, self.registry))
