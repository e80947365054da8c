"""The built-in `simulated` provider: a far side that behaves like a real one, on the server clock.

Its state lives in `sim_workloads`, written in the driver's own short transactions — never the
caller's — exactly like a remote provider's state would be: it survives restarts and is
shared by every server process on the database. It is the one driver that uses the database
(`uses_database`); external ports come in the spec, allocated by the control plane like for
every driver.

Provider config (all optional):
- `provision_seconds` (default 5): a workload is running this long after create.
- `fail_provisioning` (default false): workloads created from now on fail at the end of
  provisioning (an image that cannot be pulled).
- `lose_after_seconds` (default null): a workload vanishes this long after it became ready,
  as if its node died — the way to exercise "the provider lost the workload".
- `call_latency_seconds` (default 0): every driver call blocks this long in wall-clock time,
  like a slow provider API.
- `hang_calls` (default false): every driver call blocks until its timeout, like a provider
  that never answers.
- `call_timeout_seconds` (default 60): how long the control plane waits for one call.
- `domain_suffix` (default "sim.gpucloud.local"): workloads get `{id8}.{region}.{suffix}`.
- `port_range` (default [30000, 32767]): external ports, unique per provider (allocated by
  the control plane).

Logs and events are derived from the stored timestamps, so they are the same in every process
and grow as the clock moves (a heartbeat line every 10 minutes of uptime).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

from sqlalchemy import bindparam, select

from gpucloud.drivers.base import (
    Driver,
    DriverContext,
    DriverEvent,
    DriverTransientError,
    ForwardedPort,
    WorkloadSpec,
    WorkloadStatus,
)
from gpucloud.drivers.simulated import text as simulated_text
from gpucloud.drivers.simulated.models import SimWorkload
from gpucloud.jsonresp import stamped

DEFAULTS: dict[str, Any] = {"provision_seconds": 5, "fail_provisioning": False,
                            "lose_after_seconds": None, "domain_suffix": "sim.gpucloud.local",
                            "port_range": [30000, 32767], "call_latency_seconds": 0,
                            "hang_calls": False, "call_timeout_seconds": 60}
_ROW = select(*SimWorkload.__table__.columns).where(
    SimWorkload.instance_id == bindparam("instance_id"))
MAX_HEARTBEATS = 2000  # older heartbeats are not worth regenerating for a log tail
_SUFFIX_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


def _number(value: Any, name: str, low: float, high: float) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{name} must be a number between {low:g} and {high:g}")
    return value


class SimulatedDriver(Driver):
    name = "simulated"
    uses_database = True

    def __init__(self, provider_id: str, config: dict[str, Any], ctx: DriverContext):
        super().__init__(provider_id, config, ctx)
        self.cfg = self.validate_config(dict(config or {}))
        self.port_range = tuple(self.cfg["port_range"])
        # Its reads are SELECTs on our own database, like the feed's own; a provider set to be
        # slow or to hang keeps the driver-call pool and its deadline.
        self.reads_inline = not self.cfg["hang_calls"] and not self.cfg["call_latency_seconds"]

    def wanted_ports(self, spec: WorkloadSpec) -> list[tuple[int, str]]:
        return [(p.port, p.protocol) for p in spec.expose]

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(config, dict):
            raise ValueError("config must be an object")
        unknown = sorted(set(config) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"Unknown simulated driver option(s): {', '.join(unknown)}; "
                             f"known: {', '.join(DEFAULTS)}")
        out = {**DEFAULTS, **config}
        _number(out["provision_seconds"], "provision_seconds", 0, 86400)
        if not isinstance(out["fail_provisioning"], bool):
            raise ValueError("fail_provisioning must be true or false")
        if out["lose_after_seconds"] is not None:
            _number(out["lose_after_seconds"], "lose_after_seconds", 0, 10 * 365 * 86400)
        _number(out["call_latency_seconds"], "call_latency_seconds", 0, 3600)
        _number(out["call_timeout_seconds"], "call_timeout_seconds", 0.01, 86400)
        if not isinstance(out["hang_calls"], bool):
            raise ValueError("hang_calls must be true or false")
        suffix = out["domain_suffix"]
        if not isinstance(suffix, str) or len(suffix) > 200 or not _SUFFIX_RE.match(suffix):
            raise ValueError("domain_suffix must be a lowercase DNS name")
        rng = out["port_range"]
        if (not isinstance(rng, (list, tuple)) or len(rng) != 2
                or not all(isinstance(p, int) and not isinstance(p, bool) for p in rng)
                or not 1 <= rng[0] <= rng[1] <= 65535):
            raise ValueError("port_range must be [low, high] with 1 <= low <= high <= 65535")
        out["port_range"] = list(rng)
        return out

    # -- helpers -------------------------------------------------------------------------
    @property
    def _db(self):
        return self.ctx.db

    def _now(self) -> dt.datetime:
        return self.ctx.clock.now()

    def _status(self, row: SimWorkload | None, now: dt.datetime) -> WorkloadStatus:
        if row is None or row.deleted_at is not None:
            return WorkloadStatus(phase="gone", reason="No such workload at the provider")
        cfg = row.config
        if row.lost_at is not None and now >= row.lost_at:
            return WorkloadStatus(phase="gone",
                                  reason=f"Node {cfg['node']} stopped responding; workload lost")
        if now < row.ready_at:
            return WorkloadStatus(phase="pending", check_again_at=row.ready_at,
                                  container_started=False)
        if cfg.get("fail"):
            return WorkloadStatus(phase="failed", reason=cfg["fail"])
        ports = [ForwardedPort(**p) for p in row.ports or []]
        uri = next((f"http://{row.domain}:{p.external_port}" for p in ports
                    if p.port == 80 and p.protocol == "http"), None)
        vm = cfg["workload"] != "container"
        return WorkloadStatus(
            phase="running", domain=row.domain, forwarded_ports=ports, uri=uri,
            ssh_user="ubuntu" if vm else None, ssh_host=row.domain if vm else None,
            ssh_port=22 if vm else None, container_started=None if vm else True,
            applied_generation=row.generation, state={"node": cfg["node"]})

    # -- contract ------------------------------------------------------------------------
    def _far_side(self) -> None:
        """What the provider's API costs: `call_latency_seconds` of wall time per call, or
        no answer at all (`hang_calls`) until the caller has given up."""
        if self.cfg["hang_calls"]:
            time.sleep(self.call_timeout + 1)
            raise DriverTransientError("the simulated provider hung")
        if self.cfg["call_latency_seconds"]:
            time.sleep(self.cfg["call_latency_seconds"])

    def create(self, spec: WorkloadSpec) -> WorkloadStatus:
        self._far_side()
        now = self._now()
        with self._db.write() as s:
            row = s.get(SimWorkload, spec.instance_id)
            if row is None:
                row = self._new_row(s, spec, now)
                s.add(row)
            # Counted so tests can tell how many creates reached the provider.
            row.config = {**row.config, "create_calls": row.config.get("create_calls", 0) + 1}
            return self._status(row, now)

    def _new_row(self, s, spec: WorkloadSpec, now: dt.datetime) -> SimWorkload:
        ready = now + dt.timedelta(seconds=self.cfg["provision_seconds"])
        region = re.sub(r"[^a-z0-9-]", "-", spec.location.lower())
        config = {
            "workload": spec.workload, "name": spec.name, "image": spec.image,
            "os_image": spec.os_image, "startup_command": spec.startup_command,
            # Names only: values may be secrets, and the far side never needs to show them.
            "env_names": [name for name, _ in spec.environment],
            "expose": [{"port": p.port, "protocol": p.protocol} for p in spec.expose],
            "gpu": f"{spec.gpu_count}x {spec.gpu_model.upper()}",
            "node": f"gpu-node-{simulated_text.seed(spec.instance_id) % 32 + 1:02d}",
            "fail": ("Back-off pulling image: simulated provisioning failure"
                     if self.cfg["fail_provisioning"] else None),
            "history": [],
        }
        config["initial"] = {k: config[k] for k in ("image", "env_names", "startup_command")}
        ports = [{"port": p.port, "external_port": p.external_port, "protocol": p.protocol}
                 for p in spec.ports]
        lose = self.cfg["lose_after_seconds"]
        return SimWorkload(
            instance_id=spec.instance_id, provider_id=self.provider_id, created_at=now,
            ready_at=ready,
            lost_at=ready + dt.timedelta(seconds=lose) if lose is not None else None,
            domain=f"{spec.instance_id[:8]}.{region}.{self.cfg['domain_suffix']}",
            config=config, ports=ports, generation=1, updated_at=now)

    def status(self, instance_id: str, state: dict[str, Any] | None) -> WorkloadStatus:
        self._far_side()
        with self._db.read() as s:
            row = s.get(SimWorkload, instance_id)
            return self._status(row, self._now())

    def update(self, spec: WorkloadSpec, generation: int) -> WorkloadStatus:
        self._far_side()
        now = self._now()
        with self._db.write() as s:
            row = s.get(SimWorkload, spec.instance_id)
            if row is not None and row.deleted_at is None and row.generation < generation:
                cfg = dict(row.config)
                change = {"image": spec.image, "name": spec.name,
                          "startup_command": spec.startup_command,
                          "env_names": [name for name, _ in spec.environment]}
                cfg.update(change)
                cfg["history"] = [*cfg.get("history", []),
                                  {**change, "at": now.isoformat(), "generation": generation}]
                row.config = cfg  # a new dict, so the JSON column is written
                row.generation = generation
                row.updated_at = now
            return self._status(row, now)

    def delete(self, instance_id: str, state: dict[str, Any] | None) -> None:
        self._far_side()
        now = self._now()
        with self._db.write() as s:
            row = s.get(SimWorkload, instance_id)
            if row is not None and row.deleted_at is None:
                row.deleted_at = now

    def list_owned(self) -> list[str]:
        self._far_side()
        with self._db.read() as s:
            return list(s.scalars(select(SimWorkload.instance_id).where(
                SimWorkload.provider_id == self.provider_id, SimWorkload.deleted_at.is_(None))))

    # -- what a user can read ------------------------------------------------------------
    def _row(self, instance_id: str) -> Any:
        """The stored workload as a plain row (one pre-built SELECT; logs and events are
        polled)."""
        with self._db.query() as conn:
            return conn.execute(_ROW, {"instance_id": instance_id}).one_or_none()

    def feed_row(self, instance_id: str) -> tuple[Any, dict] | None:
        # A provider set to be slow or to hang is asked through `logs`/`events`, on a
        # driver-call thread, under the feed's deadline.
        return (_ROW, {"instance_id": instance_id}) if self.reads_inline else None

    def events(self, instance_id: str, state: dict[str, Any] | None) -> list[DriverEvent]:
        self._far_side()
        return self.events_from(self._row(instance_id))

    def events_from(self, row: Any) -> list[DriverEvent]:
        if row is None:
            return []
        now = self._now()
        return [DriverEvent(at, msg) for at, msg in simulated_text.events(row) if at <= now]

    def logs(self, instance_id: str, state: dict[str, Any] | None, last: int | None) -> list[str]:
        self._far_side()
        return self.logs_from(self._row(instance_id), last)

    def logs_from(self, row: Any, last: int | None) -> list[str]:
        if row is None:
            return []
        # The newest `last` lines hold at most `last` heartbeats: older ones are neither made
        # nor formatted. A console polls the tail of an instance that may have been up for
        # weeks (2,000 heartbeats at the cap), and made and formatted every one per request.
        beats = min(last, MAX_HEARTBEATS) if last else MAX_HEARTBEATS
        entries = simulated_text.logs(row, self._now(), beats)
        if last:
            entries = entries[-last:]
        return stamped(entries)
