"""The manager's task list: every task in SaveDir as a row, filtered, searched and paged, from an index.

The spool stays the truth (upstream's layout, read by admins and upstream's
tools); the index beside it only remembers what the spool said, so that a
list page reads 50 rows, not 100,000 directories.  It is SQLite, local to
each host that answers requests (``CacheDir/tasks.sqlite``): SQLite's
locking is not safe on the NFS or CephFS a shared spool lives on.  Every
host learns what changed from the spool itself: ``.active/`` names the
tasks not yet ended, whose rows are read again at each refresh; a task
that ends leaves it, and its row is read once more; ``.changed/<hour>/``
names ended tasks whose rows changed since (a case number, a deletion).
An index missing, unreadable or last refreshed before the oldest hour kept
(cleanup keeps ``CHANGED_KEEP_HOURS``) is built again from the whole spool;
an unreadable one is set aside with a line in the admin log.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from retrace_server import locking
from retrace_server.errors import TemporarilyUnavailable
from retrace_server.tasks.casedata import CASENO, MANAGED
from retrace_server.tasks.task import (
    ACTIVE_DIR,
    CHANGED_DIR,
    CHANGED_DIR_FORMAT,
    REMOTE_NAME,
    TaskStatus,
    TaskType,
    is_task_id,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from retrace_server.config import Config

PER_PAGE = 50
# Filter name -> which statuses it keeps (None: waiting in the queue).
STATUS_FILTERS: dict[str, Callable[[TaskStatus | None], bool]] = {
    "running": lambda status: status is not None and not status.is_final,
    "queued": lambda status: status is None,
    "finished": lambda status: status == TaskStatus.SUCCESS,
    "failed": lambda status: status == TaskStatus.FAIL,
}
_STATUS_SQL = {
    "running": f"status IS NOT NULL AND status NOT IN ({int(TaskStatus.SUCCESS)}, {int(TaskStatus.FAIL)})",
    "queued": "status IS NULL",
    "finished": f"status = {int(TaskStatus.SUCCESS)}",
    "failed": f"status = {int(TaskStatus.FAIL)}",
}
_SUBJECT_FILES = ("crash/package", "kernelver", REMOTE_NAME)
INDEX_NAME = "tasks.sqlite"
# How long a request waits for another process's refresh of the index.
_BUSY_SECONDS = 60
# How far back of its last look a refresh reads changes: hosts' clocks and a change made while it looked.
_CLOCK_SLACK_SECONDS = 120
# A text search matching more tasks than this is not counted to the end (a search matching every task would
# cost a count and a sort of them all); its pages stop there.
SEARCH_COUNT_CAP = 1000
# Hours of .changed/ cleanup keeps: an index refreshed less recently is built again.
CHANGED_KEEP_HOURS = 48
_LAYOUT = 4
# Search words shorter than a trigram are looked for row by row.
_TRIGRAM = 3
_SCHEMA = """
DROP TABLE IF EXISTS tasks;
DROP TABLE IF EXISTS words;
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY, task_id TEXT NOT NULL, type INTEGER NOT NULL, status INTEGER, queued_time REAL, caseno TEXT NOT NULL,
    subject TEXT NOT NULL, size INTEGER NOT NULL, managed INTEGER NOT NULL, ended INTEGER NOT NULL,
    mtime REAL NOT NULL);
CREATE INDEX tasks_not_ended ON tasks (id) WHERE ended = 0;
CREATE INDEX tasks_ended_by_age ON tasks (mtime) WHERE ended = 1;
CREATE VIRTUAL TABLE words USING fts5(text, tokenize='trigram');
CREATE INDEX IF NOT EXISTS tasks_queued ON tasks (queued_time DESC, task_id DESC);
CREATE INDEX IF NOT EXISTS tasks_caseno ON tasks (caseno);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
"""
log = logging.getLogger(__name__)


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
    total: int  # with ``more``: at least this many
    page: int
    pages: int
    more: bool = False


class TaskIndex:
    """This host's index of the spool's tasks (see the module's docstring)."""

    def __init__(self, config: Config) -> None:
        self.save_dir = Path(config.SaveDir)
        self.id_length = config.TaskIdLength
        self.path = Path(config.CacheDir) / INDEX_NAME
        self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.OperationalError as err:  # locked, or the disk: not the file's fault
            raise _busy(err) from None
        except sqlite3.DatabaseError as err:
            aside = self.path.with_name(f"{INDEX_NAME}.broken-{int(time.time())}")
            log.error("the task index %s is unreadable (%s); set aside as %s and built again from the spool",
                      self.path, err, aside.name)
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), timeout=_BUSY_SECONDS, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            if db.execute("PRAGMA user_version").fetchone()[0] != _LAYOUT:
                with locking.sqlite_write(db):  # one process lays the tables out; the others find them done
                    if db.execute("PRAGMA user_version").fetchone()[0] != _LAYOUT:
                        for statement in _SCHEMA.split(";"):
                            db.execute(statement)
                        db.execute("DELETE FROM meta")  # built anew: read from the whole spool
                        db.execute(f"PRAGMA user_version = {_LAYOUT}")
            db.execute("SELECT COUNT(*) FROM meta").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> TaskIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def refresh(self, full: bool = False) -> int:
        """Read again the rows the spool says may have changed (all of them when ``full``, when the index is
        new or was last refreshed before the oldest hour of .changed/ kept); returns how many."""
        started = time.time()
        with locking.sqlite_write(self.db):  # one refresh at a time; readers go on reading
            last_text = self.db.execute("SELECT value FROM meta WHERE key = 'refreshed'").fetchone()
            last = float(last_text[0]) if last_text else None
            if full or last is None or started - last > (CHANGED_KEEP_HOURS - 1) * 3600:
                self.db.execute("DELETE FROM tasks")
                self.db.execute("DELETE FROM words")
                names: Iterable[str] = (name for name in os.listdir(self.save_dir) if is_task_id(name, self.id_length))
            else:
                names = self._changed_since(last)
            count = 0
            for name in names:
                self._read(name)
                count += 1
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('refreshed', ?)", (repr(started),))
        return count

    def _changed_since(self, last: float) -> set[str]:
        """Tasks not ended, tasks the index holds as not ended, and those named in .changed/ since ``last`` (a
        little before it: another host's clock, a change made while the last refresh ran)."""
        names = {name for name in _listing(self.save_dir / ACTIVE_DIR) if is_task_id(name, self.id_length)}
        names |= {task_id for (task_id,) in self.db.execute("SELECT task_id FROM tasks WHERE ended = 0")}
        since = last - _CLOCK_SLACK_SECONDS
        first_hour = CHANGED_DIR_FORMAT.format(int(since // 3600))
        for hour in sorted(_listing(self.save_dir / CHANGED_DIR)):
            if hour >= first_hour:
                names |= {entry.name for entry in _entries(self.save_dir / CHANGED_DIR / hour)
                          if is_task_id(entry.name, self.id_length) and _mtime(entry) >= since}
        return names

    def _read(self, task_id: str) -> None:
        path = self.save_dir / task_id
        self.db.execute("DELETE FROM words WHERE rowid = ?", (int(task_id),))  # ids are digits, at most 18
        if not path.is_dir():
            self.db.execute("DELETE FROM tasks WHERE id = ?", (int(task_id),))
            return
        try:
            mtime = path.stat().st_mtime  # read first: a change while the row is read leaves it older, never newer
        except FileNotFoundError:
            return
        row = read_row(path)
        self.db.execute("INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (int(row.task_id), row.task_id, int(row.task_type), None if row.status is None else int(row.status),
                         row.queued_time, row.caseno, row.subject, row.size, int(row.managed),
                         int(row.status is not None and row.status.is_final), mtime))
        self.db.execute("INSERT INTO words (rowid, text) VALUES (?, ?)",
                        (int(task_id), f"{row.task_id}\n{row.caseno}\n{row.subject}"))

    def adopt(self) -> list[str]:
        """Rows for task directories the index does not know (made by hand, or by a host whose marker was lost
        in a crash), none for those gone behind its back: one listing of SaveDir, no file read for the rest.
        Returns the ids adopted."""
        with locking.sqlite_write(self.db):
            present = {name for name in os.listdir(self.save_dir) if is_task_id(name, self.id_length)}
            known = {task_id for (task_id,) in self.db.execute("SELECT task_id FROM tasks")}
            for name in sorted((present - known) | (known - present)):
                self._read(name)
        return sorted(present - known)

    def ended(self, last_change_before: float | None = None, types: tuple[TaskType, ...] | None = None) -> list[str]:
        """Ids of the ended tasks (whose directory changed last before ``last_change_before``; of ``types``),
        oldest first: cleanup's candidates, which it checks against the spool before it acts."""
        conditions, arguments = ["ended = 1"], []
        if last_change_before is not None:
            conditions.append("mtime < ?")
            arguments.append(last_change_before)
        if types is not None:
            conditions.append(f"type IN ({', '.join(str(int(kind)) for kind in types)})")
        return [task_id for (task_id,) in self.db.execute(
            f"SELECT task_id FROM tasks WHERE {' AND '.join(conditions)} ORDER BY mtime", arguments)]

    def matches(self, search: str) -> int:
        """How many tasks the text search matches, counted up to SEARCH_COUNT_CAP + 1 (the trigram index)."""
        return int(self.db.execute("SELECT COUNT(*) FROM (SELECT rowid FROM words WHERE words MATCH ? LIMIT ?)",
                                   (_phrase(search), SEARCH_COUNT_CAP + 1)).fetchone()[0])

    def where(self, status: str | None, caseno: str | None, search: str | None,
              dense: bool = False) -> tuple[str, list[str]]:
        """The SQL condition of the filters and its arguments; ``dense``: the search matches so many tasks
        that reading the newest rows in order and testing each finds a page sooner than the index."""
        conditions, arguments = [], []
        if status in _STATUS_SQL:
            conditions.append(_STATUS_SQL[status])
        if caseno:
            conditions.append("caseno = ?")
            arguments.append(caseno)
        if search and len(search) >= _TRIGRAM and not dense:  # the trigram index: substrings of 3 or more
            conditions.append("id IN (SELECT rowid FROM words WHERE words MATCH ?)")
            arguments.append(_phrase(search))
        elif search:
            conditions.append("(instr(lower(task_id), ?) OR instr(lower(caseno), ?) OR instr(lower(subject), ?))")
            arguments += [search.lower()] * 3
        return (f"WHERE {' AND '.join(conditions)}" if conditions else ""), arguments

    def count(self, where: str, arguments: list[str]) -> int:
        return int(self.db.execute(f"SELECT COUNT(*) FROM tasks {where}", arguments).fetchone()[0])

    def page(self, where: str, arguments: list[str], limit: int = PER_PAGE, offset: int = 0) -> list[TaskRow]:
        """The rows of one page, newest first."""
        found = self.db.execute(
            "SELECT task_id, type, status, queued_time, caseno, subject, size, managed FROM tasks "
            f"{where} ORDER BY queued_time DESC, task_id DESC LIMIT ? OFFSET ?",  # tasks_queued; NULL last
            (*arguments, limit, offset)).fetchall()
        return [TaskRow(task_id, _task_type(kind), None if state is None else TaskStatus(state), queued, case,
                        subject, size, bool(managed))
                for task_id, kind, state, queued, case, subject, size, managed in found]


def _busy(err: sqlite3.OperationalError) -> TemporarilyUnavailable:
    return TemporarilyUnavailable(f"The task list cannot be read right now ({err}); try again in a moment")


def _phrase(search: str) -> str:
    """The search as one FTS5 phrase: the user's quotes are text, not syntax."""
    return '"' + search.replace('"', '""') + '"'


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(directory))
    except FileNotFoundError:
        return []


def _mtime(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _listing(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _task_type(value: int) -> TaskType:
    try:
        return TaskType(value)
    except ValueError:
        return TaskType.COREDUMP


def forget_changes_before(save_dir: Path, now: float | None = None) -> int:
    """Remove the hours of .changed/ older than CHANGED_KEEP_HOURS (cleanup); returns how many."""
    oldest = CHANGED_DIR_FORMAT.format(int((now or time.time()) // 3600) - CHANGED_KEEP_HOURS)
    removed = 0
    for hour in _listing(Path(save_dir) / CHANGED_DIR):
        if hour < oldest:
            for name in _listing(Path(save_dir) / CHANGED_DIR / hour):
                (Path(save_dir) / CHANGED_DIR / hour / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                (Path(save_dir) / CHANGED_DIR / hour).rmdir()
            removed += 1
    return removed


@contextlib.contextmanager
def task_index(config: Config) -> Iterator[TaskIndex]:
    """This host's index, refreshed from what the spool says changed."""
    with TaskIndex(config) as index:
        try:
            index.refresh()
        except sqlite3.OperationalError as err:  # another process's refresh held it longer than a request waits
            raise _busy(err) from None
        yield index


def list_tasks(config: Config, status: str | None = None, caseno: str | None = None, search: str | None = None,
               page: int = 1, per_page: int = PER_PAGE) -> Listing:
    """Tasks newest first, kept by ``status`` (a STATUS_FILTERS key), case number and text; one page of them.

    A search matching more than SEARCH_COUNT_CAP tasks is not counted to
    the end (``more``): its pages stop at the cap, and the engineer is asked
    to narrow it.
    """
    with task_index(config) as index:
        dense = bool(search) and len(search or "") >= _TRIGRAM and index.matches(search or "") > SEARCH_COUNT_CAP
        where, arguments = index.where(status, caseno, search, dense)
        total = SEARCH_COUNT_CAP if dense else index.count(where, arguments)
        pages = max(1, -(-total // per_page))
        page = min(max(1, page), pages)
        rows = index.page(where, arguments, limit=per_page, offset=(page - 1) * per_page)
    return Listing(rows, total, page, pages, more=dense)
