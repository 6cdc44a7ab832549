"""Log configuration of both components: kserve's loggers, uvicorn's and ours, text or JSON.

Every record gets a `request_id` attribute (the id of the request being served, "-" outside
one; see `common.tracing`), so each line about a request names it. `--log_format json` writes
one JSON object per line through python-json-logger, kserve's and uvicorn's loggers included.

What an operator reads by default: one access line per request (`common.access_log`, turned
off by --no-access_log), nothing per probe or scrape (uvicorn's own access log is off), and no
traceback for an expected state: kserve logs every "not ready" answer and every bad input at
ERROR with a traceback; here a not-ready answer is one WARNING when the reason changes and a
bad input is the access line's 4xx. Tracebacks stay for real faults (a 500).
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any

from kserve.errors import (
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ServerNotLive,
    ServerNotReady,
    UnsupportedProtocol,
)
from kserve.logging import KSERVE_LOG_CONFIG, KSERVE_LOGGER_NAME, configure_logging

from .access_log import ACCESS_LOGGER, readiness
from .ids import current_request_id
from .throttled import Throttled

__all__ = ["Throttled", "configure", "logging_config"]

LOG_FORMATS = ("text", "json")
_TEXT = (
    "%(asctime)s.%(msecs)03d %(process)s %(name)s %(levelname)s "
    "[%(filename)s:%(funcName)s():%(lineno)s] request_id=%(request_id)s %(message)s"
)
_JSON_FIELDS = "%(asctime)s %(process)s %(name)s %(levelname)s %(request_id)s %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record that passes a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always passes the record, with its request id set."""
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or "-"
        return True


NOT_READY = (ServerNotReady, ModelNotReady, ServerNotLive)
CLIENT_ERRORS = (InvalidInput, ModelNotFound, UnsupportedProtocol)


class ExpectedStates(logging.Filter):
    """On kserve's logger: a not-ready record becomes one WARNING per change of reason, without
    its traceback; a client's error (its 4xx is on the access line) is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, CLIENT_ERRORS):
            return False
        if not isinstance(exc, NOT_READY):
            return True
        if not readiness.refused(str(exc)):
            return False
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "not ready: %s (answering 503 until it is; logged once, not per request)"
        record.args = (exc,)
        record.exc_info, record.exc_text = None, None
        return True


def logging_config(log_format: str) -> dict[str, Any]:
    """kserve's logging dictConfig with our formatter and the request-id filter on every handler,
    and a root handler so that our modules' loggers print too. Raises ValueError for an unknown
    format."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}, expected one of {LOG_FORMATS}")
    config = copy.deepcopy(KSERVE_LOG_CONFIG)
    if log_format == "json":
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": _JSON_FIELDS,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    else:
        formatter = {"()": "logging.Formatter", "fmt": _TEXT, "datefmt": "%Y-%m-%d %H:%M:%S"}
    # Every handler (kserve, kserve.trace, uvicorn, uvicorn.access) writes through one formatter.
    config["formatters"] = {"default": formatter}
    config["filters"] = {"request_id": {"()": RequestIdFilter}}
    for handler in config["handlers"].values():
        handler["formatter"] = "default"
        handler["filters"] = ["request_id"]
    config["root"] = {"handlers": ["kserve"], "level": "INFO"}
    # uvicorn's access line has no duration and comes for every probe: ours replaces it.
    config["loggers"]["uvicorn.access"] = {"handlers": [], "level": "WARNING", "propagate": False}
    config["loggers"][ACCESS_LOGGER] = {"handlers": ["kserve"], "level": "INFO", "propagate": False}
    return config


def configure(log_format: str) -> None:
    """Configure logging for this process (before kserve's ModelServer is built, which then
    leaves it alone)."""
    configure_logging(logging_config(log_format))
    logging.getLogger(KSERVE_LOGGER_NAME).addFilter(ExpectedStates())
    logging.captureWarnings(True)  # library warnings become log lines (JSON ones too)
    # kserve's V1 route returns FastAPI's ORJSONResponse, which FastAPI now deprecates: news to
    # kserve's maintainers, not to an operator.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
