"""Structured logs: one JSON object per line, with the request id of the call being served.

Only ids, sizes, timings and statuses are ever logged; request text and image bytes are not
(the access log and every log call in the server follow that rule).
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import time
import warnings

from maira_sae.server.service.interceptors import current_request_id


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        message = record.getMessage()
        event = _json_object(message)
        if event is not None:
            entry.update(event)
        else:
            entry["message"] = message
        request_id = current_request_id()
        if request_id != "-" and "request_id" not in entry:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _json_object(message: str) -> dict[str, object] | None:
    if not message.startswith("{"):
        return None
    try:
        value = json.loads(message)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# Libraries whose DEBUG output is noise at best and, from grpc's finalizers, a lock fight with
# the serving threads at worst: they log at INFO and above whatever the server's level.
_QUIET_LIBRARIES = ("grpc", "PIL", "urllib3", "filelock", "huggingface_hub")


class CallerErrorsAtInfo(logging.Filter):
    """pydicom logs a file it cannot decode at ERROR, with a traceback. For the server that
    is the caller's bad input, already answered INVALID_ARGUMENT: INFO, no traceback."""

    LIBRARIES = ("pydicom",)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] not in self.LIBRARIES:
            return True
        if record.levelno > logging.INFO:
            record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return logging.getLogger().isEnabledFor(logging.INFO)


# Library warnings whose text may quote a request's content: pydicom's quote element values
# (names, dates, ids) of the caller's file. Their category and source are logged, not their text.
_WARNINGS_WITH_CONTENT = ("pydicom",)
warning_log = logging.getLogger("maira_sae.warnings")


def log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` for the server: one JSON log line (WARNING) instead of the
    library's bare text on stderr; a warning from a library that may quote request content is
    logged without its text."""
    source = _module_of(filename)
    event: dict[str, object] = {
        "event": "library_warning",
        "category": category.__name__,
        "source": source,
    }
    if source.split(".", 1)[0] not in _WARNINGS_WITH_CONTENT:
        event["detail"] = str(message)
    warning_log.warning(json.dumps(event))


def _module_of(filename: str) -> str:
    """``.../site-packages/pydicom/valuerep.py`` -> ``pydicom.valuerep`` (else the file name)."""
    parts = filename.replace("\\", "/").split("/")
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            module = parts[parts.index(anchor) + 1 :]
            return ".".join(module).removesuffix(".py")
    return parts[-1].removesuffix(".py")


def configure_logging(level: str) -> logging.handlers.QueueListener:
    """JSON lines on stderr. Records are formatted in the thread that logs them (so they keep
    its request id) and written by one listener thread, so no serving thread ever blocks on
    stderr or on another thread's handler lock. Library warnings become log lines too
    (``log_warning``). Returns the started listener."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    enqueue = logging.handlers.QueueHandler(records)
    enqueue.setFormatter(JsonFormatter())
    enqueue.addFilter(CallerErrorsAtInfo())
    write = logging.StreamHandler()
    write.setFormatter(logging.Formatter("%(message)s"))
    listener = logging.handlers.QueueListener(records, write)
    listener.start()
    atexit.register(listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [enqueue]
    root.setLevel(level)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
    warnings.showwarning = log_warning
    return listener
