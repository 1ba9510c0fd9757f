from shared.models import JobCreate
from tests.support.waits import eventually


async def test_job_runs_to_completion(service, start_worker, store):
    job, created = await service.create(JobCreate(job_type="noop", payload={}))
    assert created
    await start_worker()

    async def done():
        row = await store.get(job["id"])
        return row["status"] == "COMPLETED" and row

    row = await eventually(done, what="job completed")
    assert row["attempts"] == 1
