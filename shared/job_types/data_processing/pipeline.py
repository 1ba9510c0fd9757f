"""The streaming record pipeline behind data_processing.

Rows are read one at a time from an S3 body (csv or jsonl), pass through the operations
as a chain of generators, and are written to a spooled temporary file that is uploaded
when the input ends. Memory stays bounded whatever the input size: the read buffer
(64 KiB), the spool (8 MiB before it moves to disk), the multipart upload (2 x 8 MiB
chunks) and, for group_by, one accumulator per distinct key (``AJS_DATA_MAX_GROUPS``).

boto3 and the csv/json codecs block, so the pipeline runs in a thread; a cancelled or
timed-out job sets ``stop``, which the thread checks every few thousand rows.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any

from shared.job_types import aws
from shared.registry import JobContext, PermanentError

if TYPE_CHECKING:
    from shared.job_types.data_processing import (
        Aggregate,
        DataProcessingPayload,
        Filter,
        GroupBy,
        Operation,
    )

Row = dict[str, Any]
SPOOL_BYTES = 8 * 1024 * 1024
READ_BUFFER = 64 * 1024
CHECK_EVERY = 4096  # rows between looks at the stop flag
CONTENT_TYPE = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


class Stopped(Exception):
    """The job was cancelled or timed out while its thread was still reading."""


async def run(payload: DataProcessingPayload, ctx: JobContext) -> dict[str, Any]:
    stop = threading.Event()
    try:
        return await asyncio.to_thread(_run, payload, ctx, stop)
    finally:
        stop.set()  # cancelled or timed out: let the thread end at its next check


def _run(payload: DataProcessingPayload, ctx: JobContext, stop: threading.Event
         ) -> dict[str, Any]:
    s = ctx.settings
    aws.ensure_writable(payload.destination, s)  # before any work, not after it
    clients = aws.clients(ctx.resources, s)
    counts = {"in": 0, "out": 0}
    body: IO[bytes] | None = None
    if isinstance(payload.source, str):
        body, _ = clients.open(payload.source, s.data_max_source_bytes)
        rows = read(body, payload.format, s.data_max_line_bytes)
    else:
        rows = iter(payload.source)
    out_format = payload.output_format or payload.format
    try:
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, mode="w+b") as spool:
            stream = pipeline(_counted(rows, counts, "in", stop, s.data_max_rows),
                              payload.operations, s.data_max_groups)
            write(spool, out_format, _counted(stream, counts, "out", stop))
            size = spool.tell()
            spool.seek(0)
            clients.upload(spool, payload.destination, CONTENT_TYPE[out_format])
    finally:
        if body is not None:
            body.close()
    return {"rows_in": counts["in"], "rows_out": counts["out"],
            "output": payload.destination, "format": out_format, "bytes": size}


def _counted(rows: Iterable[Row], counts: dict[str, int], key: str,
             stop: threading.Event, max_rows: int | None = None) -> Iterator[Row]:
    n = 0
    for n, row in enumerate(rows, 1):
        if max_rows is not None and n > max_rows:
            raise PermanentError(f"the source has more than {max_rows} rows "
                                 "(AJS_DATA_MAX_ROWS)")
        if n % CHECK_EVERY == 0:
            if stop.is_set():
                raise Stopped("stopped while processing")
            counts[key] = n
        yield row
    counts[key] = n


# --- reading ------------------------------------------------------------------------------------


class _Lines:
    """The lines of a text stream, each at most ``limit`` characters: iterating a file
    reads a whole line however long it is, so one 30 MiB line would cost hundreds of MiB
    once parsed. Errors name the line number, never its content (the data may be private).
    """

    def __init__(self, text: IO[str], limit: int) -> None:
        self.text, self.limit, self.number = text, limit, 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            line = self.text.readline(self.limit + 2)  # room for "\r\n"
        except UnicodeDecodeError:
            raise PermanentError(f"source is not UTF-8 text (line {self.number + 1})"
                                 ) from None
        if not line:
            raise StopIteration
        self.number += 1
        if len(line) > self.limit and len(line.rstrip("\r\n")) > self.limit:
            raise PermanentError(f"line {self.number} is longer than {self.limit} characters "
                                 "(AJS_DATA_MAX_LINE_BYTES)")
        return line


def read(body: IO[bytes], fmt: str, max_line: int = 1024 * 1024) -> Iterator[Row]:
    # BufferedReader turns botocore's readinto() into efficient buffered reads.
    buffered = io.BufferedReader(body, READ_BUFFER)  # type: ignore[type-var]
    text = io.TextIOWrapper(buffered, encoding="utf-8", newline="")
    lines = _Lines(text, max_line)
    yield from (read_csv(lines, max_line) if fmt == "csv" else read_jsonl(lines))


def read_csv(lines: _Lines, max_field: int) -> Iterator[Row]:
    """Rows keyed by the header line; values stay text (filters read numbers from it).
    Blank lines are skipped, short rows padded with nulls, cells beyond the header
    dropped (csv.DictReader's rules, without its per-row overhead). A quoted field may
    span lines, so fields are bounded too: by the csv module's limit, which is process-wide
    and so only ever raised to the largest line any job allows."""
    if csv.field_size_limit() < max_field:
        csv.field_size_limit(max_field)
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
        if header is None:
            return
        width = len(header)
        for cells in reader:
            if len(cells) == width:
                yield dict(zip(header, cells, strict=True))
            elif cells:
                yield dict(zip(header, [*cells, *[None] * (width - len(cells))],
                               strict=False))
    except csv.Error as exc:
        # The csv module's messages describe the problem ("field larger than field
        # limit", "new-line character seen in unquoted field") without quoting the data.
        raise PermanentError(f"line {lines.number}: not valid csv: {exc}") from None


def read_jsonl(lines: Iterable[str]) -> Iterator[Row]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PermanentError(f"line {number} is not valid JSON: {exc.msg}") from exc
        if not isinstance(row, dict):
            raise PermanentError(f"line {number} is not a JSON object")
        yield row


# --- writing -------------------------------------------------------------------------------------


def write(out: IO[bytes], fmt: str, rows: Iterable[Row]) -> None:
    text = io.TextIOWrapper(out, encoding="utf-8", newline="")
    try:
        if fmt == "csv":
            write_csv(text, rows)
        else:
            for row in rows:
                text.write(json.dumps(row, ensure_ascii=False, default=str))
                text.write("\n")
        text.flush()
    finally:
        text.detach()  # leave ``out`` open for the upload


_CONTAINERS = frozenset({dict, list})


def write_csv(text: IO[str], rows: Iterable[Row]) -> None:
    """The first row's fields are the header; a later row with other fields is refused
    (silently dropping data would be worse): select the fields first."""
    writer = csv.writer(text)
    fields: list[str] | None = None
    header: set[str] = set()
    for number, row in enumerate(rows, 1):
        if fields is None:
            fields = list(row)
            header = set(fields)
            writer.writerow(fields)
        elif len(row) > len(header) or not header.issuperset(row):
            extra = sorted(set(row) - header)
            raise PermanentError(f"output row {number} has fields {extra} that the first row "
                                 "lacks; add a select operation to fix the csv columns")
        cells = list(map(row.get, fields))
        if not _CONTAINERS.isdisjoint(map(type, cells)):  # C speed: the common case
            cells = [json.dumps(c) if isinstance(c, dict | list) else c for c in cells]
        writer.writerow(cells)


# --- operations ---------------------------------------------------------------------------------


def pipeline(rows: Iterable[Row], operations: Iterable[Operation], max_groups: int
             ) -> Iterator[Row]:
    stream: Iterator[Row] = iter(rows)
    for op in operations:
        if op.op == "filter":
            stream = filter(predicate(op), stream)
        elif op.op == "select":
            fields = list(op.fields)
            stream = (dict(zip(fields, map(row.get, fields), strict=True)) for row in stream)
        else:
            stream = group(stream, op, max_groups)
    return stream


def number(value: Any) -> int | float | None:
    """The number a field holds (csv text included), or None. Integers stay int, so sums
    of whole numbers stay whole."""
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            return None
        if not math.isfinite(parsed):
            return None
        if parsed.is_integer() and value.strip().lstrip("+-").isdigit():
            return int(value)
        return parsed
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


def _equal(a: Any, b: Any) -> bool:
    if a == b:
        return True
    na, nb = number(a), number(b)
    if na is not None and nb is not None:
        return na == nb
    return isinstance(a, str) != isinstance(b, str) and str(a) == str(b)


def _order(a: Any, b: Any, nb: int | float | None) -> int | None:
    """-1, 0 or 1 comparing a to b (numbers as numbers, else text); None if unordered.
    ``nb`` is ``number(b)``, computed once per filter rather than once per row."""
    if nb is not None:
        na = number(a)
        return None if na is None else (na > nb) - (na < nb)
    if isinstance(a, str) and isinstance(b, str):
        return (a > b) - (a < b)
    return None


def _missing(value: Any) -> bool:
    return value is None or value == ""


def predicate(f: Filter) -> Callable[[Row], bool]:
    field, cmp, value = f.field, f.cmp, f.value
    if cmp == "exists":
        return lambda row: not _missing(row.get(field))
    if cmp == "missing":
        return lambda row: _missing(row.get(field))
    if cmp == "eq":
        return lambda row: _equal(row.get(field), value)
    if cmp == "ne":
        return lambda row: not _equal(row.get(field), value)
    if cmp in ("in", "not_in"):
        options = list(value)
        keep = cmp == "in"
        return lambda row: any(_equal(row.get(field), o) for o in options) == keep
    if cmp == "contains":
        def contains(row: Row) -> bool:
            got = row.get(field)
            if isinstance(got, list):
                return any(_equal(item, value) for item in got)
            return got is not None and str(value) in str(got)
        return contains
    wanted = {"gt": (1,), "ge": (0, 1), "lt": (-1,), "le": (-1, 0)}[cmp]
    target = number(value)

    def compare(row: Row) -> bool:
        order = _order(row.get(field), value, target)
        return order is not None and order in wanted
    return compare


class _Acc:
    """One aggregate's running state for one group."""

    __slots__ = ("best", "n", "total")

    def __init__(self) -> None:
        self.n = 0
        self.total: int | float = 0
        self.best: int | float | None = None

    def add(self, agg: Aggregate, row: Row) -> None:
        if agg.fn == "count" and agg.field is None:
            self.n += 1
            return
        raw = row.get(agg.field or "")
        if _missing(raw):
            return  # nulls and empty cells are skipped, as SQL aggregates do
        if agg.fn == "count":
            self.n += 1
            return
        value = number(raw)
        if value is None:  # the value itself stays out of the error: it may be private
            raise PermanentError(f"group_by: {agg.fn}({agg.field}) met a value that is not "
                                 "a number")
        self.n += 1
        if agg.fn in ("sum", "mean"):
            self.total += value
        elif self.best is None or (value < self.best if agg.fn == "min" else value > self.best):
            self.best = value

    def result(self, agg: Aggregate) -> Any:
        if agg.fn == "count":
            return self.n
        if agg.fn == "sum":
            return self.total
        if agg.fn == "mean":
            return self.total / self.n if self.n else None
        return self.best


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def group(rows: Iterable[Row], op: GroupBy, max_groups: int) -> Iterator[Row]:
    """Aggregate all rows, then emit one row per group in first-seen order."""
    keys, aggs = list(op.keys), list(op.aggregates)
    groups: dict[tuple[Any, ...], tuple[Row, list[_Acc]]] = {}
    for row in rows:
        k = tuple(_hashable(row.get(f)) for f in keys)
        entry = groups.get(k)
        if entry is None:
            if len(groups) >= max_groups:
                raise PermanentError(f"group_by: more than {max_groups} distinct keys "
                                     "(AJS_DATA_MAX_GROUPS)")
            entry = groups[k] = ({f: row.get(f) for f in keys}, [_Acc() for _ in aggs])
        for acc, agg in zip(entry[1], aggs, strict=True):
            acc.add(agg, row)
    if not groups and not keys:  # aggregates over nothing still make one row
        groups[()] = ({}, [_Acc() for _ in aggs])
    for first, accs in groups.values():
        out = dict(first)
        for acc, agg in zip(accs, aggs, strict=True):
            out[agg.column] = acc.result(agg)
        yield out

