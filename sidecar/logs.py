"""Logging in logfmt (default) or JSON lines, one event per line, for log pipelines to parse."""

from __future__ import annotations

import json
import logging
import sys
import time

LEVELS = ("debug", "info", "warning", "error")


def kv(**fields: object) -> dict[str, dict[str, object]]:
    """Structured fields for one log call: ``log.info("cycle done", extra=kv(query=q))``."""
    return {"fields": fields}


def _ts(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _logfmt_value(value: str) -> str:
    if value and not any(c in value for c in ' "=\\\n') :
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=info logger=sidecar.scoring msg="..."``; exceptions go in ``error``."""

    def format(self, record: logging.LogRecord) -> str:
        parts = {
            "ts": _ts(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        parts.update(getattr(record, "fields", {}))
        if record.exc_info:
            parts["exception"] = self.formatException(record.exc_info)
        return " ".join(f"{k}={_logfmt_value(str(v))}" for k, v in parts.items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": _ts(record), "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        out.update({k: v if isinstance(v, (int, float, bool)) or v is None else str(v) for k, v in getattr(record, "fields", {}).items()})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Connection-pool chatter would drown the sidecar's own lines at debug level.
    logging.getLogger("urllib3").setLevel(max(logging.WARNING, root.level))
