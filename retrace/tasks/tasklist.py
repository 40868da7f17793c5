"""The manager's task list: every task in SaveDir as a row, filtered, searched and paged.

The spool stays the only truth (no index to drift from it), so a listing
reads each task directory: a handful of small files, the crash directory's
sizes.  ``docs/benchmarks.md`` measures this against 10,000 tasks.
"""

import dataclasses
import os

from retrace_server.tasks.casedata import CASENO, MANAGED
from retrace_server.tasks.task import REMOTE_NAME, TaskStatus, TaskType, iter_tasks

PER_PAGE = 50
# Filter name -> which statuses it keeps (None: waiting in the queue).
STATUS_FILTERS = {
    "running": lambda status: status is not None and not status.is_final,
    "queued": lambda status: status is None,
    "finished": lambda status: status == TaskStatus.SUCCESS,
    "failed": lambda status: status == TaskStatus.FAIL,
}
_SUBJECT_FILES = ("crash/package", "kernelver", REMOTE_NAME)


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

    def matches(self, text):
        text = text.lower()
        return any(text in value.lower() for value in (self.task_id, self.caseno, self.subject))


def _small(path, limit=512):
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _crash_size(path):
    try:
        return sum(entry.stat(follow_symlinks=False).st_size for entry in os.scandir(path)
                   if entry.is_file(follow_symlinks=False))
    except OSError:
        return 0


def read_row(task):
    """The task's row; a task being deleted meanwhile reads as empty values, never an error."""
    path = task.path
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
    return TaskRow(task.task_id, task_type, status, queued_time, _small(path / CASENO, 64), subject,
                   _crash_size(path / "crash"), (path / MANAGED).is_file())


@dataclasses.dataclass
class Listing:
    rows: list
    total: int
    page: int
    pages: int


def list_tasks(config, status=None, caseno=None, search=None, page=1, per_page=PER_PAGE):
    """Tasks newest first, kept by ``status`` (a STATUS_FILTERS key), case number and text; one page of them."""
    keep = STATUS_FILTERS.get(status)
    rows = []
    for task in iter_tasks(config.SaveDir, config.TaskIdLength):
        row = read_row(task)
        if keep is not None and not keep(row.status):
            continue
        if caseno and row.caseno != caseno:
            continue
        if search and not row.matches(search):
            continue
        rows.append(row)
    rows.sort(key=lambda row: (row.queued_time or 0, row.task_id), reverse=True)
    pages = max(1, -(-len(rows) // per_page))
    page = min(max(1, page), pages)
    return Listing(rows[(page - 1) * per_page:page * per_page], len(rows), page, pages)
