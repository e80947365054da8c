"""One libvirt connection per provider, reopened when it drops, and libvirt's errors sorted
into "retry later" (the daemon is away) and "this request is impossible" (everything else)."""

from __future__ import annotations

import threading

import libvirt

from gpucloud.drivers.base import DriverError, DriverTransientError

# libvirt prints every error on stderr besides raising it; the driver reports them itself.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

# Codes that mean the daemon or the connection is unavailable, not that we asked nonsense.
_TRANSIENT = {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_RPC,
              libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_OPERATION_TIMEOUT,
              libvirt.VIR_ERR_AUTH_FAILED, libvirt.VIR_ERR_AUTH_UNAVAILABLE}


def message(exc: libvirt.libvirtError) -> str:
    return " ".join(str(exc.get_error_message() or exc).split())[:500]


def is_transient(exc: libvirt.libvirtError) -> bool:
    return exc.get_error_code() in _TRANSIENT


class LibvirtError(DriverError):
    pass


def reraise(exc: libvirt.libvirtError, what: str) -> DriverError:
    cls = DriverTransientError if is_transient(exc) else LibvirtError
    return cls(f"{what}: {message(exc)}")


class Hypervisor:
    def __init__(self, uri: str):
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()

    def conn(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                self._drop()
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise DriverTransientError(f"libvirt at {self.uri} is unreachable: "
                                           f"{message(exc)}") from None
            return self._conn

    def domain(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.conn().lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise reraise(exc, f"looking up domain {name}") from None

    def domains(self) -> list[libvirt.virDomain]:
        try:
            return self.conn().listAllDomains(0)
        except libvirt.libvirtError as exc:
            raise reraise(exc, "listing domains") from None

    def ping(self) -> bool:
        try:
            self.conn().getLibVersion()
            return True
        except (DriverError, libvirt.libvirtError):
            return False

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except libvirt.libvirtError:
                pass
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop()
