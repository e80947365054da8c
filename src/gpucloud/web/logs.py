"""Process logging: JSON lines or human-readable text, every line with its request id.

`GPUCLOUD_LOG_FORMAT`: `json` (one object per line, for log shippers), `text`, or `auto`
(the default: text on a terminal, JSON otherwise). uvicorn's own loggers go through the same
handler (`serve` passes `log_config=None`).
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

from gpucloud.request_context import request_id

_HANDLER_NAME = "gpucloud"


class RequestIdFilter(logging.Filter):
    """Stamps every record with the id of the request being served (None outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        created = record.created
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
            + f".{int(created % 1 * 1000):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        access = getattr(record, "access", None)
        if access:
            out.update(access)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        access = getattr(record, "access", None)
        if access:
            line += f" {access['duration_ms']}ms account={access['account_id']}"
        return line


def use_json(fmt: str, stream=None) -> bool:
    if fmt == "auto":
        stream = stream or sys.stderr
        return not (hasattr(stream, "isatty") and stream.isatty())
    return fmt == "json"


def configure(level: str = "info", fmt: str = "auto", access_log: bool = True) -> None:
    """Install one stderr handler on the root logger (again: replaces the previous one)."""
    # Every request logs a line: skip what no formatter here shows (the caller's file and
    # line, found by walking the stack; thread and process names). The logging docs list
    # these switches for exactly this.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if use_json(fmt) else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("gpucloud.access").setLevel(logging.INFO if access_log else logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
