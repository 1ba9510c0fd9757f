"""One settings object for every process.

Every knob comes from the environment (prefix ``AJS_``), so that the Lambda functions, the
worker container and the tests configure themselves the same way. ``DATABASE_URL`` and
``REDIS_URL`` are also read without the prefix because that is what hosting platforms and
the README's examples set.

A plain pydantic model and :func:`environment` (a dozen lines) read it, not
pydantic-settings: of that library we used only the environment, and importing it loads
every source it has (dotenv, CLI, AWS, Azure, GCP, TOML, YAML): 1 MB of each worker's
resident memory (bench/RESULTS.md, issue 12). Names match whatever their case, keyword
arguments win over the environment, and the few fields that are not plain values say
how they read text themselves (comma lists, JSON), as with pydantic-settings' ``NoDecode``.
"""

from __future__ import annotations

import json
import os
import socket
from functools import lru_cache
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from shared.scopes import NAMESPACE_PATTERN, ScopeName


class IamGrant(BaseModel):
    """What an IAM principal may do behind API Gateway's IAM authorizer."""

    scopes: list[ScopeName] = Field(min_length=1)
    namespace: str | None = Field(None, pattern=NAMESPACE_PATTERN)


class Settings(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_by_name=True, validate_default=True)

    def __init__(self, **values: Any) -> None:
        """The environment's values, overridden by those given."""
        super().__init__(**{**environment(type(self)), **values})

    # --- stores -------------------------------------------------------------------------
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/postgres",
        validation_alias=AliasChoices("AJS_DATABASE_URL", "DATABASE_URL"),
        description="PostgreSQL, the source of truth.",
    )
    db_schema: str = Field("public", description="PostgreSQL schema holding the tables.")
    db_pool_min: int = Field(1, description="Connections a pool keeps open (not the worker's: "
                             "see worker_db_connections).")
    db_pool_max: int = Field(10, description="Lambda containers use 1: one connection each.")
    worker_db_connections: int = Field(
        6, ge=1, le=100, description="PostgreSQL connections a worker opens before its first "
        "claim and keeps: its starts, settles and upkeep (a drain at 100 slots ran as fast "
        "on 6 as on 10, and each connection holds memory).")
    db_statement_cache_size: int = Field(
        100, description="Prepared statements cached per connection (0 turns it off)."
    )
    db_behind_proxy: bool = Field(
        False, description="Behind RDS Proxy or pgbouncer in transaction mode: turns the "
        "prepared statement cache off.")
    db_connect_timeout: float = Field(5.0, description="Seconds to wait for a connection.")
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("AJS_REDIS_URL", "REDIS_URL"),
        description="Redis: queues, leases, locks (rebuilt from PostgreSQL if lost).",
    )
    redis_cluster: bool = Field(
        False, description="REDIS_URL is one node of a Redis Cluster (ElastiCache or Valkey "
        "cluster mode enabled): route by hash slot, cancel signals over sharded pub/sub.")
    redis_prefix: str = Field("ajs", description="Prefix of every Redis key we write.")
    queue: str = Field("default", description="Queue the worker drains and jobs default to.")
    lock_redis_urls: list[str] = Field(
        default_factory=list,
        description="Independent Redis nodes for the per-job Redlock; empty means REDIS_URL.",
    )
    health_timeout: float = Field(1.0, description="Seconds each /health probe may take.")

    # --- jobs ---------------------------------------------------------------------------
    job_modules: list[str] = Field(
        default_factory=list,
        description="Modules that register user job types (imported at start-up).",
    )
    default_max_retries: int = Field(
        3, description="Retries after the first attempt, unless the job or its type says.")
    default_timeout_seconds: float = Field(
        300.0, description="Per-attempt time limit, unless the job or its type says.")
    max_payload_bytes: int = Field(256 * 1024, description="Largest request body (413 above).")
    retry_backoff_base: float = Field(5.0, description="First retry delay (seconds).")
    retry_backoff_factor: float = Field(5.0, description="Each further retry waits this many "
                                        "times longer: 5 s, 25 s, 125 s by default.")
    retry_backoff_max: float = Field(3600.0, description="Longest retry delay (seconds).")
    retry_jitter: float = Field(0.1, description="Fraction of the delay added or taken at random.")
    schedule_lookahead_seconds: float = Field(
        90.0,
        description="Jobs due within this window go straight to the Redis delayed set; later "
        "ones stay PENDING until a scheduler tick. Must exceed the tick interval.",
    )
    schedule_max_runs_per_tick: int = Field(
        100, ge=1, le=10_000,
        description="Most jobs one recurring schedule makes per scheduler pass (a schedule "
        "firing every second with the 90 s look-ahead makes 90); the rest follow next pass.")
    schedule_misfire_grace_seconds: float = Field(
        60.0, ge=0, description="A fire time later than this when the scheduler gets to it "
        "(after an outage) was missed: the schedule's misfire policy decides (run_once: one "
        "run for all missed times; skip: none). Within it, a late run still runs.")
    schedule_batch: int = Field(
        100, ge=1, le=10_000, description="Schedules one transaction fires (a pass loops).")

    # --- worker -------------------------------------------------------------------------
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
                           description="Names the worker in leases, history and metrics; "
                           "default: host-pid.")
    worker_concurrency: int = Field(10, ge=1, description="Jobs one worker runs at once.")
    lease_seconds: float = Field(
        30.0, gt=0, description="A running job's lease; a worker silent this long is "
        "presumed dead and its jobs are recovered.")
    heartbeat_seconds: float = Field(0.0, description="0 means a third of lease_seconds.")
    reap_interval_seconds: float = Field(
        5.0, description="How often each worker looks for expired leases.")
    idle_poll_seconds: float = Field(1.0, description="Longest wait before looking again.")
    shutdown_grace_seconds: float = Field(
        25.0, description="On SIGTERM, how long running jobs may finish before they are "
        "handed back to the queue (attempt not spent).")
    settle_batch_max: int = Field(500, description="Most outcomes written in one commit.")

    # --- API ----------------------------------------------------------------------------
    api_prefix: str = Field("/api/v1", description="Path prefix of every API route.")
    batch_max_jobs: int = Field(1000, description="Most jobs in one POST /jobs/batch.")
    api_page_max_bytes: int = Field(
        1024 * 1024, ge=1024, le=5 * 1024 * 1024,
        description="A list page stops before its JSON passes this size (a single larger "
        "job still comes back alone); next_cursor continues. Lambda answers at most 6 MB.")
    api_redis_max_connections: int = Field(
        50, ge=1, description="Redis connections one API process opens at most; a burst "
        "beyond waits for a free one.")
    api_redis_pool_timeout: float = Field(
        5.0, gt=0, description="Seconds a request waits for a free Redis connection (then 503).")
    api_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host headers the API answers (a leading '*.' matches subdomains); "
        "others get 400. Empty: any host. Comma-separated in the environment.")

    # --- access control -------------------------------------------------------------------
    auth_disabled: bool = Field(
        False, description="Every request is an unbound admin: no credential is checked. "
        "Only for a private machine; never the default.")
    auth_cache_seconds: float = Field(
        5.0, ge=0, le=300, description="How long a process trusts an API key lookup; a "
        "revoked key stops working within this time.")
    auth_jwt_scope_prefix: str = Field(
        "", max_length=200, description="Behind the JWT authorizer: the prefix of our scopes "
        "in the token (a Cognito resource server's 'https://jobs.example.com/'); others "
        "are ignored.")
    auth_jwt_namespace_claim: str = Field(
        "ajs_namespace", min_length=1, max_length=100,
        description="Behind the JWT authorizer: the claim holding the caller's namespace "
        "(absent: unbound).")
    auth_iam_principals: dict[str, IamGrant] = Field(
        default_factory=dict,
        description="Behind the IAM authorizer: JSON mapping an IAM user or role ARN "
        "(arn:aws:iam::ACCOUNT:role/NAME) to {\"scopes\": [...], \"namespace\": ...}; "
        "other principals get 403.")

    # --- scheduler function ---------------------------------------------------------------
    retention_completed_seconds: float = Field(
        7 * 86400, ge=0, description="Finished jobs (and their history) are deleted this long "
        "after they finished: COMPLETED. 0 keeps them for ever. Per job type: retention=.")
    retention_cancelled_seconds: float = Field(
        7 * 86400, ge=0, description="The same for CANCELLED jobs.")
    retention_failed_seconds: float = Field(
        30 * 86400, ge=0, description="The same for FAILED jobs (the dead letter queue).")
    idempotency_window_seconds: float = Field(
        86400, ge=0, description="A job created with an Idempotency-Key outlives its "
        "retention until this long after its creation, so a retry still finds it.")
    retention_batch_size: int = Field(
        500, ge=1, le=100_000, description="Jobs one retention statement deletes (one "
        "short transaction each).")
    retention_max_per_tick: int = Field(
        100_000, ge=0, description="Most jobs one scheduler tick deletes; a backlog takes "
        "several ticks.")
    retention_max_share: float = Field(
        0.02, gt=0, le=1, description="Share of the time retention may spend deleting: it "
        "pauses after each statement so that enqueues and claims rarely wait behind one.")
    retention_max_seconds: float = Field(
        20.0, gt=0, description="Longest a tick spends on retention (the Lambda tick has "
        "55 s).")
    scheduler_tick_seconds: float = Field(
        60.0, gt=0, description="How often the scheduler function runs (EventBridge: 60). "
        "Its lock lives twice this, so a tick whose process died blocks the next one at most "
        "that long; a tick that fails releases it at once.")
    reconcile_page_size: int = Field(
        1000, description="Jobs the scheduler's reconcile pass checks per round trip.")

    # --- observability --------------------------------------------------------------------
    pushgateway_url: str = Field(
        "", description="Prometheus Pushgateway base URL (http://host:9091); empty: workers "
        "and the scheduler push nothing and the API keeps no shared counters.")
    push_interval_seconds: float = Field(10.0, gt=0, description="How often a worker pushes.")
    push_timeout_seconds: float = Field(2.0, gt=0, description="Per push or delete request.")
    probe_port: int = Field(
        0, ge=0, le=65535, description="Worker port for /metrics, /healthz, /readyz; 0: off.")
    probe_host: str = Field("0.0.0.0", description="Interface the worker's probes listen on.")
    # --- end observability ----------------------------------------------------------------

    # --- deployment -----------------------------------------------------------------------
    # Secrets stay out of the environment: the functions and the worker name where the
    # secret lives and shared.secret_settings reads it once at cold start.
    database_url_secret_arn: str = Field(
        "", description="Secrets Manager secret (ARN or name) holding the database URL, or "
        "RDS's JSON {username, password, host, port, dbname} completed from DATABASE_URL.")
    redis_url_parameter: str = Field(
        "", description="SSM parameter (SecureString) holding the Redis URL.")
    payload_key_secret_arn: str = Field(
        "", description="Secrets Manager secret (ARN or name) holding AJS_PAYLOAD_KEY (the "
        "Fernet key(s) sealing webhook credentials), read at start.")
    # --- end deployment -------------------------------------------------------------------

    # --- job types ------------------------------------------------------------------------
    # Empty strings mean "not set" (not None): settings travel to subprocesses as env text.
    aws_region: str = Field("us-east-1", description="Region of the S3 and SES clients.")
    aws_endpoint_url: str = Field(
        "", description="Endpoint for every AWS client (LocalStack, moto); empty: real AWS.")
    email_backend: str = Field("ses", pattern="^(ses|smtp)$",
                               description="ses (boto3) or smtp (aiosmtplib).")
    email_sender: str = Field("no-reply@example.com", description="From address of emails.")
    email_rate_limit: int = Field(
        10, ge=1, description="Emails started per second across all workers (read at import).")
    smtp_host: str = Field("127.0.0.1", description="SMTP server (email_backend smtp).")
    smtp_port: int = Field(25, description="SMTP port: 25, 587 (starttls) or 465 (tls).")
    smtp_username: str = Field("", description="SMTP login; empty: no AUTH.")
    smtp_password: str = Field("", description="SMTP password.")
    smtp_tls: str = Field("auto", pattern="^(auto|starttls|tls|none)$",
                          description="auto: STARTTLS when the server offers it.")
    smtp_timeout_seconds: float = Field(30.0, gt=0, description="Per SMTP connection.")
    webhook_secret: str = Field(
        "", description="Standard Webhooks signing secret: 'whsec_' + base64 of the key.")
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="Default per delivery.")
    webhook_retry_after_max: float = Field(
        3600.0, description="Longest Retry-After a receiver may ask for (seconds).")
    webhook_allowlist: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR) the SSRF guard admits although loopback, private, "
        "link-local or otherwise not global. Comma-separated in the environment.",
    )
    reports_bucket: str = Field("", description="Default S3 bucket for generated reports.")
    report_url_seconds: int = Field(3600, ge=1, le=604800,
                                    description="Lifetime of a report's presigned URL.")
    image_max_pixels: int = Field(
        40_000_000, ge=1, description="Larger images are refused as decompression bombs.")
    image_max_bytes: int = Field(50 * 1024 * 1024, ge=1,
                                 description="Larger source files are not read.")
    image_memory_budget_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="Decoded image memory all image_processing jobs "
        "of one worker may hold at once (4 bytes a pixel); jobs wait for their share, and an "
        "image that needs more than all of it fails. Default fits a 1 GiB worker.")
    data_max_groups: int = Field(
        100_000, ge=1, description="Distinct group_by keys one job may hold in memory.")
    data_max_line_bytes: int = Field(
        1024 * 1024, ge=1024, description="Longest csv or jsonl line (characters) and csv "
        "field a data_processing source may hold.")
    data_max_rows: int = Field(10_000_000, ge=1, description="Most rows one data_processing "
                               "job reads.")
    data_max_source_bytes: int = Field(
        2 * 1024**3, ge=1, description="Largest data_processing source object in S3.")
    s3_write_prefixes: list[str] = Field(
        default_factory=list,
        description="s3://bucket/prefix locations jobs may write to (comma-separated; '*' "
        "allows any). Set: other destinations are refused at create time (422) and by the "
        "worker. Empty: the worker writes only under s3://AJS_REPORTS_BUCKET/.")
    payload_key: str = Field(
        "", description="Fernet key(s) sealing webhook credentials (headers, URL userinfo) "
        "in stored payloads; comma-separated to rotate (the first seals). Empty: payloads "
        "with credentials are refused (422).")

    @field_validator("webhook_allowlist", "s3_write_prefixes", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_allowlist")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for net in value:
            ipaddress.ip_network(net, strict=False)  # ValueError names the bad entry
        return value

    @field_validator("s3_write_prefixes")
    @classmethod
    def _check_prefixes(cls, value: list[str]) -> list[str]:
        from shared.job_types.s3uri import split_prefix

        for entry in value:
            if entry != "*":
                split_prefix(entry)  # ValueError names the bad entry
        return value
    # --- end job types --------------------------------------------------------------------

    @field_validator("auth_iam_principals", mode="before")
    @classmethod
    def _decode_json(cls, value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("lock_redis_urls", "job_modules", "api_allowed_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return value  # JSON list: pydantic parses it
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat_seconds or self.lease_seconds / 3

    @property
    def lock_urls(self) -> list[str]:
        return self.lock_redis_urls or [self.redis_url]


def environment(model: type[BaseModel]) -> dict[str, str]:
    """The environment's value of each field: ``AJS_<NAME>``, or the names its
    ``validation_alias`` lists, matched whatever their case."""
    env = {key.upper(): value for key, value in os.environ.items()}
    found: dict[str, str] = {}
    for name, field in model.model_fields.items():
        alias = field.validation_alias
        keys = alias.choices if isinstance(alias, AliasChoices) else [f"AJS_{name}"]
        for key in keys:
            if isinstance(key, str) and key.upper() in env:
                found[name] = env[key.upper()]
                break
    return found


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
