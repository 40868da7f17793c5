"""Disk space for uploads in flight: one ledger, so that concurrent uploads do not each count the same free bytes.

Every upload checks, before it writes a file, that the free space less
``MinStorageLeft`` holds that file.  Checked alone, ten concurrent vmcore
uploads each see the same free space and together overcommit the disk ten
times.  So each live upload records in its ``.incoming/`` directory the
bytes it has announced and not yet written (``.reserved``), and a check
subtracts what the other live uploads have reserved, under one lock.  An
upload whose process died stops counting as soon as its directory is swept
(``retrace_server.tasks.task.count_live_uploads``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from retrace_server import locking
from retrace_server.errors import NotEnoughStorage
from retrace_server.tasks.task import INCOMING_DIR, RESERVED_NAME, is_live_upload

if TYPE_CHECKING:
    from retrace_server.paths import StrPath

_LOCK_NAME = ".storage.lock"
NO_STORAGE = "There is not enough storage space on the server"


def free_bytes(path: StrPath) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def _reserved(upload_dir: Path) -> int:
    try:
        return int((upload_dir / RESERVED_NAME).read_text() or 0)
    except (OSError, ValueError):
        return 0


def reserved_by_others(save_dir: StrPath, own: Path | None = None) -> int:
    """Bytes the live uploads other than ``own`` have announced and not yet written."""
    incoming = Path(save_dir) / INCOMING_DIR
    try:
        entries = [Path(entry.path) for entry in os.scandir(incoming) if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return 0
    return sum(_reserved(path) for path in entries if path != own and is_live_upload(path))


def ensure_free(save_dir: StrPath, incoming_bytes: int, min_left_bytes: int, own: Path | None = None) -> None:
    """NotEnoughStorage unless ``incoming_bytes`` fit beside every other upload's reservation."""
    if free_bytes(save_dir) - reserved_by_others(save_dir, own) - incoming_bytes < min_left_bytes:
        raise NotEnoughStorage(NO_STORAGE)


def reserve(save_dir: StrPath, upload_dir: StrPath, nbytes: int, min_left_bytes: int) -> None:
    """Claim ``nbytes`` for the file ``upload_dir`` writes next (0: it has written it).

    NotEnoughStorage when they do not fit beside the other uploads' claims.
    """
    with locking.exclusive(Path(save_dir) / _LOCK_NAME):
        if nbytes:
            ensure_free(save_dir, nbytes, min_left_bytes, own=Path(upload_dir))
        (Path(upload_dir) / RESERVED_NAME).write_text(str(nbytes))
