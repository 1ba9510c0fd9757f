"""Driving jobs through the real API in tests: create, wait for an end state, expect 422."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.waits import eventually

PREFIX = "/api/v1"
FINAL = {"COMPLETED", "FAILED", "CANCELLED"}


async def create(api: httpx.AsyncClient, job_type: str, payload: dict[str, Any],
                 **fields: Any) -> str:
    r = await api.post(f"{PREFIX}/jobs", json={"job_type": job_type, "payload": payload,
                                               **fields})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def get(api: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    r = await api.get(f"{PREFIX}/jobs/{job_id}")
    assert r.status_code == 200, r.text
    job: dict[str, Any] = r.json()
    return job


async def finished(api: httpx.AsyncClient, job_id: str, timeout: float = 20.0
                   ) -> dict[str, Any]:
    """The job once it reached COMPLETED, FAILED or CANCELLED."""
    async def check() -> dict[str, Any] | None:
        job = await get(api, job_id)
        return job if job["status"] in FINAL else None

    job = await eventually(check, timeout, interval=0.05, what=f"job {job_id} to finish")
    assert job is not None
    return job


async def refused(api: httpx.AsyncClient, job_type: str, payload: dict[str, Any]
                  ) -> list[list[Any]]:
    """Create a job that must be refused: 422, and the ``loc`` of every bad field."""
    r = await api.post(f"{PREFIX}/jobs", json={"job_type": job_type, "payload": payload})
    assert r.status_code == 422, r.text
    return [d["loc"] for d in r.json()["error"]["details"]]
