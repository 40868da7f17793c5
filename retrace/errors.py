"""The one exception tree of retrace-server.

Every failure a user can cause or meet carries the sentence they will read,
the HTTP status the web layer answers with and the exit code a command-line
tool ends with, so that each edge translates errors in exactly one place
(the pattern of mock's ``mockbuild/exception.py``).  Sentences never contain
server paths: they travel to untrusted clients.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from types import ModuleType


class RetraceError(Exception):
    """Base of all expected failures; ``str(err)`` is the user's sentence."""

    http_status = 500
    exit_code = 1
    # The failure reason category a failed task is counted under in the statistics.
    category = "other"
    # Seconds a client is asked to wait before trying again (Retry-After), where that helps.
    retry_after = None

    def __init__(self, sentence: str, category: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(sentence)
        self.sentence = sentence
        if category is not None:
            self.category = category
        if retry_after is not None:
            self.retry_after = retry_after


class ConfigError(RetraceError):
    """The configuration file is missing, unreadable or holds a bad value."""

    exit_code = 2


class MissingSystemModule(RetraceError):
    """A Python module that only the distribution ships (no wheel on PyPI) is not importable."""

    exit_code = 2
    category = "configuration"


# Python modules the server imports only where it needs them, with the distribution packages that ship them
# (Debian, Fedora): pip cannot install them, so `pip install .[server]` in a venv without
# --system-site-packages lacks them, and every command still starts, answers --help and names them.
SYSTEM_MODULES = {
    "rpm": ("python3-rpm", "python3-rpm"),
    "librepo": ("python3-librepo", "python3-librepo"),
    "seccomp": ("python3-seccomp", "python3-libseccomp"),
    "magic": ("python3-magic", "python3-magic"),
}


def system_module(name: str) -> ModuleType:
    """The module ``name`` of ``SYSTEM_MODULES``, or MissingSystemModule naming the packages to install."""
    try:
        return importlib.import_module(name)
    except ImportError as err:  # python-magic raises ImportError itself when libmagic is missing
        debian, fedora = SYSTEM_MODULES[name]
        raise MissingSystemModule(
            f"the Python module '{name}' cannot be imported ({err}): install it from the distribution "
            f"(Debian/Ubuntu: {debian}, Fedora/RHEL: {fedora}); in a venv, create it with "
            "--system-site-packages", "configuration") from None


class BadRequest(RetraceError):
    """The request itself is malformed (headers, body framing)."""

    http_status = 400


class InvalidCrashData(RetraceError):
    """A file in the uploaded archive has content we refuse to process."""

    http_status = 400
    category = "bad core"


class Forbidden(RetraceError):
    """Refused by policy: HTTPS required, feature disabled, bad password."""

    http_status = 403


class MaliciousArchive(RetraceError):
    """The archive holds a member that could escape or confuse the spool.

    403 is what upstream answered for symlinks and unknown names; the ABRT
    client shows any 403 on /create as "the archive contains malicious
    files", which is exactly right for this class.
    """

    http_status = 403


class MissingCrashFile(RetraceError):
    """A file the task type requires is absent (403, as upstream)."""

    http_status = 403


class NotFound(RetraceError):
    """Unknown URL, task or result."""

    http_status = 404


class MethodNotAllowed(RetraceError):
    http_status = 405

    def __init__(self, sentence: str, allowed: Iterable[str]) -> None:
        super().__init__(sentence)
        self.allowed = tuple(allowed)


class Conflict(RetraceError):
    """The request is valid but clashes with the task's or server's state."""

    http_status = 409


class LengthRequired(RetraceError):
    http_status = 411


class UploadTooLarge(RetraceError):
    """Packed or unpacked size over the configured limits."""

    http_status = 413


class UnsupportedArchive(RetraceError):
    """Declared Content-Type unknown, or not what the bytes are."""

    http_status = 415


class TooManyUploads(RetraceError):
    """One client already has as many uploads in flight as it may (MaxUploadsPerClient)."""

    http_status = 429


class QueueFull(RetraceError):
    """Every worker slot and every queue place is taken."""

    http_status = 503


class TemporarilyUnavailable(RetraceError):
    """A part of the server cannot answer right now (a full disk, a locked database); try again later."""

    http_status = 503


class NotEnoughStorage(RetraceError):
    """Accepting the upload would leave less than MinStorageLeft free, or a disk filled up."""

    http_status = 507
    category = "disk full"


@contextlib.contextmanager
def disk_full_explained(sentence: str) -> Iterator[None]:
    """A full disk (ENOSPC, EDQUOT, SQLite's SQLITE_FULL) becomes NotEnoughStorage with ``sentence``, not a crash.

    Free-space checks cannot see uploads, tasks and syncs writing at the same
    moment; when those win the race the user still reads why, and gets a 507
    or a task failed for a reason instead of a 500 or an "internal error".
    """
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NotEnoughStorage(sentence) from None
        raise
    except sqlite3.Error as err:
        if getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            raise NotEnoughStorage(sentence) from None
        raise
