"""The `redfish` driver: bare-metal servers deployed and wiped through their BMCs.

The control plane picks the machine (`machine_pool`, then `spec.machine`) and keeps track of
which machines are rented, dirty or in maintenance (instances/allocations.py): this driver
touches no database. What it does, each step confirmed by reading the BMC back (bmc.py):

- deploy (`create`, called again until it reports running): build the instance's boot ISO
  (media.py), then — unless the machine already runs from that ISO — force off, eject,
  insert, boot override to CD, power on. ACTIVE when the machine's SSH server sends its
  banner. A retry after a crash finds the machine powered on from its ISO and just waits.
- release (`delete`, after the instance ended or failed): power off (graceful, forced after
  `graceful_off_seconds`), eject, boot the wipe image, wait until it powers the machine off,
  eject, boot override back to the disk. A wipe that does not finish raises `WipeFailed`: the
  control plane puts the machine in maintenance instead of offering it again.

See docs/redfish-driver.md for the operator's view.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from gpucloud.drivers.base import (
    CleanupFailed,
    Driver,
    DriverContext,
    DriverError,
    DriverEvent,
    WorkloadSpec,
    WorkloadStatus,
)
from gpucloud.drivers.redfish import config as rconfig
from gpucloud.drivers.redfish.bmc import Bmc, BmcError, BmcUnreachable
from gpucloud.drivers.redfish.media import (
    MediaError,
    MediaServer,
    MediaStore,
    build_iso,
    seed_initrd,
)
from gpucloud.drivers.ssh_probe import ssh_banner

BOOT_POLL = dt.timedelta(seconds=1)


class WipeFailed(CleanupFailed):
    """The machine could not be proven clean: it must not be rented again (maintenance)."""


class RedfishDriver(Driver):
    name = "redfish"
    workloads = frozenset({"baremetal"})

    def __init__(self, provider_id: str, config: dict[str, Any], ctx: DriverContext):
        super().__init__(provider_id, config, ctx)
        self.cfg = rconfig.parse_config(config)
        self.store = MediaStore(self.cfg.media_dir, self.cfg.media_url,
                                self.cfg.media_ttl_seconds)
        self.server = MediaServer(self.store, self.cfg.media_listen)
        self._bmcs: dict[str, Bmc] = {}
        self.journal = Path(self.cfg.media_dir) / "journal" / provider_id

    @property
    def call_timeout(self) -> float:
        """A release waits for the whole wipe: the call may take that long."""
        c = self.cfg
        return c.graceful_off_seconds + c.wipe_timeout_seconds + 10 * c.confirm_seconds + 120

    # -- registration ----------------------------------------------------------------------------
    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        return rconfig.normalized(config)

    @classmethod
    def seal_config(cls, config, seal) -> dict[str, Any]:
        return rconfig.seal_secrets(config, seal)

    @classmethod
    def open_config(cls, config, unseal) -> dict[str, Any]:
        return rconfig.open_secrets(config, unseal)

    @classmethod
    def public_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        return rconfig.public(config)

    @classmethod
    def offer_problem(cls, config, workload, os_options, gpu_model):
        if workload != "baremetal":
            return "workload", "A redfish provider serves bare-metal offers only"
        images = set(config.get("images") or {})
        missing = [o for o in os_options if o not in images]
        if missing:
            return "os_options", (f"The provider has no boot image for {', '.join(missing)}; "
                                  f"it has {', '.join(sorted(images))}")
        return None

    @classmethod
    def machines(cls, config: dict[str, Any]) -> list[tuple[str, list[str] | None]]:
        return [(str(m["name"]), m.get("offers")) for m in config.get("machines") or []]

    # -- what the control plane allocates -----------------------------------------------------
    def machine_pool(self, spec: WorkloadSpec) -> list[str]:
        """Machines that may serve the spec's offer, in config order."""
        return [m.name for m in self.cfg.machines
                if m.offers is None or (spec.offer_id is not None and spec.offer_id in m.offers)]

    def machine_inventory(self, name: str) -> dict[str, Any]:
        return self._bmc(name).inventory().as_dict()

    def _bmc(self, name: str) -> Bmc:
        bmc = self._bmcs.get(name)
        if bmc is None:
            m = self.cfg.machine(name)
            if m is None:
                raise DriverError(f"Machine {name} is not in the provider's config")
            bmc = Bmc(m.bmc.url, m.bmc.system, m.bmc.username, m.bmc.password or "",
                      m.bmc.verify_tls, confirm_seconds=self.cfg.confirm_seconds)
            self._bmcs[name] = bmc
        return bmc

    # -- deploy ---------------------------------------------------------------------------------
    def create(self, spec: WorkloadSpec) -> WorkloadStatus:
        if not spec.machine or self.cfg.machine(spec.machine) is None:
            return WorkloadStatus(phase="failed", reason="No machine was allocated")
        image = self.cfg.images.get(spec.os_image or "")
        if image is None:
            return WorkloadStatus(phase="failed",
                                  reason=f"This provider has no boot image '{spec.os_image}'")
        machine = self.cfg.machine(spec.machine)
        state = {"machine": machine.name, "user": image.user}
        try:
            return self._deploy(spec, machine, image, state)
        except BmcUnreachable as exc:
            # Nothing the customer can wait for: fail now, with the reason. The machine stays
            # dirty (it may have been touched) until a wipe through its BMC succeeds.
            return WorkloadStatus(phase="failed", reason=f"Machine {machine.name}: {exc}")

    def _deploy(self, spec: WorkloadSpec, machine: rconfig.MachineConfig,
                image: rconfig.BootImage, state: dict[str, Any]) -> WorkloadStatus:
        self.server.start()
        url = self.store.ensure(spec.instance_id, lambda iso: build_iso(
            iso, image.kernel, image.initrd, image.cmdline, seed_initrd(
                user_data(spec.ssh_key), meta_data(spec.instance_id, spec.name))))
        bmc = self._bmc(machine.name)
        started = self._read(spec.instance_id).get("booted_at")
        if not (started and bmc.power() == "on" and bmc.media() == url):
            self._note(spec.instance_id, "Deploying on machine " + machine.name)
            bmc.force_off()
            self._note(spec.instance_id, "Powered off")
            bmc.insert(url)
            self._note(spec.instance_id, "Boot media inserted")
            bmc.boot_from("cd")
            bmc.power_on()
            started = time.time()
            self._note(spec.instance_id, "Booting", booted_at=started)
        banner = ssh_banner(machine.ssh.host, machine.ssh.port, timeout=2.0)
        if banner:
            self._note(spec.instance_id, f"SSH ready after {time.time() - started:.1f} s "
                                         f"({banner})")
            return self._running(machine, state)
        if time.time() - started > self.cfg.boot_timeout_seconds:
            return WorkloadStatus(phase="failed", reason=f"SSH did not answer within "
                                  f"{self.cfg.boot_timeout_seconds:.0f} s of power on")
        if bmc.power() != "on":
            return WorkloadStatus(phase="failed", reason="The machine powered off while booting")
        soon = self.ctx.clock.now() + BOOT_POLL if self.ctx is not None else None
        return WorkloadStatus(phase="pending", state=state, check_again_at=soon)

    def _running(self, machine: rconfig.MachineConfig, state: dict[str, Any]) -> WorkloadStatus:
        return WorkloadStatus(phase="running", domain=machine.ssh.host,
                              ssh_user=state.get("user") or "root", ssh_host=machine.ssh.host,
                              ssh_port=machine.ssh.port, state=state)

    def status(self, instance_id: str, state: dict[str, Any] | None) -> WorkloadStatus:
        """Health of a rented machine: powered off, or its BMC not answering, for longer than
        `health_grace_seconds` (server clock) makes it gone (the instance ends with the
        reason); a shorter blip is only noted. When it began is kept in the instance's journal,
        so a restart of the server does not restart the grace period."""
        state = state or {}
        machine = self.cfg.machine(state.get("machine") or "")
        if machine is None:
            return WorkloadStatus(phase="gone", reason="The machine is no longer in the "
                                  "provider's config")
        try:
            off = self._bmc(machine.name).power() == "off"
            problem = f"Machine {machine.name} is powered off" if off else None
        except BmcUnreachable as exc:
            problem = f"Machine {machine.name}: {exc}"
        now = self.ctx.clock.now()
        since_text = self._read(instance_id).get("unhealthy_since")
        if problem is None:
            if since_text:
                self._note(instance_id, f"Machine {machine.name} is healthy again",
                           unhealthy_since=None)
            return self._running(machine, state)
        if not since_text:
            self._note(instance_id, f"{problem}; the instance ends if this lasts "
                                    f"{self.cfg.health_grace_seconds:.0f} s",
                       unhealthy_since=now.isoformat())
            return self._running(machine, state)
        lasted = (now - dt.datetime.fromisoformat(since_text)).total_seconds()
        if lasted > self.cfg.health_grace_seconds:
            return WorkloadStatus(phase="gone", reason=f"{problem} (for {lasted:.0f} s, longer "
                                  f"than the {self.cfg.health_grace_seconds:.0f} s grace period)")
        return self._running(machine, state)

    # -- release ----------------------------------------------------------------------------------
    def delete(self, instance_id: str, state: dict[str, Any] | None) -> None:
        """Power off, wipe, boot override back to the disk. Safe to repeat: a repeat wipes
        again from the start. Raises WipeFailed when the wipe did not power the machine off
        in time, the wipe media could not be used, or the BMC stayed unreachable for
        `wipe_timeout_seconds` (server clock); a shorter outage is retried."""
        name = (state or {}).get("machine")
        if not name:
            return  # never got a machine
        try:
            self._wipe(instance_id, name)
        except BmcUnreachable as exc:
            now = self.ctx.clock.now()
            since = self._read(instance_id).get("wipe_unreachable_since")
            if not since:
                self._note(instance_id, f"The wipe waits for the BMC: {exc}",
                           wipe_unreachable_since=now.isoformat())
                raise
            lasted = (now - dt.datetime.fromisoformat(since)).total_seconds()
            if lasted > self.cfg.wipe_timeout_seconds:
                self._note(instance_id, "The wipe gave up on the BMC",
                           wipe_unreachable_since=None)
                raise WipeFailed(f"The BMC of {name} did not answer for {lasted:.0f} s: "
                                 f"{exc}") from None
            raise
        if self._read(instance_id).get("wipe_unreachable_since"):
            self._note(instance_id, "The BMC answers again", wipe_unreachable_since=None)

    def _wipe(self, instance_id: str, name: str) -> None:
        bmc = self._bmc(name)
        if not bmc.graceful_off(self.cfg.graceful_off_seconds):
            bmc.force_off()
        self._note(instance_id, "Powered off")
        bmc.eject()
        self.store.drop(instance_id)
        self.server.start()
        wipe = self.cfg.wipe
        try:
            # Keyed on the image files: an operator who replaced a broken wipe image gets the
            # new one on the retry, not the cached ISO of the old one.
            url = self.store.ensure(_image_key("wipe", wipe), lambda iso: build_iso(
                iso, wipe.kernel, wipe.initrd, wipe.cmdline, None))
            bmc.insert(url)
            bmc.boot_from("cd")
            bmc.power_on()
        except BmcUnreachable:
            raise
        except (BmcError, MediaError) as exc:
            raise WipeFailed(f"Could not boot the wipe image on {name}: {exc}") from None
        self._note(instance_id, "Wiping")
        began = time.monotonic()
        while bmc.power() != "off":
            if time.monotonic() - began > self.cfg.wipe_timeout_seconds:
                bmc.force_off()
                raise WipeFailed(f"The wipe of {name} did not finish within "
                                 f"{self.cfg.wipe_timeout_seconds:.0f} s")
            time.sleep(1.0)
        bmc.eject()
        bmc.boot_from("hdd")
        self._note(instance_id, f"Wiped in {time.monotonic() - began:.1f} s")

    # -- observation ------------------------------------------------------------------------------
    def logs(self, instance_id: str, state: dict[str, Any] | None, last: int | None) -> list[str]:
        lines = [f"{n['at']} {n['message']}" for n in self._read(instance_id).get("notes", [])]
        return lines[-last:] if last else lines

    def events(self, instance_id: str, state: dict[str, Any] | None) -> list[DriverEvent]:
        return [DriverEvent(at=dt.datetime.fromisoformat(n["at"]), message=n["message"])
                for n in self._read(instance_id).get("notes", [])]

    def list_owned(self) -> list[str]:
        """Nothing: which machine is whose is the control plane's machine table, and a machine
        is released only through `delete` with its name (a reconciler guessing from BMC state
        could wipe a rented server)."""
        return []

    def close(self) -> None:
        self.server.stop()
        for bmc in self._bmcs.values():
            bmc.close()

    # -- the journal: what happened to an instance, kept beside its media ---------------------
    def _read(self, instance_id: str) -> dict[str, Any]:
        try:
            return json.loads((self.journal / f"{instance_id}.json").read_text())
        except (OSError, ValueError):
            return {}

    def _note(self, instance_id: str, message: str, **fields: Any) -> None:
        data = self._read(instance_id)
        notes = data.setdefault("notes", [])
        notes.append({"at": dt.datetime.now(dt.timezone.utc).isoformat(), "message": message})
        data["notes"] = notes[-50:]
        data.update(fields)
        self.journal.mkdir(parents=True, exist_ok=True)
        tmp = self.journal / f"{instance_id}.tmp"
        tmp.write_text(json.dumps(data))
        tmp.rename(self.journal / f"{instance_id}.json")


def _image_key(prefix: str, image: rconfig.BootImage) -> str:
    """A media key that changes when the image's files or command line change."""
    parts = [image.cmdline]
    for path in (image.kernel, image.initrd):
        try:
            st = os.stat(path)
            parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(path)
    return f"{prefix}-{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:16]}"


def user_data(ssh_key: str | None) -> str:
    doc = {"ssh_authorized_keys": [ssh_key] if ssh_key else [], "disable_root": False,
           "ssh_pwauth": False}
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, width=10000)


def meta_data(instance_id: str, name: str) -> str:
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in name.lower()).strip("-")
    return yaml.safe_dump({"instance-id": instance_id,
                           "local-hostname": host[:63].strip("-") or f"bm-{instance_id[:8]}"},
                          sort_keys=False)
