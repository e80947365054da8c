"""Every driver call timed and its errors counted, by driver and call, for /metrics.

`Runtime.driver_for` hands out drivers wrapped in this; callers see the same contract
(drivers/base.py), so the lifecycle worker, the reconciler and the logs/events routes are
measured without each of them timing its own calls.
"""

from __future__ import annotations

import time
from typing import Any

from gpucloud import metrics

CALLS = frozenset({"create", "status", "update", "delete", "logs", "events", "list_owned"})
# What a feed calls instead of `logs`/`events` when it read the driver's row itself
# (`Driver.feed_row`): counted as those calls.
_AS_CALL = {"logs_from": "logs", "events_from": "events"}
# (driver, call) → its histogram and counter: `labels()` takes a lock and converts its
# arguments on every call, and the polled feeds ask a driver on every request. Bounded by the
# drivers × CALLS.
_series: dict[tuple[str, str], tuple] = {}


class Instrumented:
    def __init__(self, driver: Any, name: str):
        self._driver = driver
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._driver, attr)
        call = _AS_CALL.get(attr, attr)
        if call not in CALLS:
            return value
        series = _series.get((self._name, call))
        if series is None:
            series = _series[(self._name, call)] = (
                metrics.DRIVER_SECONDS.labels(self._name, call),
                metrics.DRIVER_ERRORS.labels(self._name, call))
        seconds, errors = series

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return value(*args, **kwargs)
            except Exception:
                errors.inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - started)

        # Kept on the wrapper, so the next call finds it without `__getattr__` making a new
        # closure (a polled feed asks its driver on every request). The wrapped driver's
        # methods do not change under it: one driver object per provider config.
        self.__dict__[attr] = timed
        return timed
