"""Where the services' own logs go: files in LogDir, or syslog (``LogTo``).

These are the administrator's logs (what a worker, the dispatcher or cleanup
did and why); the task logs users read stay in their tasks whatever LogTo
says.  With ``LogTo = syslog`` each service writes to the local syslog
socket (``SyslogSocket``, /dev/log: rsyslog's or journald's) as
``retrace-server-<service>[pid]``, facility daemon, so that ``journalctl -t
retrace-server-worker`` or a syslog filter finds it and the system's own
rotation and retention apply.
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import socket
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import os

    from retrace_server.config import Config

SYSLOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def syslog_handler(config: Config, service: str) -> logging.Handler:
    """A handler for ``retrace-server-<service>`` on the syslog socket; stderr with a warning when the
    socket cannot be reached (a service must not die because syslog is down)."""
    try:
        _reachable(config.SyslogSocket)
    except OSError as err:
        print(f"retrace-server-{service}: LogTo = syslog, but {config.SyslogSocket} cannot be reached "
              f"({err.strerror}); logging to standard error", file=sys.stderr)
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter(f"retrace-server-{service}: {SYSLOG_FORMAT}"))
        return console
    handler = logging.handlers.SysLogHandler(address=str(config.SyslogSocket),
                                             facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    # The tag syslog files the message under, with the process: the dispatcher's forked workers log as themselves.
    handler.setFormatter(logging.Formatter(f"retrace-server-{service}[%(process)d]: {SYSLOG_FORMAT}"))
    return handler


def _reachable(path: str | os.PathLike[str]) -> None:
    """OSError unless a syslog daemon listens on ``path`` (SysLogHandler itself would only fail at each message,
    from Python 3.11 on)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError as err:
                if err.errno != errno.EPROTOTYPE or kind == socket.SOCK_STREAM:
                    raise


def admin_handler(config: Config, service: str, file_format: str) -> logging.Handler:
    """``LogDir/<service>.log`` in ``file_format``, or syslog; stderr when the file cannot be opened."""
    if config.LogTo == "syslog":
        return syslog_handler(config, service)
    handler: logging.Handler
    try:
        handler = logging.FileHandler(config.LogDir / f"{service}.log", encoding="utf-8")
    except OSError as err:
        print(f"retrace-server-{service}: cannot write {config.LogDir / f'{service}.log'} ({err.strerror}); "
              "logging to standard error", file=sys.stderr)
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(file_format))
    return handler
