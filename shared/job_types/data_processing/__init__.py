"""data_processing: stream records through filter, select and group_by into S3.

The source is an ``s3://`` object (csv or jsonl, read as a stream) or records given
inline; the result goes to an ``s3://`` destination. Rows flow one at a time, so memory
does not grow with the input: only group_by holds state, one entry per distinct key (at
most ``AJS_DATA_MAX_GROUPS``). Result: rows in, rows out, output URI.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from shared.job_types.s3uri import Destination, S3Uri
from shared.registry import JobContext, job_type

Comparison = Literal["eq", "ne", "gt", "ge", "lt", "le", "in", "not_in", "contains", "exists",
                     "missing"]


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class Filter(_Op):
    """Keep rows whose ``field`` compares true with ``value``. Numbers compare as numbers
    (csv text that reads as a number counts as one)."""

    op: Literal["filter"]
    field: str = Field(min_length=1)
    cmp: Comparison = "eq"
    value: Any = None

    @model_validator(mode="after")
    def _value_fits(self) -> Filter:
        if self.cmp in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"'{self.cmp}' needs a list value")
        if self.cmp in ("gt", "ge", "lt", "le") and not isinstance(self.value, int | float | str):
            raise ValueError(f"'{self.cmp}' needs a number or a string value")
        return self


class Select(_Op):
    """Keep only these fields, in this order (a missing field becomes null)."""

    op: Literal["select"]
    fields: list[str] = Field(min_length=1)


class Aggregate(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    fn: Literal["count", "sum", "mean", "min", "max"]
    field: str | None = Field(None, description="Required except for count (rows).")
    name: str | None = Field(None, description="Output column; default fn_field.")

    @model_validator(mode="after")
    def _field_needed(self) -> Aggregate:
        if self.fn != "count" and not self.field:
            raise ValueError(f"{self.fn} needs a field")
        return self

    @property
    def column(self) -> str:
        return self.name or (f"{self.fn}_{self.field}" if self.field else self.fn)


class GroupBy(_Op):
    """One row per distinct combination of ``keys`` (no keys: one row for everything),
    with the aggregates as columns."""

    op: Literal["group_by"]
    keys: list[str] = Field(default_factory=list)
    aggregates: list[Aggregate] = Field(min_length=1)


Operation = Annotated[Filter | Select | GroupBy, Field(discriminator="op")]


def _source_kind(value: Any) -> str:
    return "records" if isinstance(value, list) else "uri"


Source = Annotated[
    Annotated[S3Uri, Tag("uri")] | Annotated[list[dict[str, Any]], Tag("records")],
    Discriminator(_source_kind),
]


class DataProcessingPayload(BaseModel):
    # Inline records are data: a validation error (stored as last_error) must not quote them.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, defer_build=True)

    source: Source = Field(description="s3://bucket/key, or a list of records (objects).")
    format: Literal["csv", "jsonl"] = Field(description="Format of the source and output.")
    output_format: Literal["csv", "jsonl"] | None = Field(
        None, description="Format of the output when it differs from the source's.")
    operations: list[Operation] = Field(default_factory=list, max_length=50)
    destination: Destination

    @field_validator("source")
    @classmethod
    def _some_records(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("inline records must not be empty")
        return value


@job_type("data_processing", DataProcessingPayload, timeout_seconds=900, concurrency_limit=4)
async def process_data(payload: DataProcessingPayload, ctx: JobContext) -> dict[str, Any]:
    """Filter, select and group csv/jsonl records from S3 or inline into S3 (streaming)."""
    from shared.job_types.data_processing import pipeline

    return await pipeline.run(payload, ctx)
