"""GET /metrics: Prometheus text format, operator-only (X-ADMIN-KEY).

Counters and histograms are recorded as things happen; the figures that describe the database
(instances by state, worker queue lag) are read when scraped, so every process reports the
same. With several processes the multiprocess collector merges their files.
"""

from __future__ import annotations

import os

from fastapi import Request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from starlette.responses import Response

from gpucloud import metrics
from gpucloud.instances import service as instances

# Every (state, workload) ever reported: one that has no instances any more is set to 0
# rather than dropped (a multiprocess file keeps the last value of a dropped label).
_seen: set[tuple[str, str]] = set()


def _refresh_gauges(rt) -> None:
    with rt.db.query() as conn:
        counts = instances.count_by_state(conn)
        lag = instances.queue_lag_seconds(conn, rt.clock.now())
    _seen.update(counts)
    for labels in sorted(_seen):
        metrics.INSTANCES.labels(*labels).set(counts.get(labels, 0))
    metrics.QUEUE_LAG.set(lag)


def _registry():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def metrics_endpoint(request: Request) -> Response:
    """Sync: FastAPI runs it in the threadpool (it reads the database)."""
    _refresh_gauges(request.app.state.rt)
    return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)
