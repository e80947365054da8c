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
    processes: int = Field(
        1, ge=1, le=64,
        description="Server processes (`gpucloud serve --workers N`), each with its own "
        "background workers, coordinated through the database's leased rows. PostgreSQL "
        "only for more than 1.",
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
    driver_read_timeout_seconds: float = Field(
        10.0, gt=0, le=600,
        description="How long a logs or events request waits for its provider (capped by the "
        "provider's own call timeout). Such reads run beside the lifecycle's calls, at most "
        "`driver_calls_per_provider` at once per provider, and never hold a request thread.",
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
    threadpool_size: int | None = Field(
        None, ge=1, le=200,
        description="Threads that run the API's writes (deploys, updates, renames, "
        "terminations) and, as many again, the operator's blocking routes; the reads have "
        "`read_threads`, and provider calls the driver-call pool. Unset: 1 on SQLite (its "
        "writes take turns on one writer, and each more thread waiting for it cost "
        "hand-overs of the interpreter lock: a deploy at 32 clients took ~1.8x the CPU with "
        "2 or 8 threads), 8 on PostgreSQL. Sized to the database and the cores rather than "
        "to the number of clients (docs/api-speed.md).",
    )
    gc_gen0_threshold: int = Field(
        50_000, ge=0,
        description="`gpucloud serve`: allocations between two youngest-generation garbage "
        "collections (Python's default is 700), set after the startup objects are frozen out "
        "of the collector. 0 leaves Python's collector as it is (docs/api-speed.md).",
    )
    read_threads: int | None = Field(
        None, ge=1, le=200,
        description="Threads that run the requests' database reads outside the public GET "
        "routes (those are sent from the event loop: to PostgreSQL's pipelined connections, "
        "to SQLite's read processes). Unset: 1 on SQLite (a "
        "read is the process's own CPU work, and SQLite hands the interpreter lock back and "
        "forth on every row, so a second thread only contends: the list of 100 instances "
        "cost twice the CPU with 8), 4 on PostgreSQL (at most `threadpool_size`; a read "
        "waits on the server, so several overlap, but 8 served the lists of 100 ~25% slower "
        "than 2 or 4). docs/api-speed.md has the figures.",
    )
    log_level: str = Field("info", description="Log level of the server.")
    log_format: Literal["auto", "text", "json"] = Field(
        "auto",
        description="`json`: one JSON object per log line (with the request id), for log "
        "shippers. `text`: human-readable. `auto`: text on a terminal, JSON otherwise.",
    )
    access_log: bool = Field(
        True,
        description="One log line per request: method, route template, status, duration, "
        "account id, request id (never bodies, keys or query strings).",
    )
    opentelemetry: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry tracing/metrics/logs (uses the globally "
        "configured providers). Off by default: it costs a provider lookup per request.",
    )
    # --- console (console/sessions.py) ---------------------------------------------------------
    console_session_idle_seconds: int = Field(
        1800, ge=1,
        description="A console session ends after this long without the person's activity "
        "(a page opened or a form sent; the console's own refreshes do not count), on the "
        "server clock.",
    )
    console_session_max_seconds: int = Field(
        12 * 3600, ge=1,
        description="A console session ends this long after sign-in however active it is, on "
        "the server clock; also the session cookie's Max-Age.",
    )
    # --- limits (web/guard.py, web/server.py) -----------------------------------------------
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024,
        description="Largest request body accepted; a larger one is answered 413 without being "
        "read whole. gpucloud's own bodies are a few KiB; a catalog document is the largest.",
    )
    max_json_depth: int = Field(
        32, ge=2, le=500,
        description="Deepest nesting of arrays and objects accepted in a JSON body (422 "
        "`json_too_deep` past it). gpucloud's own bodies nest at most 6 deep.",
    )
    max_json_values: int = Field(
        10_000, ge=100,
        description="Most values (scalars, arrays and objects) accepted in one JSON body (422 "
        "`json_too_many_values` past it), counted before parsing as the body's commas and "
        "opening brackets (in strings too). Parsing holds the interpreter lock, so this bounds "
        "how long one body can keep other requests waiting (a few ms at 10,000). A catalog "
        "document holds about 15 per offer or provider.",
    )
    json_offload_bytes: int = Field(
        16 * 1024, ge=0,
        description="Bodies of at least this many bytes are parsed and validated in a worker "
        "thread, so a large body never stalls other requests; smaller ones on the event loop, "
        "where they cost less than the hop to a thread.",
    )
    guard: bool = Field(
        True, description="The limits of web/guard.py (413 for large bodies, the key checked "
        "before the body, rate limits). Turn off only to measure what they protect against "
        "(bench/abuse.py), never in production.",
    )
    rate_limits: bool = Field(
        True, description="Token-bucket rate limits per API key, per admin key and per client "
        "address (429 with Retry-After). Kept per process: with N processes a client may get "
        "up to N times the rate.",
    )
    rate_limit_key: float = Field(50.0, gt=0, description="Requests per second per API key.")
    rate_limit_key_burst: int = Field(200, ge=1, description="Burst per API key.")
    rate_limit_admin: float = Field(100.0, gt=0,
                                    description="Requests per second with the admin key.")
    rate_limit_admin_burst: int = Field(400, ge=1, description="Burst with the admin key.")
    rate_limit_anonymous: float = Field(
        5.0, gt=0, description="Requests per second per client address without a valid key "
        "(missing or wrong API or admin key).",
    )
    rate_limit_anonymous_burst: int = Field(20, ge=1,
                                            description="Burst per address without a valid key.")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses of reverse proxies whose X-Forwarded-For names the client "
        "(e.g. `[\"127.0.0.1\"]` behind a local Caddy/nginx). Empty: the peer address is the "
        "client, whatever headers say.",
    )
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="A connection that has not sent complete request headers this "
        "long after connecting (or after starting a request) is closed.",
    )
    keep_alive_seconds: int = Field(
        5, ge=1, description="Idle keep-alive connections are closed after this many seconds.")
    max_connections: int = Field(
        0, ge=0, description="Concurrent connections before new ones get 503. 0: derived from "
        "the process's open-file limit, leaving room for database connections and files.",
    )

    def blocking_threads(self, is_sqlite: bool) -> int:
        """How many threads run the blocking routes (see `threadpool_size`)."""
        return self.threadpool_size or (1 if is_sqlite else 8)

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
