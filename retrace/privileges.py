"""Admin commands started as root do their work as the service user.

Everything in SaveDir, RepoDir and CacheDir belongs to the user Apache's
daemon processes and the workers run as; a file written there by root
would be unreadable to them (a 500 for the next status request).  So
cleanup, reposync and a hand-started worker switch users first, as
upstream's tools did.
"""

from __future__ import annotations

import os
import pwd
from typing import TYPE_CHECKING

from retrace_server.config import CONFIG_PATH_VARIABLE, DEFAULT_CONFIG_PATH
from retrace_server.errors import ConfigError

if TYPE_CHECKING:
    import argparse

DEFAULT_USER = "retrace"
CONFIG_HELP = f"configuration file (default: ${CONFIG_PATH_VARIABLE} or {DEFAULT_CONFIG_PATH})"


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--user``, the same in every admin command."""
    parser.add_argument("--config", help=CONFIG_HELP)
    parser.add_argument("--user", default=DEFAULT_USER,
                        help=f"when started as root, run as this user (default {DEFAULT_USER})")


class PrivilegeError(ConfigError):
    """The service user does not exist or cannot be switched to (a configuration error: exit status 2)."""


def run_as_service_user(user_name: str = DEFAULT_USER) -> None:
    """Become ``user_name`` when running as root (``root`` keeps root); no-op otherwise."""
    if os.geteuid() != 0 or user_name == "root":
        return
    try:
        user = pwd.getpwnam(user_name)
    except KeyError:
        raise PrivilegeError(f"the service user {user_name} does not exist (give --user)") from None
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    os.environ["HOME"] = user.pw_dir


def append_stderr_to(path: str | os.PathLike[str]) -> None:
    """Send this process's standard error to the end of ``path``, opened by this (unprivileged) process.

    Log directories belong to the service user; a log opened there by root
    would follow a symlink planted in its place, so each service opens its
    own log after the switch, never through a symlink.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    os.dup2(fd, 2)
    os.close(fd)
