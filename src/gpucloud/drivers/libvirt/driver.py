"""The `libvirt` driver: each VM instance is one libvirt domain booted from a base image.

Everything needed to find an instance's VM again lives at the provider, not in our database:
the domain is named `gpucloud-<instance id>` and carries our metadata (instance, provider,
forwarded SSH port, login user, start time); its files sit in
`<storage_dir>/<provider id>/<instance id>/`. That is what makes `create` idempotent (a retry
finds the domain), lets `status` work without the driver state, and lets `list_owned` see VMs
and directories left behind by a crash.

Host ports and GPUs are not chosen here: the control plane allocates them (`wanted_ports`,
`port_range`, the provider's `gpus`) and hands them over in the spec. See
docs/libvirt-driver.md for the operator's view.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import libvirt

from gpucloud.drivers import hostports
from gpucloud.drivers.base import (
    Driver,
    DriverContext,
    DriverEvent,
    DriverTransientError,
    ForwardedPort,
    WorkloadSpec,
    WorkloadStatus,
)
from gpucloud.drivers.libvirt import domain_xml, storage
from gpucloud.drivers.libvirt.config import ImageConfig, normalized, parse_config, warnings
from gpucloud.drivers.libvirt.hypervisor import Hypervisor, message, reraise
from gpucloud.drivers.libvirt.storage import InstanceFiles, StorageError
from gpucloud.drivers.ssh_probe import ssh_banner

log = logging.getLogger("gpucloud.drivers.libvirt")
# Terminal control in the console (colours, cursor moves, title OSCs) and other control bytes.
ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[()#][0-9A-Za-z]|.)"
                  r"|[\x00-\x08\x0b-\x1f\x7f]")
CONSOLE_TAIL = 12  # lines of serial console quoted in a failure reason
PROBE_HOST = "127.0.0.1"  # the hypervisor is local (see config), so are its forwarded ports
SSH = (22, "tcp")
# While a guest boots, ask again this soon: a banner probe is one local TCP connect, and the
# control plane's default (2 s) would add a second on average to every deploy.
BOOT_POLL = dt.timedelta(seconds=0.5)
ARP_TABLE = "/proc/net/arp"  # the hypervisor is on this machine (see config)


def neighbour_address(macs: list[str], table: str = ARP_TABLE) -> str | None:
    """The IPv4 address the host's neighbour (ARP) table holds for one of these MACs."""
    wanted = {m.lower() for m in macs}
    try:
        lines = Path(table).read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # IP address, HW type, Flags (0x2: complete), HW address, Mask, Device
        if len(fields) >= 4 and int(fields[2], 16) & 0x2 and fields[3].lower() in wanted:
            return fields[0]
    return None


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def _plain(line: str) -> str:
    return ANSI.sub("", line)


class LibvirtDriver(Driver):
    name = "libvirt"
    workloads = frozenset({"vm"})

    def __init__(self, provider_id: str, config: dict[str, Any], ctx: DriverContext):
        super().__init__(provider_id, config, ctx)
        self.cfg = parse_config(config)
        self.port_range = tuple(self.cfg.port_range) if self.cfg.user_network else None
        self.hv = Hypervisor(self.cfg.uri)

    # -- config --------------------------------------------------------------------------------
    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        return normalized(config)

    @classmethod
    def config_warnings(cls, config: dict[str, Any]) -> list[str]:
        return warnings(parse_config(config))

    @classmethod
    def offer_problem(cls, config: dict[str, Any], workload: str, os_options: list[str],
                      gpu_model: str) -> tuple[str, str] | None:
        cfg = parse_config(config)
        if workload != "vm":
            return "workload", "A libvirt provider serves vm offers only"
        missing = [o for o in os_options if o not in cfg.images]
        if missing:
            return "os_options", (f"The provider has no image for {', '.join(missing)} "
                                  f"(it has: {', '.join(sorted(cfg.images))})")
        if cfg.gpus and not any(g.model == gpu_model.lower() for g in cfg.gpus):
            return "gpu", (f"The provider has no {gpu_model} GPU (it has: "
                           f"{', '.join(sorted({g.model for g in cfg.gpus}))})")
        return None

    def wanted_ports(self, spec: WorkloadSpec) -> list[tuple[int, str]]:
        return [SSH] if self.cfg.user_network else []

    def port_free(self, port: int, protocol: str) -> bool:
        return hostports.host_port_free(port, protocol)

    def gpu_pool(self, spec: WorkloadSpec) -> list[str]:
        """Only GPUs of the offer's model serve it."""
        model = spec.gpu_model.lower()
        return [g.pci for g in self.cfg.gpus if g.model == model]

    def _files(self, instance_id: str) -> InstanceFiles:
        return InstanceFiles(self.cfg.storage_dir, self.provider_id, instance_id)

    # -- create --------------------------------------------------------------------------------
    def create(self, spec: WorkloadSpec) -> WorkloadStatus:
        """Define and start the domain unless it exists; never waits for the boot."""
        name = domain_xml.domain_name(spec.instance_id)
        dom = self.hv.domain(name)
        if dom is None:
            reason = self._define(spec)
            if reason is not None:
                return self._failed(spec.instance_id, reason)
            dom = self.hv.domain(name)
            if dom is None:
                return self._failed(spec.instance_id, "The domain vanished right after it "
                                    "was defined")
        if not self._active(dom):
            # Defined but never started (a crash between the two), or start refused.
            try:
                dom.create()
            except libvirt.libvirtError as exc:
                err = reraise(exc, "The VM could not start")
                if isinstance(err, DriverTransientError):
                    raise err from None
                return self._failed(spec.instance_id, self._with_console(
                    spec.instance_id, str(err)))
        return self.status(spec.instance_id, None)

    def _image(self, spec: WorkloadSpec) -> tuple[str, ImageConfig] | str:
        wanted = spec.os_image
        if wanted is None and len(self.cfg.images) == 1:
            wanted = next(iter(self.cfg.images))
        image = self.cfg.images.get(wanted or "")
        if image is None:
            return (f"This provider has no image {wanted!r} (it has: "
                    f"{', '.join(sorted(self.cfg.images))})")
        for what, path in (("base image", image.path), ("kernel", image.kernel),
                           ("initrd", image.initrd)):
            if path and not os.path.isfile(path):
                return f"The {what} {path} of {wanted} is missing on the host"
        return wanted, image

    def _define(self, spec: WorkloadSpec) -> str | None:
        """Files and domain for a new VM; None, or why it cannot be made."""
        found = self._image(spec)
        if isinstance(found, str):
            return found
        image_name, image = found
        port = None
        if self.cfg.user_network:
            port = next((p.external_port for p in spec.ports
                         if (p.port, p.protocol) == SSH), None)
            if port is None:
                return "No host port was allocated for the VM's SSH"
        if self.cfg.gpus and len(spec.gpu_devices) < spec.gpu_count:
            return (f"The plan needs {spec.gpu_count} GPU(s); {len(spec.gpu_devices)} were "
                    "assigned")
        files = self._files(spec.instance_id)
        hostname = storage.hostname_for(spec.name, spec.instance_id)
        try:
            files.ensure_dir()
            files.make_overlay(image.path, spec.storage_gib)
            files.make_seed(storage.user_data(image.user, spec.ssh_key, hostname),
                            storage.meta_data(spec.instance_id, hostname))
        except (OSError, StorageError) as exc:
            return f"The VM's disk could not be prepared: {exc}"
        xml = domain_xml.build(domain_xml.DomainSpec(
            instance_id=spec.instance_id, provider_id=self.provider_id, title=spec.name,
            domain_type=self.cfg.domain_type, vcpu=spec.vcpu, memory_mib=spec.memory_gib * 1024,
            disk_path=str(files.disk), disk_format="qcow2", seed_path=str(files.seed),
            console_path=str(files.console), network=self.cfg.network, ssh_port=port,
            kernel=image.kernel, initrd=image.initrd,
            cmdline=image.cmdline if image.kernel else None,
            gpu_devices=list(spec.gpu_devices) if self.cfg.gpus else [],
            tb_cache_mib=self.cfg.tb_cache_mib,
            extra_metadata={"user": image.user, "image": image_name,
                            "created": f"{time.time():.3f}"}))
        try:
            self.hv.conn().defineXML(xml)
        except libvirt.libvirtError as exc:
            err = reraise(exc, "libvirt refused the domain")
            if isinstance(err, DriverTransientError):
                raise err from None
            return str(err)
        return None

    # -- status --------------------------------------------------------------------------------
    @staticmethod
    def _active(dom: libvirt.virDomain) -> bool:
        try:
            return bool(dom.isActive())
        except libvirt.libvirtError as exc:
            raise reraise(exc, "reading the domain's state") from None

    def _meta(self, dom: libvirt.virDomain) -> dict[str, str]:
        try:
            return domain_xml.read_metadata(dom.XMLDesc(0))
        except libvirt.libvirtError as exc:
            raise reraise(exc, "reading the domain") from None

    def status(self, instance_id: str, state: dict[str, Any] | None) -> WorkloadStatus:
        state = dict(state or {})
        dom = self.hv.domain(domain_xml.domain_name(instance_id))
        if dom is None:
            return WorkloadStatus(phase="gone", reason="The VM no longer exists at the provider",
                                  state=state or None)
        meta = self._meta(dom)
        created = float(meta.get("created") or time.time())
        state.setdefault("created_at", _iso(created))
        state.setdefault("image", meta.get("image"))
        ready = bool(state.get("ready_at"))
        if not self._active(dom):
            if not ready:
                return self._failed(instance_id, self._with_console(
                    instance_id, "The VM stopped before its SSH server answered"), state)
            # Powered off from inside after it served: bring it back like a reboot would.
            try:
                dom.create()
            except libvirt.libvirtError as exc:
                raise reraise(exc, "restarting the stopped VM") from None
            self._note(state, "The VM was off; started it again")
            return WorkloadStatus(phase="pending", state=state,
                                  reason="The VM was off and is starting again")
        host, port = self._endpoint(dom, meta)
        banner = ssh_banner(host, port) if host else None
        if banner is None:
            if not ready and time.time() - created > self.cfg.boot_timeout_seconds:
                return self._failed(instance_id, self._with_console(
                    instance_id, f"The VM's SSH server did not answer within "
                    f"{self.cfg.boot_timeout_seconds:.0f} s of its start"), state)
            return WorkloadStatus(phase="pending", state=state, check_again_at=self._soon())
        if not ready:
            state["ready_at"] = _iso(time.time())
            self._note(state, f"SSH answered {time.time() - created:.1f} s after the VM "
                       f"started ({banner})")
        public = self.cfg.public_host if self.cfg.user_network else host
        forwarded = [ForwardedPort(22, port, "tcp")] if self.cfg.user_network else []
        return WorkloadStatus(phase="running", domain=public, forwarded_ports=forwarded,
                              ssh_user=meta.get("user") or "root", ssh_host=public,
                              ssh_port=port, state=state)

    def _endpoint(self, dom: libvirt.virDomain, meta: dict[str, str]) -> tuple[str | None, int]:
        """Where the guest's sshd is reached from here: the forwarded host port, or the
        guest's own address on a libvirt network (its DHCP lease) or a bridge (the host's
        neighbour table, by the NIC's MAC: libvirt keeps no lease for a bridge, and its own
        ARP source failed here with "wrong nlmsg len")."""
        if self.cfg.user_network:
            return PROBE_HOST, int(meta.get("ssh_port") or 0)
        try:
            ifaces = dom.interfaceAddresses(
                libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE) or {}
        except libvirt.libvirtError:
            ifaces = {}
        for iface in ifaces.values():
            for addr in iface.get("addrs") or []:
                if addr.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4:
                    return addr["addr"], 22
        try:
            macs = domain_xml.interface_macs(dom.XMLDesc(0))
        except libvirt.libvirtError as exc:
            raise reraise(exc, "reading the domain") from None
        return neighbour_address(macs), 22

    def _with_console(self, instance_id: str, reason: str) -> str:
        tail = self.logs(instance_id, None, CONSOLE_TAIL)
        if not tail:
            return reason
        return f"{reason}. Last serial console lines: " + " | ".join(tail)[-1500:]

    # -- delete --------------------------------------------------------------------------------
    def delete(self, instance_id: str, state: dict[str, Any] | None) -> None:
        """Destroy and undefine the domain, remove its disk and seed; safe to repeat."""
        dom = self.hv.domain(domain_xml.domain_name(instance_id))
        if dom is not None:
            try:
                if dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN,
                                                libvirt.VIR_ERR_OPERATION_INVALID):
                    raise reraise(exc, "stopping the VM") from None
            try:
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                  | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                                  | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise reraise(exc, "undefining the VM") from None
        self._files(instance_id).remove()

    # -- observation ---------------------------------------------------------------------------
    def logs(self, instance_id: str, state: dict[str, Any] | None, last: int | None) -> list[str]:
        """The serial console (kernel, systemd and cloud-init output), terminal escapes
        removed; the whole log is its last MiB (storage.CONSOLE_READ_LIMIT)."""
        return self._files(instance_id).console_tail(last, _plain)

    def events(self, instance_id: str, state: dict[str, Any] | None) -> list[DriverEvent]:
        state = state or {}
        out = [DriverEvent(at=dt.datetime.fromisoformat(n["at"]), message=n["message"])
               for n in state.get("notes") or []]
        if state.get("created_at"):
            out.append(DriverEvent(at=dt.datetime.fromisoformat(state["created_at"]),
                                   message=f"VM started from image {state.get('image')}"))
        return sorted(out, key=lambda e: e.at)

    def list_owned(self) -> list[str]:
        owned = set(storage.instance_dirs(self.cfg.storage_dir, self.provider_id))
        for dom in self.hv.domains():
            try:
                if not dom.name().startswith(domain_xml.NAME_PREFIX):
                    continue
                meta = domain_xml.read_metadata(dom.XMLDesc(0))
            except libvirt.libvirtError:
                continue  # undefined while we looked
            if meta.get("provider") == self.provider_id and meta.get("id"):
                owned.add(meta["id"])
        return sorted(owned)

    def ping(self) -> bool:
        return self.hv.ping()

    def close(self) -> None:
        self.hv.close()

    def _failed(self, instance_id: str, reason: str,
                state: dict[str, Any] | None = None) -> WorkloadStatus:
        # The server log gets the reason too: the operator may not read instance events.
        log.warning("provider %s, VM %s failed: %s", self.provider_id, instance_id, reason)
        return WorkloadStatus(phase="failed", reason=reason, state=state)

    def _soon(self) -> dt.datetime | None:
        # No context: the driver used on its own (tests, bench), and nobody schedules.
        return self.ctx.clock.now() + BOOT_POLL if self.ctx is not None else None

    @staticmethod
    def _note(state: dict[str, Any], text: str) -> None:
        notes = list(state.get("notes") or [])
        notes.append({"at": _iso(time.time()), "message": text})
        state["notes"] = notes[-20:]


__all__ = ["LibvirtDriver", "message"]
