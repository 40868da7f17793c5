"""A manager task's first stages: fetch its crash data from where it lies, and turn it into ``crash/``.

Upstream's statuses ("Downloading remote resources", "Post-processing
downloaded file") are set here; progress goes to the task log every 30 s
and to the ``progress`` file the manager shows beside the status.  The
download lands in the task directory itself, so a vmcore is moved into
``crash/`` and never copied twice.
"""

import hashlib
import os

from retrace_server.intake import archive, crashdata, imported, remote, storage
from retrace_server.tasks.task import MD5_NAME, REMOTE_NAME, TaskStatus, write_atomically

DOWNLOAD_NAME = "download.part"
# Asked for by the manager's "Calculate md5" box; the result goes to MD5_NAME as for uploads.
MD5_REQUESTED = "md5sum_requested"
# What the manager's form said of a bare coredump (upstream's names), copied into crash/ when the
# download did not bring its own.
CUSTOM_FILES = {"custom_package": "package", "custom_executable": "executable", "custom_os_release": "os_release"}
_MIB = 1024 * 1024


def needs_fetch(task):
    return (task.path / REMOTE_NAME).is_file() and not any(
        (task.crash_dir / name).is_file() for name in ("coredump", "vmcore"))


def _progress_reporter(task, log):
    def report(done, total):
        if total:
            percent = f"{100 * done // total}%"
            log.info("Downloaded %d MiB of %d MiB (%s)", done // _MIB, total // _MIB, percent)
        else:
            percent = f"{done // _MIB} MiB"
            log.info("Downloaded %d MiB", done // _MIB)
        write_atomically(task.path / remote.PROGRESS_FILE, percent)
    return report


def fetch_remote(job):
    """Download the task's source and unpack it into ``crash/`` (the two stages before ANALYZE)."""
    task, config, log = job.task, job.config, job.log
    text = task.read_text(REMOTE_NAME, 8192) or ""
    source = remote.Source.from_line(text.splitlines()[0] if text.strip() else "")
    is_vmcore = task.task_type.is_vmcore
    cap = config.max_vmcore_unpacked_bytes if is_vmcore else config.max_unpacked_bytes
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
            limits = archive.Limits(cap, crashdata.size_caps(),
                                    lambda nbytes: storage.ensure_free(config.SaveDir, nbytes,
                                                                       config.min_storage_left_bytes),
                                    crashdata.HEAD_CHECKS, config.decoder_memory_bytes)
            task.crash_dir.mkdir(mode=0o750, exist_ok=True)
            try:
                sizes = _materialize(task, target, limits, is_vmcore)
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


def _materialize(task, target, limits, is_vmcore):
    sizes = imported.materialize(target, task.crash_dir, limits, is_vmcore)
    for custom, name in CUSTOM_FILES.items():
        value = task.read_text(custom, 4096)
        if value and name not in sizes and not is_vmcore:
            write_atomically(task.crash_dir / name, value)
            sizes[name] = len(value)
    archive.require_files(sizes, crashdata.REQUIRED_FILES[task.task_type])
    crashdata.validate_crash_dir(task.crash_dir, sizes)
    return sizes


def _clear_crash_data(task):
    """Half-made crash data would make a restart skip the download: start over instead."""
    for entry in os.scandir(task.crash_dir):
        os.unlink(entry.path)
