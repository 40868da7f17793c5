"""How every command starts: its configuration, the service user, its log, and how it says it cannot run.

The worker, the dispatcher, cleanup, reposync, the debuginfod runner and
retrace-server-interact all read the same configuration file (``--config``,
else ``$RETRACE_SERVER_CONFIG_PATH``, else the default), become the
service user when started as root (``--user``) and log what they do for
the administrator the same way (``LogTo``).  A configuration a command
cannot run with, or a service user that does not exist, is one line on
standard error, ``PROG: sentence``, and exit status ``EXIT_CONFIG`` (2)
from every command; other refusals end with their own ``exit_code``.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable, Protocol

from retrace_server.adminlog import admin_handler
from retrace_server.config import Config, config_path, load_config
from retrace_server.errors import ConfigError, RetraceError
from retrace_server.privileges import run_as_service_user

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

# The exit status of every command whose configuration (or service user) stops it.
EXIT_CONFIG = ConfigError.exit_code



class Main(Protocol):
    """A command's ``main``: its arguments (None: the process's), its exit status."""

    def __call__(self, argv: Sequence[str] | None = None) -> int: ...


def command(prog: str) -> Callable[[Main], Main]:
    """Wrap a command's ``main(argv)``: a RetraceError that escapes it is ``prog: sentence`` on standard error
    and its exit_code, never a traceback."""

    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None) -> int:
            try:
                return main(argv)
            except RetraceError as err:
                print(f"{prog}: {err.sentence}", file=sys.stderr)
                return err.exit_code

        return run

    return wrap


def load(args: argparse.Namespace, switch_user: bool = True) -> tuple[Config, Path]:
    """``(the config, its path)``; started as root, the process is the service user (``--user``) from here on.

    ConfigError (exit status EXIT_CONFIG) for a file that is missing or
    wrong, or a service user that does not exist.
    """
    path = config_path(os.environ, getattr(args, "config", None))
    config = load_config(path)
    if switch_user:
        run_as_service_user(getattr(args, "user", None) or "retrace")
    return config, path


def log_for_admin(config: Config, service: str, file_format: str, logger: str = "retrace",
                  level: int = logging.INFO) -> logging.Logger:
    """``logger`` writing to the service's admin log (``LogDir/<service>.log``, or syslog with LogTo)."""
    log = logging.getLogger(logger)
    log.addHandler(admin_handler(config, service, file_format))
    log.setLevel(level)
    return log
