"""Logging of the daemon: one line per event, structured fields, to stderr.

Operators grep and ship these lines, so every event is exactly one line (newlines inside
messages and tracebacks are escaped), with ``key=value`` fields in logfmt style by default or
one JSON object per line with ``--log-format json``. Verbosity: default INFO; ``-v`` DEBUG for
the daemon (the ``flanneld`` logger and its children); ``-vv`` DEBUG for the libraries too
(aetcd, grpc, pyroute2, anything else), which stay at WARNING otherwise.  Library levels alone
cannot keep that promise (pyroute2 resets its logger to NOTSET when it is imported, after this
set-up), so our handler also drops library records below WARNING unless ``-vv``.  Under
systemd (``$JOURNAL_STREAM`` set) the timestamp is left out: journald adds its own.

Events carry fields through ``extra={"fields": {...}}``; :func:`log_event` and
:class:`FieldsAdapter` are the short ways to write that::

    log_event(log, "lease acquired", subnet="10.244.1.0/24", ttl=86400)
    vlog = FieldsAdapter(log, backend="vxlan"); vlog.info("peer added", peer="10.244.2.0/24")
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, TextIO

LIBRARY_LOGGERS = ("aetcd", "grpc", "pyroute2", "asyncio", "urllib3")
DAEMON_LOGGER = "flanneld"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, Mapping) else {}


def _timestamp(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


def _logfmt_value(value: object) -> str:
    # Numbers, booleans and None as JSON (true, 3, null); anything else (addresses, subnets,
    # enums) by its str(), quoted below only when it needs it.
    text = json.dumps(value) if value is None or isinstance(value, bool | int | float) else str(value)
    if text and not any(c in text for c in ' "=\\\n\r\t') and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False)  # quoted, with \n \" escaped: still one line


class KeyValueFormatter(logging.Formatter):
    """``time=… level=info logger=flanneld.lease msg="lease acquired" subnet=10.244.1.0/24``."""

    def __init__(self, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        parts: list[str] = []
        if self.timestamps:
            parts.append(f"time={_timestamp(record)}")
        parts.append(f"level={record.levelname.lower()}")
        parts.append(f"logger={record.name}")
        parts.append(f"msg={_logfmt_value(record.getMessage())}")
        for key, value in _fields(record).items():
            parts.append(f"{key}={_logfmt_value(value)}")
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            parts.append(f"error={_logfmt_value(f'{type(exc).__name__}: {exc}')}")
            parts.append(f"traceback={_logfmt_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, then the event's fields."""

    def __init__(self, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {}
        if self.timestamps:
            out["time"] = _timestamp(record)
        out["level"] = record.levelname.lower()
        out["logger"] = record.name
        out["msg"] = record.getMessage()
        for key, value in _fields(record).items():
            out.setdefault(key, value)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            out["error"] = f"{type(exc).__name__}: {exc}"
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def level_for(verbosity: int) -> int:
    return logging.DEBUG if verbosity >= 1 else logging.INFO


class LibraryGate(logging.Filter):
    """Passes the daemon's records (``flanneld``, ``flanneld.*``) and anything at WARNING or
    above; other loggers' lower records only when ``libraries_debug`` (``-vv``)."""

    def __init__(self, libraries_debug: bool) -> None:
        super().__init__()
        self.libraries_debug = libraries_debug

    def filter(self, record: logging.LogRecord) -> bool:
        if self.libraries_debug or record.levelno >= logging.WARNING:
            return True
        name = record.name
        return name == DAEMON_LOGGER or name.startswith(DAEMON_LOGGER + ".")


def setup_logging(
    verbosity: int = 0,
    *,
    json_format: bool = False,
    stream: TextIO | None = None,
    timestamps: bool | None = None,
) -> logging.Handler:
    """Configure the root logger once for the daemon; returns the installed handler.

    ``verbosity`` is the count of ``-v`` flags. ``timestamps=None`` means: omit them under
    journald. Calling it again replaces the previous handler (tests, reconfiguration).
    """
    if timestamps is None:
        timestamps = "JOURNAL_STREAM" not in os.environ
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name("flanneld")
    handler.setFormatter(JsonFormatter(timestamps) if json_format else KeyValueFormatter(timestamps))
    handler.addFilter(LibraryGate(verbosity >= 2))
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "flanneld":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_for(verbosity))
    lib_level = logging.DEBUG if verbosity >= 2 else logging.WARNING
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(lib_level)
    logging.getLogger(DAEMON_LOGGER).setLevel(logging.DEBUG if verbosity >= 1 else logging.NOTSET)
    return handler


def warn_ignored_flags(ignored: Sequence[str], logger: logging.Logger | None = None) -> None:
    """The one start-up warning naming the flags accepted without effect (klog's, Go-only
    features not here yet): ``DaemonConfig.ignored_flags``; nothing when there are none."""
    if not ignored:
        return
    log_event(logger or logging.getLogger(DAEMON_LOGGER),
              "flags accepted but ignored: " + ", ".join(ignored),
              level=logging.WARNING, flags=",".join(entry.split(" ", 1)[0] for entry in ignored))


def log_event(
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    msg: str,
    *,
    level: int = logging.INFO,
    exc_info: bool = False,
    **fields: object,
) -> None:
    """Log one event with structured fields: ``log_event(log, "lease acquired", ttl=86400)``."""
    logger.log(level, msg, exc_info=exc_info, extra={"fields": fields})


class FieldsAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger with bound context fields; call-site keyword arguments become fields too.

    ``FieldsAdapter(log, backend="vxlan").info("peer added", peer="10.244.2.0/24")``.
    """

    def __init__(self, logger: logging.Logger, **context: object) -> None:
        super().__init__(logger, dict(context))

    def bind(self, **context: object) -> FieldsAdapter:
        return FieldsAdapter(self.logger, **{**dict(self.extra or {}), **context})

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        std = {"exc_info", "stack_info", "stacklevel", "extra"}
        fields = dict(self.extra or {})
        for key in [k for k in kwargs if k not in std]:
            fields[key] = kwargs.pop(key)
        extra = dict(kwargs.get("extra") or {})
        fields.update(extra.pop("fields", {}) if isinstance(extra.get("fields"), dict) else {})
        extra["fields"] = fields
        kwargs["extra"] = extra
        return msg, kwargs
