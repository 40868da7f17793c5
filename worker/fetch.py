"""A manager task's first stages: fetch its crash data from where it lies, and turn it into ``crash/``.

Upstream's statuses ("Downloading remote resources", "Post-processing
downloaded file") are set here; progress goes to the task log every 30 s
and to the ``progress`` file the manager shows beside the status.  The
download lands in the task directory itself, so a vmcore is moved into
``crash/`` and never copied twice.
"""
from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

from retrace_server import intake
from retrace_server.files import write_atomically
from retrace_server.intake import remote, storage
from retrace_server.tasks.task import CUSTOM_FILES, MD5_NAME, MD5_REQUESTED, REMOTE_NAME, TaskStatus

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

    from retrace_server.tasks.task import Task
    from retrace_server.worker.job import Job

DOWNLOAD_NAME = "download.part"
_MIB = 1024 * 1024


def needs_fetch(task: Task) -> bool:
    return (task.path / REMOTE_NAME).is_file() and not any(
        (task.crash_dir / name).is_file() for name in ("coredump", "vmcore"))


def _progress_reporter(task: Task, log: logging.Logger) -> Callable[[int, int | None], None]:
    def report(done: int, total: int | None) -> None:
        if total:
            percent = f"{100 * done // total}%"
            log.info("Downloaded %d MiB of %d MiB (%s)", done // _MIB, total // _MIB, percent)
        else:
            percent = f"{done // _MIB} MiB"
            log.info("Downloaded %d MiB", done // _MIB)
        write_atomically(task.path / remote.PROGRESS_FILE, percent)
    return report


def fetch_remote(job: Job[Any]) -> None:
    """Download the task's source and unpack it into ``crash/`` (the two stages before ANALYZE)."""
    task, config, log = job.task, job.config, job.log
    text = task.read_text(REMOTE_NAME, 8192) or ""
    source = remote.Source.from_line(text.splitlines()[0] if text.strip() else "")
    is_vmcore = task.task_type.is_vmcore
    cap = config.unpacked_cap_bytes(is_vmcore)
    target = task.path / DOWNLOAD_NAME
    target.unlink(missing_ok=True)
    digest = hashlib.md5(usedforsecurity=False) if (task.path / MD5_REQUESTED).is_file() else None
    try:
        with job.stage(TaskStatus.DOWNLOADING):
            log.info("Downloading %s", source.shown)
            size = remote.fetch(source, target, config, cap, _progress_reporter(task, log), digest)
            log.info("Downloaded %s: %d bytes", source.name, size)
            (task.path / remote.PROGRESS_FILE).unlink(missing_ok=True)
        with job.stage(TaskStatus.POSTPROCESS):
            storage.ensure_free(config.SaveDir, 0, config.min_storage_left_bytes)
            task.crash_dir.mkdir(mode=0o750, exist_ok=True)
            custom = {name: value for custom, name in CUSTOM_FILES.items() if (value := task.read_text(custom, 4096))}
            try:
                sizes = intake.receive(config, task.task_type, task.crash_dir,
                                       lambda nbytes: storage.ensure_free(config.SaveDir, nbytes,
                                                                          config.min_storage_left_bytes),
                                       file=target, custom=custom)
            except BaseException:
                _clear_crash_data(task)
                raise
            log.info("Crash data: %s", ", ".join(f"{name} ({size} bytes)" for name, size in sorted(sizes.items())))
            if digest is not None:
                write_atomically(task.path / MD5_NAME, f"{digest.hexdigest()}  {source.name}\n")
                log.info("md5sum of %s: %s", source.name, digest.hexdigest())
    finally:
        target.unlink(missing_ok=True)
        (task.path / remote.PROGRESS_FILE).unlink(missing_ok=True)


def _clear_crash_data(task: Task) -> None:
    """Half-made crash data would make a restart skip the download: start over instead."""
    for entry in os.scandir(task.crash_dir):
        os.unlink(entry.path)
