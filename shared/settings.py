"""One settings object for every process.

Every knob comes from the environment (prefix ``AJS_``) through pydantic-settings, so that
the Lambda functions, the worker container and the tests configure themselves the same way.
``DATABASE_URL`` and ``REDIS_URL`` are also read without the prefix because that is what
hosting platforms and the README's examples set.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AJS_", extra="ignore")

    # --- stores -------------------------------------------------------------------------
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/postgres",
        validation_alias=AliasChoices("AJS_DATABASE_URL", "DATABASE_URL"),
    )
    db_schema: str = Field("public", description="PostgreSQL schema holding the tables.")
    db_pool_min: int = 1
    db_pool_max: int = Field(10, description="Lambda containers use 1: one connection each.")
    db_statement_cache_size: int = Field(
        100, description="Set 0 behind pgbouncer in transaction mode or RDS Proxy."
    )
    db_connect_timeout: float = 5.0
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("AJS_REDIS_URL", "REDIS_URL"),
    )
    redis_prefix: str = Field("ajs", description="Prefix of every Redis key we write.")
    queue: str = Field("default", description="Queue the worker drains and jobs default to.")
    lock_redis_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Independent Redis nodes for the per-job Redlock; empty means REDIS_URL.",
    )
    health_timeout: float = 1.0

    # --- jobs ---------------------------------------------------------------------------
    job_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Modules that register user job types (imported at start-up).",
    )
    default_max_retries: int = 3
    default_timeout_seconds: float = 300.0
    max_payload_bytes: int = 256 * 1024
    retry_backoff_base: float = 5.0
    retry_backoff_factor: float = 5.0
    retry_backoff_max: float = 3600.0
    retry_jitter: float = Field(0.1, description="Fraction of the delay added or taken at random.")
    schedule_lookahead_seconds: float = Field(
        90.0,
        description="Jobs due within this window go straight to the Redis delayed set; later "
        "ones stay PENDING until a scheduler tick. Must exceed the tick interval.",
    )

    # --- worker -------------------------------------------------------------------------
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    worker_concurrency: int = Field(10, ge=1)
    lease_seconds: float = Field(30.0, gt=0)
    heartbeat_seconds: float = Field(0.0, description="0 means a third of lease_seconds.")
    reap_interval_seconds: float = 5.0
    idle_poll_seconds: float = Field(1.0, description="Longest wait before looking again.")
    shutdown_grace_seconds: float = 25.0
    settle_batch_max: int = 500

    # --- API ----------------------------------------------------------------------------
    api_prefix: str = "/api/v1"
    list_limit_max: int = 500
    batch_max_jobs: int = 1000

    # --- scheduler function ---------------------------------------------------------------
    reconcile_page_size: int = 1000

    @field_validator("lock_redis_urls", "job_modules", mode="before")
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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
