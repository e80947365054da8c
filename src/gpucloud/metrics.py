"""The process's Prometheus metrics, defined once (served at /metrics by `web/`).

A leaf module: domains, drivers and workers record into these without importing anything above
them. With several server processes (`gpucloud serve --workers N`) prometheus-client's
multiprocess mode aggregates them (PROMETHEUS_MULTIPROC_DIR, set by `serve`); the gauges
computed from the database at scrape time report the value of the latest scrape, whichever
live process answered it ("livemostrecent": an older, higher count of another process must
not win).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Request latencies on a 2-core machine run from ~0.1 ms (cached plans) to seconds (a deploy
# queued behind an hour boundary on SQLite).
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

REQUESTS = Counter("gpucloud_http_requests_total", "HTTP requests answered",
                   ["method", "route", "status"])
REQUEST_SECONDS = Histogram("gpucloud_http_request_duration_seconds",
                            "Time from the request reaching the app to its last byte",
                            ["method", "route", "status"], buckets=_LATENCY_BUCKETS)

INSTANCES = Gauge("gpucloud_instances", "Instances by public status and workload (at scrape)",
                  ["state", "workload"], multiprocess_mode="livemostrecent")
QUEUE_LAG = Gauge("gpucloud_worker_queue_lag_seconds",
                  "How far behind the server clock the oldest due background step is "
                  "(0 when nothing is due; at scrape)", multiprocess_mode="livemostrecent")

DRIVER_SECONDS = Histogram("gpucloud_driver_call_duration_seconds",
                           "Driver calls (create, status, update, delete, logs, events, …)",
                           ["driver", "call"], buckets=_LATENCY_BUCKETS)
DRIVER_ERRORS = Counter("gpucloud_driver_call_errors_total", "Driver calls that raised",
                        ["driver", "call"])

BOUNDARY_SECONDS = Histogram("gpucloud_billing_boundary_duration_seconds",
                             "One pass over the hour boundaries due (when any was)",
                             buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
INSTANCES_CHARGED = Counter("gpucloud_billing_instances_charged_total",
                            "Instance-hours processed at hour boundaries")

AUDIT_OK = Gauge("gpucloud_ledger_audit_ok", "1 if the last ledger audit passed, 0 if not",
                 multiprocess_mode="mostrecent")
AUDIT_FAILURES = Gauge("gpucloud_ledger_audit_failures", "Failures per check of the last audit",
                       ["check"], multiprocess_mode="mostrecent")

API_KEY_CACHE = Counter("gpucloud_api_key_cache_total",
                        "API key checks answered from memory (hit) or the database (miss)",
                        ["result"])
API_KEY_HIT = API_KEY_CACHE.labels("hit")
API_KEY_MISS = API_KEY_CACHE.labels("miss")
