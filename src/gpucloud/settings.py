"""The one place configuration comes from: environment variables prefixed `GPUCLOUD_`.

CLI flags of `gpucloud serve` are mapped onto these fields (see `cli/serve.py`), so every knob
has exactly one name and one default.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPUCLOUD_", extra="ignore")

    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL. Unset: a SQLite file `gpucloud.db` in the data dir. "
        "`postgresql://…` selects PostgreSQL (psycopg 3).",
    )
    data_dir: Path = Field(
        Path("."), description="Where the default SQLite file and the generated secret key live."
    )
    host: str = Field("127.0.0.1", description="Interface `gpucloud serve` binds to.")
    port: int = Field(8000, description="Port `gpucloud serve` listens on.")
    admin_key: str | None = Field(
        None,
        description="Admin key for `/admin` (header X-ADMIN-KEY). Unset: one is generated at "
        "first start, printed once and stored hashed.",
    )
    secret_key: str | None = Field(
        None,
        description="Fernet key that encrypts registry credentials at rest. Unset: generated on "
        "first start and persisted to `<data_dir>/gpucloud-secret.key` (mode 0600). Several "
        "server processes on one database must share it.",
    )
    clock: Literal["system", "manual"] = Field(
        "system",
        description="`manual` freezes time until POST /admin/clock moves it (tests, demos). "
        "Never the default.",
    )
    demo: bool | None = Field(
        None,
        description="Seed the demo catalog and a demo account. Unset: on for the embedded "
        "SQLite default, off when GPUCLOUD_DATABASE_URL is set.",
    )
    workers: bool = Field(
        True, description="Run the background lifecycle and billing workers in this process."
    )
    worker_interval_seconds: float = Field(
        0.5, description="How often the background worker looks for due work (wall clock)."
    )
    lease_seconds: float = Field(
        60.0,
        description="How long a worker's claim on a row lasts (wall clock) before another "
        "process may take the work over.",
    )
    driver_pool_size: int = Field(
        16, ge=1, le=1024,
        description="How many lifecycle steps (each one or more driver calls) run at once in "
        "this process. A slow provider never takes more than its own slots of it.",
    )
    driver_calls_per_provider: int = Field(
        4, ge=1, le=1024,
        description="How many of those run at once for one provider, so a slow or hung "
        "provider holds at most this many and never stalls the others.",
    )
    provision_deadline_seconds: int = Field(
        900, description="An instance still provisioning after this long (server clock) FAILS."
    )
    watch_interval_seconds: int = Field(
        30, description="How often ACTIVE workloads are polled at their provider (server clock)."
    )
    topup_retry_seconds: int = Field(
        60, description="Retry interval for reserve top-ups the account could not cover."
    )
    billing_batch_size: int = Field(
        20000, ge=1,
        description="Instances per transaction when an hour boundary is processed. Larger "
        "batches are faster per instance (fewer statements, fewer account updates); each "
        "batch holds SQLite's write lock for about a second at 20000 (docs/billing.md).",
    )
    billing_parallel: int = Field(
        2, ge=1, le=16,
        description="PostgreSQL: how many batches of one hour boundary run side by side, each "
        "on its own connection (about one per database core). SQLite runs one at a time.",
    )
    plans_cache_seconds: float = Field(
        1.0,
        description="How long a rendered plans response may be reused. Changes made through "
        "this process invalidate it at once; the TTL bounds staleness from other processes.",
    )
    api_key_cache_seconds: float = Field(
        5.0,
        description="How long a verified API key is trusted without a database lookup. "
        "Revocations through this process take effect at once.",
    )
    local_provider: bool = Field(
        True,
        description="On the embedded default, register a `local` Docker/Podman provider when a "
        "container engine socket is found on this machine.",
    )
    log_level: str = Field("info", description="Log level of the server.")
    opentelemetry: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry tracing/metrics/logs (uses the globally "
        "configured providers). Off by default: it costs a provider lookup per request.",
    )

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # psycopg 3 is the one PostgreSQL driver we ship; accept the plain scheme.
            for prefix in ("postgresql://", "postgres://"):
                if url.startswith(prefix):
                    return "postgresql+psycopg://" + url[len(prefix):]
            return url
        return f"sqlite:///{(self.data_dir / 'gpucloud.db').resolve()}"

    @property
    def effective_demo(self) -> bool:
        return self.demo if self.demo is not None else self.database_url is None


@lru_cache
def get_settings() -> Settings:
    return Settings()
