"""data_processing end to end (inline and S3 sources, csv and jsonl, results read back
from S3), the pipeline's semantics, and its memory bound on a 200,000-row input."""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any

import pytest

from shared.job_types.data_processing import DataProcessingPayload
from shared.job_types.data_processing.pipeline import pipeline
from shared.registry import PermanentError
from shared.settings import Settings
from tests.support import job_api
from tests.support.aws_moto import Moto, use_moto
from tests.support.memory import kib, reset_peak

# Peak RSS growth allowed for a worker process streaming the 200,000-row input below
# (14 MiB of csv in, 12 MiB out). Loading it whole would need well over 100 MiB
# (a dict per row). Measured: see test_200k_row_input_stays_within_the_memory_bound.
MEMORY_BOUND_MIB = 40


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Moto:
    return use_moto(monkeypatch)


@pytest.fixture
def settings(settings: Settings, aws: Moto) -> Settings:
    return settings.model_copy(update=aws.settings())


def _jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines()]


def _csv(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


# --- the pipeline alone ------------------------------------------------------------------------


def _run(rows: list[dict[str, Any]], operations: list[dict[str, Any]],
         max_groups: int = 1000) -> list[dict[str, Any]]:
    payload = DataProcessingPayload.model_validate(
        {"source": "s3://bucket/in.jsonl", "format": "jsonl", "operations": operations,
         "destination": "s3://bucket/out.jsonl"})
    return list(pipeline(iter(rows), payload.operations, max_groups))


def test_filters_compare_csv_text_as_numbers() -> None:
    rows = [{"n": "9"}, {"n": "10"}, {"n": "10.5"}, {"n": ""}, {"n": "x"}, {}]
    assert _run(rows, [{"op": "filter", "field": "n", "cmp": "ge", "value": 10}]) == [
        {"n": "10"}, {"n": "10.5"}]
    assert _run(rows, [{"op": "filter", "field": "n", "cmp": "eq", "value": 10}]) == [
        {"n": "10"}]
    assert _run(rows, [{"op": "filter", "field": "n", "cmp": "in", "value": [9, "x"]}]) == [
        {"n": "9"}, {"n": "x"}]
    assert len(_run(rows, [{"op": "filter", "field": "n", "cmp": "missing"}])) == 2


def test_group_by_aggregates_skip_nulls_like_sql() -> None:
    rows = [{"k": "a", "v": 1}, {"k": "a", "v": None}, {"k": "b", "v": "2.5"},
            {"k": "a", "v": 5}]
    aggs = [{"fn": "count"}, {"fn": "count", "field": "v", "name": "with_v"},
            {"fn": "sum", "field": "v"}, {"fn": "mean", "field": "v"},
            {"fn": "min", "field": "v"}, {"fn": "max", "field": "v"}]
    assert _run(rows, [{"op": "group_by", "keys": ["k"], "aggregates": aggs}]) == [
        {"k": "a", "count": 3, "with_v": 2, "sum_v": 6, "mean_v": 3.0, "min_v": 1, "max_v": 5},
        {"k": "b", "count": 1, "with_v": 1, "sum_v": 2.5, "mean_v": 2.5, "min_v": 2.5,
         "max_v": 2.5}]
    # No keys: one row over everything, even over no rows at all.
    assert _run([], [{"op": "group_by", "aggregates": [{"fn": "count"}]}]) == [{"count": 0}]


def test_group_by_refuses_non_numbers_and_too_many_groups() -> None:
    with pytest.raises(PermanentError, match="not a number"):
        _run([{"v": "abc"}], [{"op": "group_by", "aggregates": [{"fn": "sum", "field": "v"}]}])
    with pytest.raises(PermanentError, match="more than 3 distinct keys"):
        _run([{"k": i} for i in range(4)],
             [{"op": "group_by", "keys": ["k"], "aggregates": [{"fn": "count"}]}], 3)


# --- end to end ----------------------------------------------------------------------------------


async def test_inline_records_grouped_into_s3(api: Any, start_worker: Any, aws: Moto) -> None:
    bucket = aws.new_bucket()
    records = [{"region": r, "amount": a, "tags": ["x"]} for r, a in
               [("eu", 12), ("us", 5), ("eu", 30), ("us", 20), ("ap", 11), ("eu", 8)]]
    job_id = await job_api.create(api, "data_processing", {
        "source": records, "format": "jsonl",
        "operations": [
            {"op": "filter", "field": "amount", "cmp": "gt", "value": 10},
            {"op": "group_by", "keys": ["region"], "aggregates": [
                {"fn": "count", "name": "orders"}, {"fn": "sum", "field": "amount"},
                {"fn": "mean", "field": "amount"}, {"fn": "max", "field": "amount"}]},
        ],
        "destination": f"s3://{bucket}/out/by-region.jsonl"})
    await start_worker()
    job = await job_api.finished(api, job_id)
    assert job["status"] == "COMPLETED", job["last_error"]
    assert job["result"] == {"rows_in": 6, "rows_out": 3, "format": "jsonl",
                             "output": f"s3://{bucket}/out/by-region.jsonl",
                             "bytes": job["result"]["bytes"]}
    assert _jsonl(aws.get(f"s3://{bucket}/out/by-region.jsonl")) == [
        {"region": "eu", "orders": 2, "sum_amount": 42, "mean_amount": 21.0, "max_amount": 30},
        {"region": "us", "orders": 1, "sum_amount": 20, "mean_amount": 20.0, "max_amount": 20},
        {"region": "ap", "orders": 1, "sum_amount": 11, "mean_amount": 11.0, "max_amount": 11},
    ]


async def test_csv_from_s3_filtered_and_selected(api: Any, start_worker: Any, aws: Moto
                                                 ) -> None:
    bucket = aws.new_bucket()
    text = ('id,name,city,score\n1,"Lovelace, Ada",London,91\n2,Turing,Wilmslow,78\n'
            '3,"Hopper\nGrace",Arlington,99\n4,Noether,Erlangen,\n')
    source = aws.put(bucket, "in/people.csv", text.encode())
    common = {"source": source, "format": "csv", "operations": [
        {"op": "filter", "field": "score", "cmp": "ge", "value": 80},
        {"op": "select", "fields": ["name", "score"]}]}
    as_csv = await job_api.create(api, "data_processing",
                                  {**common, "destination": f"s3://{bucket}/out/a.csv"})
    as_jsonl = await job_api.create(api, "data_processing", {
        **common, "output_format": "jsonl", "destination": f"s3://{bucket}/out/a.jsonl"})
    await start_worker()
    for job_id in (as_csv, as_jsonl):
        job = await job_api.finished(api, job_id)
        assert job["status"] == "COMPLETED", job["last_error"]
        assert (job["result"]["rows_in"], job["result"]["rows_out"]) == (4, 2)
    expected = [{"name": "Lovelace, Ada", "score": "91"}, {"name": "Hopper\nGrace",
                                                            "score": "99"}]
    assert _csv(aws.get(f"s3://{bucket}/out/a.csv")) == expected
    assert _jsonl(aws.get(f"s3://{bucket}/out/a.jsonl")) == expected


async def test_bad_or_missing_input_is_permanent(api: Any, start_worker: Any, aws: Moto
                                                 ) -> None:
    bucket = aws.new_bucket()
    broken = aws.put(bucket, "in/broken.jsonl", b'{"a": 1}\n\n{"a": 2\n')
    jobs = {
        "line 3 is not valid JSON": await job_api.create(api, "data_processing", {
            "source": broken, "format": "jsonl", "destination": f"s3://{bucket}/o1.jsonl"}),
        "NoSuchKey": await job_api.create(api, "data_processing", {
            "source": f"s3://{bucket}/in/absent.csv", "format": "csv",
            "destination": f"s3://{bucket}/o2.csv"}),
        "fields ['extra'] that the first row lacks": await job_api.create(
            api, "data_processing", {"source": [{"a": 1}, {"a": 2, "extra": 3}],
                                     "format": "csv", "destination": f"s3://{bucket}/o3.csv"}),
    }
    await start_worker()
    for message, job_id in jobs.items():
        job = await job_api.finished(api, job_id)
        assert job["status"] == "FAILED"
        assert job["attempts"] == 1, job["last_error"]
        assert message in job["last_error"]


BAD = [
    ({"format": "csv", "destination": "s3://bucket/o.csv"}, ["source"]),
    ({"source": "http://example.com/x.csv", "format": "csv", "destination": "s3://bucket/o"},
     ["source"]),
    ({"source": [], "format": "csv", "destination": "s3://bucket/o"}, ["source"]),
    ({"source": [1, 2], "format": "csv", "destination": "s3://bucket/o"}, ["source", 0]),
    ({"source": "s3://bucket/i", "format": "xml", "destination": "s3://bucket/o"}, ["format"]),
    ({"source": "s3://bucket/i", "format": "csv", "destination": "s3://bucket/dir/"},
     ["destination"]),
    ({"source": "s3://bucket/i", "format": "csv", "destination": "s3://bucket/o",
      "operations": [{"op": "sort"}]}, ["operations", 0]),
    ({"source": "s3://bucket/i", "format": "csv", "destination": "s3://bucket/o",
      "operations": [{"op": "filter", "field": "a", "cmp": "in", "value": 3}]},
     ["operations", 0]),
    ({"source": "s3://bucket/i", "format": "csv", "destination": "s3://bucket/o",
      "operations": [{"op": "select", "fields": ["a"]},
                     {"op": "group_by", "aggregates": [{"fn": "median", "field": "a"}]}]},
     ["operations", 1, "aggregates", 0, "fn"]),
    ({"source": "s3://bucket/i", "format": "csv", "destination": "s3://bucket/o",
      "operations": [{"op": "group_by", "aggregates": [{"fn": "sum"}]}]},
     ["operations", 0, "aggregates", 0]),
]


async def test_bad_data_processing_payloads_get_422_naming_the_field(api: Any) -> None:
    for payload, loc in BAD:
        locs = await job_api.refused(api, "data_processing", payload)
        assert ["body", "payload", *loc] in locs, (payload, locs)


# --- memory ---------------------------------------------------------------------------------------


def _big_csv(rows: int) -> tuple[bytes, int]:
    """``rows`` csv rows (about 85 bytes each) and how many have amount >= 10."""
    regions = ["eu-west", "eu-central", "us-east", "us-west", "ap-south", "ap-east"]
    lines = ["id,region,customer,amount,quantity,note\n"]
    kept = 0
    for i in range(rows):
        cents = (i * 7919) % 10007  # spread over 0.00 .. 100.06, deterministic
        kept += cents >= 1000
        lines.append(f"{i},{regions[i % 6]},customer-{(i * 31) % 50000:05d},"
                     f"{cents / 100:.2f},{i % 19 + 1},lorem ipsum dolor sit amet {i * 13}\n")
    return "".join(lines).encode(), kept


async def test_200k_row_input_stays_within_the_memory_bound(api: Any, spawn: Any, aws: Moto
                                                            ) -> None:
    """A real worker process streams 200,000 csv rows from S3 through filter and select
    into a 12 MB output (spooled to disk, multipart upload). Its peak RSS (VmHWM, reset
    after a warm-up job has loaded boto3 and made the clients) may grow by at most
    MEMORY_BOUND_MIB over its RSS before the job."""
    bucket = aws.new_bucket()
    data, kept = _big_csv(200_000)
    big = aws.put(bucket, "in/big.csv", data)
    small = aws.put(bucket, "in/small.csv", _big_csv(100)[0])
    ops = [{"op": "filter", "field": "amount", "cmp": "ge", "value": 10},
           {"op": "select", "fields": ["id", "region", "customer", "amount", "note"]}]

    proc = await spawn("-m", "worker", worker_concurrency=2)
    warm = await job_api.create(api, "data_processing", {
        "source": small, "format": "csv", "operations": ops,
        "destination": f"s3://{bucket}/out/small.csv"})
    assert (await job_api.finished(api, warm, timeout=60))["status"] == "COMPLETED"

    before = kib(proc.pid, "VmRSS")
    reset_peak(proc.pid)
    job_id = await job_api.create(api, "data_processing", {
        "source": big, "format": "csv", "operations": ops,
        "destination": f"s3://{bucket}/out/big.csv"})
    job = await job_api.finished(api, job_id, timeout=120)
    peak = kib(proc.pid, "VmHWM")
    assert job["status"] == "COMPLETED", job["last_error"]
    assert job["result"]["rows_in"] == 200_000
    assert job["result"]["rows_out"] == kept

    out = aws.get(f"s3://{bucket}/out/big.csv")
    assert len(out) > 8 * 1024 * 1024  # past the in-memory spool and one upload part
    assert out.count(b"\n") == kept + 1  # header and rows (no cell holds a newline)
    assert out.startswith(b"id,region,customer,amount,note\r\n")
    growth_mib = (peak - before) / 1024
    print(f"\n200k rows: input {len(data) / 2**20:.1f} MiB, output {len(out) / 2**20:.1f} MiB, "
          f"worker RSS {before / 1024:.0f} MiB, peak growth {growth_mib:.1f} MiB "
          f"(bound {MEMORY_BOUND_MIB} MiB)", file=sys.stderr)
    assert growth_mib < MEMORY_BOUND_MIB


async def test_a_30_mib_line_is_refused_without_the_memory_growth(api: Any, spawn: Any,
                                                                  aws: Moto) -> None:
    """One csv line of 10 million short cells (30 MiB) and one 16 MiB jsonl line: read
    whole and parsed they cost hundreds of MiB; bounded by AJS_DATA_MAX_LINE_BYTES (1 MiB)
    they are refused after reading a MiB, and the worker's peak RSS barely moves."""
    bucket = aws.new_bucket()
    wide = aws.put(bucket, "in/wide.csv", b"a,b\n1,2\n" + b"ab," * (10 * 2**20) + b"ab\n")
    long = aws.put(bucket, "in/long.jsonl",
                   b'{"a": 1}\n{"a": "' + b"z" * (16 * 2**20) + b'"}\n')
    small = aws.put(bucket, "in/small.csv", _big_csv(100)[0])

    proc = await spawn("-m", "worker", worker_concurrency=2)
    warm = await job_api.create(api, "data_processing", {
        "source": small, "format": "csv", "destination": f"s3://{bucket}/out/small.csv"})
    assert (await job_api.finished(api, warm, timeout=60))["status"] == "COMPLETED"

    before = kib(proc.pid, "VmRSS")
    reset_peak(proc.pid)
    jobs = [await job_api.create(api, "data_processing", {
        "source": source, "format": fmt, "destination": f"s3://{bucket}/out/{fmt}"})
        for source, fmt in ((wide, "csv"), (long, "jsonl"))]
    failed = [await job_api.finished(api, job_id, timeout=60) for job_id in jobs]
    peak = kib(proc.pid, "VmHWM")
    growth_mib = (peak - before) / 1024
    print(f"\nlong lines: worker RSS {before / 1024:.0f} MiB, peak growth {growth_mib:.1f} MiB "
          f"(bound {MEMORY_BOUND_MIB} MiB)", file=sys.stderr)
    assert growth_mib < MEMORY_BOUND_MIB
    for job in failed:
        assert (job["status"], job["attempts"]) == ("FAILED", 1), job
        assert "line 3 is longer than 1048576 characters" in job["last_error"] or (
            "line 2 is longer than 1048576 characters" in job["last_error"]), job
        assert "abab" not in job["last_error"] and "zzzz" not in job["last_error"]
    assert "line 3" in failed[0]["last_error"] and "line 2" in failed[1]["last_error"]


async def test_rows_and_source_size_are_bounded_and_errors_never_quote_the_data(
        api: Any, start_worker: Any, aws: Moto) -> None:
    bucket = aws.new_bucket()
    sources = {
        "big": aws.put(bucket, "in/big.csv", b"k\n" + b"x\n" * 600),  # 1,202 bytes
        "rows": aws.put(bucket, "in/rows.csv", b"k\n" + b"r\n" * 6),
        "nan": aws.put(bucket, "in/nan.csv", b"k,v\na,1\na,secret-ssn-123-45-6789\n"),
        "json": aws.put(bucket, "in/bad.jsonl",
                        b'{"k": 1}\n{"k": 2}\n{"k": "secret-ssn-123-45-6789"\n'),
    }
    total = {"op": "group_by", "keys": ["k"], "aggregates": [{"fn": "sum", "field": "v"}]}
    specs = {
        "big": ("csv", []), "rows": ("csv", []), "nan": ("csv", [total]),
        "json": ("jsonl", []),
    }
    ids = {name: await job_api.create(api, "data_processing", {
        "source": sources[name], "format": fmt, "operations": ops,
        "destination": f"s3://{bucket}/out/{name}"}) for name, (fmt, ops) in specs.items()}
    await start_worker(data_max_rows=5, data_max_source_bytes=1000)
    errors = {}
    for name, job_id in ids.items():
        job = await job_api.finished(api, job_id)
        assert (job["status"], job["attempts"]) == ("FAILED", 1), job
        assert "secret-ssn" not in job["last_error"], job["last_error"]
        errors[name] = job["last_error"]
    assert "1202 bytes, over the limit of 1000" in errors["big"]
    assert "more than 5 rows (AJS_DATA_MAX_ROWS)" in errors["rows"]
    assert "sum(v) met a value that is not a number" in errors["nan"]
    assert "line 3 is not valid JSON" in errors["json"]
