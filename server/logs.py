"""Structured logs: one JSON object per line, with the request id of the call being served.

Only ids, sizes, timings and statuses are ever logged; request text and image bytes are not
(the access log and every log call in the server follow that rule).
"""

from __future__ import annotations

import json
import logging
import time

from maira_sae.server.interceptors import current_request_id


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


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
