"""The manager's task list: every task in SaveDir as a row, filtered, searched and paged.

The spool stays the only truth (no index to drift from it), so a row is
read from its task directory: a handful of small files, the crash
directory's sizes.  Reading 10,000 of them takes seconds, so each process
keeps the rows it read, keyed by the task directory's mtime: every change
the row shows (status, case number, the kernel found) replaces a file in
that directory, which moves its mtime.  A row whose directory changed in
the last ``_SETTLE_SECONDS`` is read again every time, because two changes
within one tick of the file system's clock leave the same mtime (git's
"racy" index entries).  ``docs/benchmarks.md`` measures both ways.
"""
from __future__ import annotations

import dataclasses
import os
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from retrace_server.tasks.casedata import CASENO, MANAGED
from retrace_server.tasks.task import REMOTE_NAME, TaskStatus, TaskType, is_task_id

if TYPE_CHECKING:
    from retrace_server.config import Config

PER_PAGE = 50
# Filter name -> which statuses it keeps (None: waiting in the queue).
STATUS_FILTERS: dict[str, Callable[[TaskStatus | None], bool]] = {
    "running": lambda status: status is not None and not status.is_final,
    "queued": lambda status: status is None,
    "finished": lambda status: status == TaskStatus.SUCCESS,
    "failed": lambda status: status == TaskStatus.FAIL,
}
_SUBJECT_FILES = ("crash/package", "kernelver", REMOTE_NAME)
_SETTLE_SECONDS = 2.0
# (SaveDir, task id) -> (the task directory's mtime in ns, its row)
_ROWS: dict[tuple[str, str], tuple[int, TaskRow]] = {}
_ROWS_LOCK = threading.Lock()


@dataclasses.dataclass
class TaskRow:
    task_id: str
    task_type: TaskType
    status: TaskStatus | None
    queued_time: float | None
    caseno: str
    subject: str
    size: int
    managed: bool

    def matches(self, text: str) -> bool:
        text = text.lower()
        return any(text in value.lower() for value in (self.task_id, self.caseno, self.subject))


def _small(path: Path, limit: int = 512) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _crash_size(path: Path) -> int:
    try:
        return sum(entry.stat(follow_symlinks=False).st_size for entry in os.scandir(path)
                   if entry.is_file(follow_symlinks=False))
    except OSError:
        return 0


def read_row(directory: str | os.PathLike[str]) -> TaskRow:
    """The row of the task directory; a task being deleted meanwhile reads as empty values."""
    path = Path(directory)
    status_text, type_text, queued = _small(path / "status"), _small(path / "type"), _small(path / "queued_time")
    subject = next((text.splitlines()[0] for text in (_small(path / name) for name in _SUBJECT_FILES) if text), "")
    try:
        status = TaskStatus(int(status_text)) if status_text else None
    except ValueError:
        status = None
    try:
        task_type = TaskType(int(type_text))
    except ValueError:
        task_type = TaskType.COREDUMP
    try:
        queued_time = float(queued)
    except ValueError:
        queued_time = None
    return TaskRow(path.name, task_type, status, queued_time, _small(path / CASENO, 64), subject,
                   _crash_size(path / "crash"), (path / MANAGED).is_file())


@dataclasses.dataclass
class Listing:
    rows: list[TaskRow]
    total: int
    page: int
    pages: int


def _rows(config: Config) -> list[TaskRow]:
    """Every task's row, from the cache where its directory has not changed."""
    save_dir = str(config.SaveDir)
    settled = time.time() - _SETTLE_SECONDS
    try:
        entries = list(os.scandir(save_dir))
    except FileNotFoundError:
        return []
    rows: list[TaskRow] = []
    seen = set()
    for entry in entries:
        if not is_task_id(entry.name, config.TaskIdLength):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(info.st_mode):
            continue
        key = (save_dir, entry.name)
        seen.add(key)
        cached = _ROWS.get(key)
        if cached is not None and cached[0] == info.st_mtime_ns:
            rows.append(cached[1])
            continue
        row = read_row(entry.path)
        if info.st_mtime < settled:
            with _ROWS_LOCK:
                _ROWS[key] = (info.st_mtime_ns, row)
        rows.append(row)
    with _ROWS_LOCK:
        for key in [key for key in _ROWS if key[0] == save_dir and key not in seen]:
            del _ROWS[key]
    return rows


def list_tasks(config: Config, status: str | None = None, caseno: str | None = None, search: str | None = None,
               page: int = 1, per_page: int = PER_PAGE) -> Listing:
    """Tasks newest first, kept by ``status`` (a STATUS_FILTERS key), case number and text; one page of them."""
    keep = STATUS_FILTERS.get(status or "")
    rows = [row for row in _rows(config)
            if (keep is None or keep(row.status)) and (not caseno or row.caseno == caseno)
            and (not search or row.matches(search))]
    rows.sort(key=lambda row: (row.queued_time or 0, row.task_id), reverse=True)
    pages = max(1, -(-len(rows) // per_page))
    page = min(max(1, page), pages)
    return Listing(rows[(page - 1) * per_page:page * per_page], len(rows), page, pages)
