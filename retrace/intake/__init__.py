"""Intake: what arrives, checked while it streams, and turned into a task's crash data in one place.

An ABRT upload's body (``/create``), a file the manager's browser sent and
a file a worker fetched from a URL, a path or the FTP drop all end the
same way: ``receive`` writes the task's ``crash/`` under ``limits_for`` the
task's type, fills in what the manager's form said of a bare core, and
checks that the crash data is complete and well formed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO, Callable

from retrace_server.files import write_atomically
from retrace_server.intake import archive, crashdata, imported

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from retrace_server.config import Config
    from retrace_server.tasks.task import TaskType

# An upload's body: the stream, its Content-Length and the archive format it was declared as.
Body = tuple[BinaryIO, int, archive.ArchiveFormat]


def limits_for(config: Config, task_type: TaskType, reserve: Callable[[int], None],
               started: Callable[[str, int], None] | None = None) -> archive.Limits:
    """What one task's crash data may be: its type's unpacked cap, the crash files' names and caps, their
    first bytes' checks, what a decoder may hold; ``reserve(nbytes)`` claims disk for the next file,
    ``started(name, size)`` hears that a file's first bytes are on disk."""
    return archive.Limits(config.unpacked_cap_bytes(task_type.is_vmcore), crashdata.size_caps(), reserve,
                          crashdata.HEAD_CHECKS, config.decoder_memory_bytes, started)


def receive(config: Config, task_type: TaskType, crash_dir: Path, reserve: Callable[[int], None], *,
            body: Body | None = None, file: Path | None = None, custom: Mapping[str, str] | None = None,
            digests: dict[str, str] | None = None, started: Callable[[str, int], None] | None = None
            ) -> dict[str, int]:
    """Write ``crash_dir`` from an upload's ``body`` (a tar, read as it streams) or a ``file`` on this host
    (a dump, a compressed dump or a tar, told by its bytes); returns ``{file name: size}``.

    ``custom`` (crash file name -> text) is what the manager's form said of
    a bare core, for the files the data did not bring; ``digests`` get the
    md5 of the names they hold while those stream in; ``started(name, size)``
    hears each file of a body begin (``limits_for``).  Refusals are
    RetraceErrors with the user's sentence; the caller removes what was
    written.
    """
    limits = limits_for(config, task_type, reserve, started)
    if body is not None:
        stream, length, declared = body
        sizes = archive.receive_archive(stream, length, declared, crash_dir, limits, digests,
                                        config.min_upload_rate_bytes)
    elif file is not None:
        sizes = imported.materialize(file, crash_dir, limits, task_type.is_vmcore)
    else:
        raise ValueError("receive needs a body or a file")
    for name, value in (custom or {}).items():
        if name not in sizes and not task_type.is_vmcore:
            write_atomically(crash_dir / name, value)
            sizes[name] = len(value)
    archive.require_files(sizes, crashdata.required_files(task_type, sizes))
    crashdata.validate_crash_dir(crash_dir, sizes)
    return sizes
