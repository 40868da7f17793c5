"""A task on its spool directory, in upstream's layout.

``<SaveDir>/<id>/`` holds ``password``, ``type``, ``queued_time``,
``crash/`` (the uploaded files), ``results/``, and once a worker runs
``status``, ``started_time``, ``retrace_log``, ``retrace_backtrace`` and
``finished_time``.  A task directory only ever appears complete: uploads are
unpacked under ``<SaveDir>/.incoming/`` and renamed into place, so a
rejected upload leaves nothing behind and a reader never sees half a task.
"""
from __future__ import annotations

import contextlib
import enum
import hmac
import os
import secrets
import shutil
import string
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from retrace_server import locking
from retrace_server.errors import Conflict, Forbidden, NotFound, RetraceError
from retrace_server.files import write_atomically

if TYPE_CHECKING:
    from collections.abc import Iterator

INCOMING_DIR = ".incoming"
# One empty file per task that has not ended (queued or running), named by its id: what admission, /settings,
# the dispatcher and the pages count, so that their cost follows the work in progress, not the spool's size.
ACTIVE_DIR = ".active"
# Ended tasks whose rows changed, one directory per hour (hours since the epoch): what each host's task index
# reads to stay current without walking the spool.
CHANGED_DIR = ".changed"
CHANGED_DIR_FORMAT = "{:08d}"
TRASH_PREFIX = ".deleted-"
_LOCK_NAME = ".upload.lock"
# Bytes an upload has announced and not yet written (retrace.intake.storage).
RESERVED_NAME = ".reserved"
# The address a task was uploaded from (MaxUploadsPerClient, MaxQueuedPerClient); kept with the task.
CLIENT_NAME = "client_address"
_PASSWORD_ALPHABET = string.ascii_letters + string.digits
_ID_ATTEMPTS = 50
LOG_NAME = "retrace_log"
# Which host's worker holds the task (Dispatcher = celery).
WORKER_HOST = "worker_host"
# Held (flock) by the task's worker for as long as it runs.
WORKER_LOCK = ".worker.lock"
# The pid of the process running the task's stages (the supervisor's child).
JOB_PID = "job_pid"
FAILURE_NAME = "results/failure"
# The source a manager task fetches its crash data from (retrace_server.intake.remote).
REMOTE_NAME = "remote"
# Present: the task's log is kept at debug level (the manager's "Be more verbose", as --verbose).
DEBUG_NAME = "debug"
MD5_NAME = "md5sum"  # "<md5>  vmcore", as upstream (CalculateMd5)
# Asked for by the manager's "Calculate md5" box; the result goes to MD5_NAME as for uploads.
MD5_REQUESTED = "md5sum_requested"
# What the manager's form said of a bare coredump (upstream's names), copied into crash/ when the
# download did not bring its own.
CUSTOM_FILES = {"custom_package": "package", "custom_executable": "executable", "custom_os_release": "os_release"}
LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_LOCKLESS_GRACE_SECONDS = 60
# What a run writes, and a restart removes.
_RUN_FILES = ("status", "started_time", "finished_time", LOG_NAME, "retrace_backtrace", JOB_PID, FAILURE_NAME)


class TaskStatus(enum.IntEnum):
    """Codes stored in the ``status`` file, with upstream's sentences."""

    ANALYZE = 0
    INIT = 1
    BACKTRACE = 2
    CLEANUP = 3
    STATS = 4
    FINISHING = 5
    SUCCESS = 6
    FAIL = 7
    DOWNLOADING = 8
    POSTPROCESS = 9
    CALCULATING_MD5SUM = 10

    @property
    def sentence(self) -> str:
        return _STATUS_SENTENCES[self]

    @property
    def is_final(self) -> bool:
        return self in (TaskStatus.SUCCESS, TaskStatus.FAIL)


_STATUS_SENTENCES = {
    TaskStatus.ANALYZE: "Analyzing crash data",
    TaskStatus.INIT: "Preparing environment for backtrace generation",
    TaskStatus.BACKTRACE: "Generating backtrace",
    TaskStatus.CLEANUP: "Cleaning environment after backtrace generation",
    TaskStatus.STATS: "Saving crash statistics",
    TaskStatus.FINISHING: "Finishing task",
    TaskStatus.SUCCESS: "Retrace job finished successfully",
    TaskStatus.FAIL: "Retrace job failed",
    TaskStatus.DOWNLOADING: "Downloading remote resources",
    TaskStatus.POSTPROCESS: "Post-processing downloaded file",
    TaskStatus.CALCULATING_MD5SUM: "Calculating md5sum",
}


class TaskType(enum.IntEnum):
    """``X-Task-Type`` values, as upstream."""

    COREDUMP = 0
    DEBUG = 1
    VMCORE = 2
    COREDUMP_INTERACTIVE = 3
    VMCORE_INTERACTIVE = 4

    @property
    def is_vmcore(self) -> bool:
        return self in (TaskType.VMCORE, TaskType.VMCORE_INTERACTIVE)

    @property
    def keeps_environment(self) -> bool:
        """Whether the task keeps its core and the tree gdb or crash read it with (retrace-server-interact
        opens them) until cleanup expires it."""
        return self in (TaskType.DEBUG, TaskType.COREDUMP_INTERACTIVE, TaskType.VMCORE_INTERACTIVE)


def wire_status(status: TaskStatus | None) -> str:
    """The ``X-Task-Status`` header for a status code (None: not started)."""
    if status == TaskStatus.SUCCESS:
        return "FINISHED_SUCCESS"
    if status == TaskStatus.FAIL:
        return "FINISHED_FAILURE"
    return "PENDING"


def format_log_line(level: str, message: str, when: float | None = None) -> str:
    """A ``retrace_log`` line: ``[YYYY-MM-DD HH:MM:SS] [I] message`` (upstream's format)."""
    stamp = time.strftime(LOG_TIME_FORMAT, time.localtime(when))
    return f"[{stamp}] [{level}] {message}\n"


def is_task_id(name: str, id_length: int) -> bool:
    return len(name) == id_length and name.isascii() and name.isdigit()


class Task:
    """One task directory; every spool read and write goes through here."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.task_id = self.path.name

    @classmethod
    def open(cls, save_dir: Path, task_id: str, id_length: int) -> Task:
        """The existing task ``task_id`` or NotFound; ids are digits only."""
        if not is_task_id(task_id, id_length):
            raise NotFound("There is no such task")
        path = Path(save_dir) / task_id
        if not (path / "password").is_file():
            raise NotFound("There is no such task")
        return cls(path)

    @property
    def crash_dir(self) -> Path:
        return self.path / "crash"

    @property
    def results_dir(self) -> Path:
        return self.path / "results"

    def _read(self, name: str, limit: int = 4096) -> str | None:
        try:
            with open(self.path / name, "rb") as handle:
                return handle.read(limit).decode("utf-8", errors="replace")
        except FileNotFoundError:
            return None

    def check_password(self, given: str | None) -> None:
        """Raise Forbidden unless ``given`` is the task's password.

        Compared in constant time so that response timing tells an attacker
        nothing about how much of a guess was right.
        """
        if given is None:
            raise Forbidden("This task needs its password in the X-Task-Password header")
        expected = (self._read("password") or "").strip()
        # An empty or lost password file must not make the empty password right.
        if not expected or not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8")):
            raise Forbidden("Invalid password")

    @property
    def task_type(self) -> TaskType:
        text = self._read("type")
        return TaskType(int(text)) if text and text.strip().isdigit() else TaskType.COREDUMP

    @property
    def status(self) -> TaskStatus | None:
        """The stored TaskStatus, or None while the task waits in the queue."""
        text = self._read("status")
        if text is None or not text.strip():
            return None
        return TaskStatus(int(text))

    def set_status(self, status: TaskStatus) -> None:
        write_atomically(self.path / "status", str(int(status)))
        if status.is_final:
            mark_ended(self.path.parent, self.task_id)
            mark_changed(self.path.parent, self.task_id)  # ended between two looks of an index: read once more
        else:
            mark_active(self.path.parent, self.task_id)

    def timestamp(self, name: str) -> float | None:
        """``queued_time``, ``started_time`` or ``finished_time`` as a float, or None."""
        text = self._read(name)
        return float(text) if text else None

    def mark_time(self, name: str, when: float | int | None = None) -> None:
        write_atomically(self.path / name, str(int(when if when is not None else time.time())))

    def append_log(self, level: str, message: str) -> None:
        with open(self.path / LOG_NAME, "a", encoding="utf-8") as handle:
            handle.write(format_log_line(level, message))

    @property
    def failure_reason(self) -> str | None:
        """Why the task failed, as told to the user; None if it did not."""
        text = self._read(FAILURE_NAME)
        return text.strip() if text else None

    def fail(self, reason: str) -> None:
        """End the task as FINISHED_FAILURE, saying why in the log and the status."""
        self.append_log("E", f"Task failed: {reason}")
        write_atomically(self.path / FAILURE_NAME, reason)
        self.mark_time("finished_time")
        self.set_status(TaskStatus.FAIL)

    def succeed_by_hand(self, reason: str) -> None:
        """End the task as FINISHED_SUCCESS because an engineer says so (retrace-server-interact)."""
        self.append_log("I", f"Status set to success by hand: {reason}")
        (self.path / FAILURE_NAME).unlink(missing_ok=True)
        self.mark_time("finished_time")
        self.set_status(TaskStatus.SUCCESS)

    def check_restartable(self) -> None:
        """Conflict when there is nothing to start again from: a coredump task's core is deleted when it
        ends, unless it was fetched from a source the manager can fetch again."""
        if not ((self.path / REMOTE_NAME).is_file()
                or any((self.crash_dir / name).is_file() for name in ("coredump", "vmcore"))):
            raise Conflict("cannot be restarted: its coredump was deleted when it ended (only X-Task-Type 1, "
                           "debug, and 2, vmcore, tasks keep their dump)")

    def forget_run(self) -> None:
        """Forget the last run so that the task starts again from its crash data (a restart).  Without its
        status the task is queued again: whatever the next run needs must be written before."""
        self.check_restartable()
        for name in _RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.results_dir, ignore_errors=True)
        self.results_dir.mkdir(mode=0o750)
        shutil.rmtree(self.path / "sysroot", ignore_errors=True)
        mark_active(self.path.parent, self.task_id)

    @property
    def client_address(self) -> str | None:
        """The address the task was uploaded from (None: made by hand or before it was kept)."""
        text = self._read(CLIENT_NAME, 64)
        return text.strip() if text else None

    def read_text(self, name: str, limit: int) -> str | None:
        """A result file's text, at most ``limit`` bytes; None when absent."""
        return self._read(name, limit)

    def delete(self) -> None:
        """Remove the task; it vanishes from the spool at once, then is erased."""
        trash = self.path.with_name(f"{TRASH_PREFIX}{self.task_id}-{secrets.token_hex(4)}")
        os.rename(self.path, trash)
        mark_ended(self.path.parent, self.task_id)
        mark_changed(self.path.parent, self.task_id)
        shutil.rmtree(trash)


def iter_tasks(save_dir: Path, id_length: int) -> Iterator[Task]:
    """Every task directory in the spool (in no particular order)."""
    try:
        entries = list(os.scandir(save_dir))
    except FileNotFoundError:
        return
    for entry in entries:
        if is_task_id(entry.name, id_length) and entry.is_dir(follow_symlinks=False):
            yield Task(entry.path)


def mark_active(save_dir: Path, task_id: str) -> None:
    """The task has not ended: it is counted (an empty file; on a shared spool create and unlink are atomic)."""
    active = Path(save_dir) / ACTIVE_DIR
    active.mkdir(mode=0o750, exist_ok=True)
    os.close(os.open(active / task_id, os.O_WRONLY | os.O_CREAT, 0o640))


def mark_ended(save_dir: Path, task_id: str) -> None:
    (Path(save_dir) / ACTIVE_DIR / task_id).unlink(missing_ok=True)


def mark_changed(save_dir: Path, task_id: str, when: float | None = None) -> None:
    """An ended task's row changed (a case number, a deletion): named in this hour's directory of
    ``.changed/``, where every host's task index finds it (tasklist)."""
    hour = CHANGED_DIR_FORMAT.format(int((when or time.time()) // 3600))
    directory = Path(save_dir) / CHANGED_DIR / hour
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    (directory / task_id).touch(mode=0o640)  # its mtime says when: an index reads the changes since it last looked


def active_tasks(save_dir: Path, id_length: int) -> Iterator[Task]:
    """The tasks that have not ended (queued or running), read from their markers; the spool wins: a marker
    whose task ended or is gone is removed on the way."""
    try:
        names = os.listdir(Path(save_dir) / ACTIVE_DIR)
    except FileNotFoundError:
        return
    for name in names:
        if not is_task_id(name, id_length):
            continue
        task = Task(Path(save_dir) / name)
        try:
            status = task.status
            exists = task.path.is_dir()
        except (OSError, ValueError):
            status, exists = None, False
        if not exists or (status is not None and status.is_final):
            mark_ended(save_dir, name)
            continue
        yield task


def reindex_active(save_dir: Path, id_length: int) -> tuple[int, int]:
    """Markers made to agree with the spool (a task made by hand, a crash between a commit and its marker, a
    marker left by a deleted directory): one walk of SaveDir. Returns ``(markers added, markers removed)``."""
    added = 0
    active = Path(save_dir) / ACTIVE_DIR
    marked = set(os.listdir(active)) if active.is_dir() else set()
    for task in iter_tasks(save_dir, id_length):
        try:
            status = task.status
        except (OSError, ValueError):
            continue
        if (status is None or not status.is_final) and task.task_id not in marked:
            mark_active(save_dir, task.task_id)
            added += 1
    remaining = sum(1 for _ in active_tasks(save_dir, id_length))  # drops the markers of ended tasks
    return added, len(marked) + added - remaining


class IncomingTask:
    """A task being uploaded: a private directory that becomes a task on commit.

    Use as a context manager; leaving the block without ``commit`` erases
    everything written so far.  The directory holds an exclusive lock for
    its whole life, so a scan can tell a live upload from one abandoned by a
    crashed process (whose lock the kernel has released).
    """

    def __init__(self, save_dir: Path, client: str | None = None) -> None:
        self.save_dir = Path(save_dir)
        incoming = self.save_dir / INCOMING_DIR
        incoming.mkdir(mode=0o750, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(dir=incoming))
        os.chmod(self.path, 0o750)
        self._lock_fd = locking.try_exclusive(self.path / _LOCK_NAME)
        if client is not None:
            (self.path / CLIENT_NAME).write_text(client)
        self.crash_dir = self.path / "crash"
        self.crash_dir.mkdir(mode=0o750)
        self.committed: Task | None = None

    def __enter__(self) -> IncomingTask:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        if self.committed is None:
            shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, task_type: TaskType | int, *, id_length: int, password_length: int) -> tuple[Task, str]:
        """Give the upload an id and password and move it into the spool.

        Returns ``(task, password)``.  The rename is what publishes the task;
        an id already taken makes the rename fail and another id is drawn.
        """
        password = "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(password_length))
        write_atomically(self.path / "password", password)
        write_atomically(self.path / "type", str(int(task_type)))
        (self.path / "results").mkdir(mode=0o750)
        write_atomically(self.path / "queued_time", repr(time.time()))
        for _ in range(_ID_ATTEMPTS):
            task_id = str(secrets.randbelow(9 * 10 ** (id_length - 1)) + 10 ** (id_length - 1))
            target = self.save_dir / task_id
            try:
                os.rename(self.path, target)
            except OSError as err:
                if target.exists():
                    continue
                raise RetraceError("Unable to create new task") from err
            os.unlink(target / _LOCK_NAME)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target / RESERVED_NAME)
            # After the rename: a crash between the two leaves a task without its marker, which the next
            # reindex (the dispatcher's start, every cleanup pass) finds; never a marker of someone else's task.
            mark_active(self.save_dir, task_id)
            self.committed = task = Task(target)
            return task, password
        raise RetraceError("Unable to create new task")


def worker_alive(task: Task) -> bool:
    """Whether a worker process holds the task's lock right now."""
    return bool(locking.is_held(task.path / WORKER_LOCK))


def count_live_uploads(save_dir: Path, client: str | None = None) -> int:
    """Uploads in flight (from ``client`` only, if given); directories of dead uploads are removed on the way."""
    incoming = Path(save_dir) / INCOMING_DIR
    try:
        entries = [entry for entry in os.scandir(incoming) if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return 0
    live = 0
    for entry in entries:
        if not is_live_upload(Path(entry.path)):
            shutil.rmtree(entry.path, ignore_errors=True)
        elif client is None or _upload_client(Path(entry.path)) == client:
            live += 1
    return live


def _upload_client(path: Path) -> str | None:
    try:
        return (path / CLIENT_NAME).read_text()
    except OSError:
        return None


def is_live_upload(path: Path) -> bool:
    """Held lock: live.  Otherwise young means live too: between ``mkdtemp``
    and ``flock`` a starting upload holds no lock yet, and removing its
    directory then would fail the upload (seen under bursts of uploads while
    status polls count them)."""
    if locking.is_held(path / _LOCK_NAME):
        return True
    try:
        return time.time() - path.stat().st_mtime < _LOCKLESS_GRACE_SECONDS
    except FileNotFoundError:
        return False

