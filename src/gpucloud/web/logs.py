"""Process logging: JSON lines or human-readable text, every line with its request id.

`GPUCLOUD_LOG_FORMAT`: `json` (one object per line, for log shippers), `text`, or `auto`
(the default: text on a terminal, JSON otherwise). uvicorn's own loggers go through the same
handler (`serve` passes `log_config=None`).
"""

from __future__ import annotations

import io
import logging
import sys
import threading
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
    # Every request logs a line, and `time.strftime` was half of this formatter's cost: the
    # date and time of the current second are formatted once (one tuple, so a thread never
    # pairs one second with another's text).
    _second: tuple[int, str] = (-1, "")

    def _ts(self, created: float) -> str:
        second, text = self._second
        if int(created) != second:
            second = int(created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int(created % 1 * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        return self._line(record.created, record.levelname.lower(), record.name,
                          record.getMessage(), getattr(record, "request_id", None),
                          getattr(record, "access", None),
                          self.formatException(record.exc_info) if record.exc_info else None)

    def access_line(self, logger: str, created: float, request_id: str | None,
                    access: dict) -> str:
        """What `format` gives for the access log's record (`AccessLog.write`), without the
        record."""
        return self._line(created, "info", logger,
                          f"{access['method']} {access['route']} {access['status']}",
                          request_id, access, None)

    def _line(self, created: float, level: str, logger: str, msg: str,
              request_id: str | None, access: dict | None, exc: str | None) -> str:
        out = {"ts": self._ts(created), "level": level, "logger": logger, "msg": msg,
               "request_id": request_id}
        if access:
            out.update(access)
        if exc:
            out["exc"] = exc
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


class BufferedHandler(logging.StreamHandler):
    """A stream handler that does not flush after every record.

    Every request writes an access-log line; flushing each one is a write system call, and
    the call releases the interpreter lock, which the event loop then waits to get back from
    the threadpool. Here lines collect in a 64 KiB buffer written when it fills, by a
    background thread every `interval` seconds, at once for warnings and errors, and at exit
    (`logging.shutdown`). A line reaches the stream at most `interval` seconds late."""

    def __init__(self, stream, interval: float = 0.2):
        super().__init__(stream)
        self.interval = interval
        self._stop = threading.Event()
        threading.Thread(target=self._flusher, name="gpucloud-log-flush", daemon=True).start()

    def _flusher(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self._stop.set()
        super().close()


class AccessLog:
    """The access log's one line per request, on the `gpucloud.access` logger.

    Through `logging` a line cost 10–15 µs of the server's CPU per request (a record, two
    filters, three loggers' handler lists, the formatter), a third of a cached plans response;
    writing the same JSON line costs ~1 µs (docs/api-speed.md). So when the line would reach
    exactly one handler, the JSON one `configure` installs, with nothing on the way that could
    change or drop it, it is written to that handler directly, the same bytes under the same
    lock. Any other arrangement (text format, a handler or filter added by an embedding
    program or a test) gets the record through `logging` as before."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def write(self, request_id: str | None, access: dict) -> None:
        handler = self._sole_json_handler()
        if handler is None:
            self.logger.info("%s %s %s", access["method"], access["route"], access["status"],
                             extra={"access": access})
            return
        line = handler.formatter.access_line(self.logger.name, time.time(), request_id, access)
        handler.acquire()
        try:
            handler.stream.write(line + handler.terminator)
        except Exception:
            handler.handleError(logging.makeLogRecord({"msg": line}))
        finally:
            handler.release()

    def _sole_json_handler(self) -> BufferedHandler | None:
        found = None
        logger = self.logger
        if logger.filters:
            return None
        while logger is not None:
            for handler in logger.handlers:
                if found is not None or handler.get_name() != _HANDLER_NAME:
                    return None
                found = handler
            logger = logger.parent if logger.propagate else None
        if found is None or found.level > logging.INFO or len(found.filters) != 1 \
                or not isinstance(found, BufferedHandler) \
                or not isinstance(found.filters[0], RequestIdFilter) \
                or type(found.formatter) is not JsonFormatter:
            return None
        return found


def _handler() -> logging.Handler:
    """Buffered on the process's own stderr file; a stand-in stream (a test's capture) is
    written through as before."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return logging.StreamHandler(sys.stderr)
    sys.stderr.flush()
    stream = io.TextIOWrapper(io.BufferedWriter(io.FileIO(fd, "w", closefd=False), 1 << 16),
                              encoding="utf-8", errors="backslashreplace")
    return BufferedHandler(stream)


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
            handler.flush()
            handler.close()
    handler = _handler()
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if use_json(fmt) else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("gpucloud.access").setLevel(logging.INFO if access_log else logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
