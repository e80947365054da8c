"""One machine's BMC through sushy, with every change confirmed by reading the state back.

A BMC answers 202/204 when it *accepted* a request, not when it is done, so each action here
polls the resource until it shows the wanted state (or raises after `confirm_seconds`).
Lessons from sushy-emulator and real BMCs built in:
- "Once" boot overrides may read back as "Continuous": the override is always set explicitly,
  to the CD for a deploy or a wipe and back to the disk after.
- Media and boot changes take effect only from a cold start: force off, then on (never a
  graceful restart; PowerCycle and PushPowerButton are silent no-ops on some BMCs).
- VirtualMedia lives under the System on some BMCs and under its Manager on others: both are
  followed, the first CD-capable device wins.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sushy
from sushy import exceptions as sushy_exc

from gpucloud.drivers.base import DriverError, DriverTransientError

POLL = 0.5


class BmcError(DriverError):
    """The BMC refused or could not do what was asked."""


class BmcUnreachable(DriverTransientError):
    """No answer from the BMC (network, TLS, 5xx)."""


@dataclass
class Inventory:
    power: str
    cpus: int | None
    memory_gib: float | None
    pcie_devices: list[str] | None  # None: the BMC does not list them
    gpus: int | None  # GPU-class PCIe devices; None when no PCIe devices are listed

    def as_dict(self) -> dict:
        return {"power": self.power, "cpus": self.cpus, "memory_gib": self.memory_gib,
                "gpus": self.gpus, "pcie_devices": self.pcie_devices}


# PCIe function classes (Redfish DeviceClass) and PCI class codes (0x03 display, 0x12
# processing accelerators) that count as a GPU.
GPU_CLASSES = {"DisplayController", "ProcessingAccelerators"}
GPU_CLASS_CODES = ("0x03", "0x12")


def _guard(what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except sushy_exc.AccessError as exc:
        raise BmcError(f"{what}: the BMC refused the credentials ({exc.status_code})") from None
    except sushy_exc.ConnectionError as exc:
        raise BmcUnreachable(f"{what}: BMC unreachable: {_short(exc)}") from None
    except sushy_exc.ServerSideError as exc:
        raise BmcUnreachable(f"{what}: BMC error {exc.status_code}: {_short(exc)}") from None
    except sushy_exc.SushyError as exc:
        raise BmcError(f"{what}: {_short(exc)}") from None


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


class Bmc:
    def __init__(self, url: str, system: str, username: str, password: str, verify_tls: bool,
                 timeout: float = 30.0, confirm_seconds: float = 60.0):
        self.url = url.rstrip("/")
        self.system_path = system
        self._auth = (username, password)
        self._verify = verify_tls
        self._timeout = timeout
        self.confirm_seconds = confirm_seconds
        self._conn: sushy.Sushy | None = None
        self._lock = threading.Lock()

    # -- connection ----------------------------------------------------------------------------
    def _root(self) -> sushy.Sushy:
        with self._lock:
            if self._conn is None:
                self._conn = _guard("connecting", lambda: sushy.Sushy(
                    self.url, username=self._auth[0], password=self._auth[1],
                    verify=self._verify,
                    # A BMC that keeps failing is reported, not waited on for minutes.
                    server_side_retries=2, server_side_retries_delay=1,
                    read_timeout=self._timeout, connect_timeout=10))
            return self._conn

    def system(self):
        return _guard("reading the system",
                      lambda: self._root().get_system(self.system_path))

    def _reset(self) -> None:
        with self._lock:
            self._conn = None

    # -- reads ---------------------------------------------------------------------------------
    def power(self) -> str:
        """"on" | "off" | "poweringon" | "poweringoff" (Redfish PowerState, lower case)."""
        return str(self.system().power_state.value).lower()

    def inventory(self) -> Inventory:
        s = self.system()
        mem = (s.json.get("MemorySummary") or {}).get("TotalSystemMemoryGiB")
        cpus = _guard("reading processors", lambda: s.processors.summary.count
                      if s.json.get("Processors") else None)
        pcie = gpus = None
        links = s.json.get("PCIeDevices")
        if links:
            pcie = [str(link.get("@odata.id")) for link in links]
            gpus = sum(1 for path in pcie if self._is_gpu(path))
        return Inventory(power=str(s.power_state.value).lower(), cpus=cpus,
                         memory_gib=float(mem) if mem is not None else None, pcie_devices=pcie,
                         gpus=gpus)

    def _get(self, path: str) -> dict:
        return _guard(f"reading {path}", lambda: self._root()._conn.get(path=path).json())

    def _is_gpu(self, path: str) -> bool:
        """A PCIe device with a display or accelerator function (by class or class code)."""
        dev = self._get(path)
        functions = []
        coll = dev.get("PCIeFunctions") or (dev.get("Links") or {}).get("PCIeFunctions")
        if isinstance(coll, dict) and coll.get("@odata.id"):
            functions = [self._get(m["@odata.id"])
                         for m in self._get(coll["@odata.id"]).get("Members", [])]
        elif isinstance(coll, list):
            functions = [self._get(m["@odata.id"]) for m in coll if m.get("@odata.id")]
        return any(f.get("DeviceClass") in GPU_CLASSES
                   or str(f.get("ClassCode", "")).lower().startswith(GPU_CLASS_CODES)
                   for f in functions)

    def _cd(self):
        """The CD-capable virtual media device, System first, then its Managers."""
        s = self.system()
        collections = []
        try:
            collections.append(s.virtual_media)
        except (sushy_exc.MissingAttributeError, sushy_exc.SushyError, AttributeError):
            pass
        for manager in _guard("reading managers", lambda: s.managers):
            try:
                collections.append(manager.virtual_media)
            except (sushy_exc.MissingAttributeError, sushy_exc.SushyError):
                continue
        for coll in collections:
            for dev in _guard("reading virtual media", coll.get_members):
                types = {str(getattr(t, "value", t)).upper() for t in dev.media_types or []}
                if types & {"CD", "DVD"}:
                    return dev
        raise BmcError("the BMC offers no virtual CD")

    def media(self) -> str | None:
        """URL of the inserted image, or None."""
        dev = self._cd()
        return (dev.image or None) if dev.inserted else None

    # -- actions, each confirmed -----------------------------------------------------------------
    def force_off(self) -> None:
        if self.power() != "off":
            _guard("forcing power off",
                   lambda: self.system().reset_system(sushy.ResetType.FORCE_OFF))
        self._until("powered off", lambda: self.power() == "off")

    def graceful_off(self, timeout: float) -> bool:
        """Ask the OS to shut down; True when it did within `timeout`."""
        if self.power() == "off":
            return True
        _guard("graceful shutdown",
               lambda: self.system().reset_system(sushy.ResetType.GRACEFUL_SHUTDOWN))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.power() == "off":
                return True
            time.sleep(POLL)
        return False

    def power_on(self) -> None:
        if self.power() != "on":
            _guard("powering on", lambda: self.system().reset_system(sushy.ResetType.ON))
        self._until("powered on", lambda: self.power() == "on")

    def eject(self) -> None:
        dev = self._cd()
        if dev.inserted:
            _guard("ejecting media", dev.eject_media)
        self._until("media ejected", lambda: self.media() is None)

    def insert(self, url: str) -> None:
        if self.media() == url:
            return
        self.eject()
        dev = self._cd()
        _guard("inserting media", lambda: dev.insert_media(url, inserted=True,
                                                            write_protected=True))
        self._until("media inserted", lambda: self.media() == url)

    def boot_from(self, target: str) -> None:
        """Boot override to "cd" or "hdd", read back (Continuous: see the module doc)."""
        want = {"cd": sushy.BootSource.CD, "hdd": sushy.BootSource.HDD}[target]
        _guard("setting the boot device", lambda: self.system().set_system_boot_options(
            target=want, enabled=sushy.BootSourceOverrideEnabled.CONTINUOUS))
        self._until(f"boot device {target}", lambda: self.system().boot.target == want)

    def _until(self, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.confirm_seconds
        while True:
            if check():
                return
            if time.monotonic() > deadline:
                raise BmcError(f"the BMC accepted but did not show {what} within "
                               f"{self.confirm_seconds:.0f} s")
            time.sleep(POLL)

    def close(self) -> None:
        self._reset()
