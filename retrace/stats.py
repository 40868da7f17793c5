"""Crash statistics in ``<SaveDir>/<DBFile>`` (SQLite), upstream's tables and more.

Schema version 1 is upstream's (``tasks``, ``success``, ``packages``,
``packages_tasks``, ``buildids``, ``reportfull``), so an old ``stats.db``
opens and is migrated in place; version 2 adds what upstream lacked: the
release, the failure reason and its category, the queue wait, per-phase
times and package-cache hits.  ``PRAGMA user_version`` holds the version.

Every worker writes its row at the end of its task, and the web handlers
read, all at once: WAL mode lets readers run beside the single writer, and
the busy timeout makes concurrent writers wait for each other instead of
failing.  Client addresses of refused uploads are blanked after
``StatsIPRetention`` hours.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrace_server import locking

if TYPE_CHECKING:
    from retrace_server.config import Config

_BUSY_TIMEOUT_SECONDS = 30
SUCCESS, FAILURE = 6, 7

_MIGRATIONS = (
    # 1: upstream's schema, verbatim.
    """
    CREATE TABLE IF NOT EXISTS tasks (id INTEGER PRIMARY KEY AUTOINCREMENT, taskid, package, version, arch,
        starttime NOT NULL, duration NOT NULL, coresize, status NOT NULL);
    CREATE TABLE IF NOT EXISTS success (taskid REFERENCES tasks(id), pre NOT NULL, post NOT NULL,
        rootsize NOT NULL);
    CREATE TABLE IF NOT EXISTS packages (id INTEGER PRIMARY KEY AUTOINCREMENT, name NOT NULL, version NOT NULL);
    CREATE TABLE IF NOT EXISTS packages_tasks (pkgid REFERENCES packages(id), taskid REFERENCES tasks(id));
    CREATE TABLE IF NOT EXISTS buildids (taskid REFERENCES tasks(id), soname, buildid NOT NULL);
    CREATE TABLE IF NOT EXISTS reportfull (requesttime NOT NULL, ip NOT NULL);
    """,
    # 2: what operators asked for and upstream never had.
    """
    ALTER TABLE tasks ADD COLUMN release TEXT;
    ALTER TABLE tasks ADD COLUMN failure_category TEXT;
    ALTER TABLE tasks ADD COLUMN failure TEXT;
    ALTER TABLE tasks ADD COLUMN queue_wait REAL;
    ALTER TABLE tasks ADD COLUMN cache_hits INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN cache_misses INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE phases (taskid REFERENCES tasks(id), phase TEXT NOT NULL, seconds REAL NOT NULL);
    CREATE INDEX tasks_by_starttime ON tasks (starttime);
    CREATE INDEX phases_by_phase ON phases (phase);
    CREATE INDEX buildids_by_buildid ON buildids (buildid);
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)


# Where distributions install what they ship: a missing file there is named
# on the public page by its file name; anywhere else (a home directory, a
# customer's product) it is not named at all.
_SYSTEM_DIRECTORIES = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32", "/usr/bin", "/usr/sbin",
                       "/bin", "/sbin", "/usr/libexec")


def public_library_name(path: str) -> str:
    """What /stats may say of a missing file: its name when a distribution put it there, else a placeholder."""
    if path and path.startswith(tuple(directory + "/" for directory in _SYSTEM_DIRECTORIES)):
        return path.rsplit("/", 1)[1]
    return "(outside the system directories)"


@dataclasses.dataclass
class TaskRecord:
    """One finished task, as the worker (or whoever ended it) knows it."""

    task_id: str
    status: int
    starttime: float
    duration: float
    package: str | None = None  # crashed package NVR, e.g. crasher-1.0-1.fc41
    package_version: str | None = None  # set when ``package`` is a bare name: kernel + its release string
    arch: str | None = None
    release: str | None = None
    coresize: int | None = None
    queue_wait: float | None = None
    failure: str | None = None
    failure_category: str | None = None
    phases: dict[str, float] = dataclasses.field(default_factory=dict)  # TaskStatus name, lower case -> seconds
    packages: list[str] = dataclasses.field(default_factory=list)  # NEVRAs used
    missing: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, build-id)
    cache_hits: int = 0
    cache_misses: int = 0
    running_before: int = 0
    running_after: int = 0


def _split_nvr(nvr: str | None) -> tuple[str | None, str]:
    """``(name, version-release)`` of ``name-version-release`` (upstream keeps both)."""
    name, _, rest = (nvr or "").rpartition("-")
    name, _, version = name.rpartition("-")
    return (name, f"{version}-{rest}") if name else (nvr, "")


class StatsDB:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None)
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute("PRAGMA journal_mode = WAL")
        self._migrate()

    @classmethod
    def for_config(cls, config: Config) -> StatsDB:
        return cls(Path(config.SaveDir) / config.DBFile)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> StatsDB:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One write transaction, taken at once so that concurrent writers queue up."""
        return locking.sqlite_write(self.db)

    def _migrate(self) -> None:
        """Bring the schema up to date; a current database costs one read, no write lock
        (every /stats request and /metrics scrape opens it)."""
        if self.schema_version == SCHEMA_VERSION:
            return
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0 and db.execute("SELECT 1 FROM sqlite_master WHERE name = 'tasks'").fetchone():
                version = 1  # an upstream stats.db
            for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def record_task(self, record: TaskRecord) -> None:
        if record.package_version is not None:
            name, version = record.package, record.package_version
        else:
            name, version = _split_nvr(record.package)
        with self.transaction() as db:
            row = db.execute(
                "INSERT INTO tasks (taskid, package, version, arch, starttime, duration, coresize, status, release,"
                " failure_category, failure, queue_wait, cache_hits, cache_misses)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.task_id, name, version, record.arch, int(record.starttime), record.duration, record.coresize,
                 record.status, record.release, record.failure_category, record.failure, record.queue_wait,
                 record.cache_hits, record.cache_misses),
            ).lastrowid
            if record.status == SUCCESS:
                db.execute("INSERT INTO success VALUES (?, ?, ?, ?)",
                           (row, record.running_before, record.running_after, len(record.packages)))
            db.executemany("INSERT INTO phases VALUES (?, ?, ?)", [(row, p, s) for p, s in record.phases.items()])
            for nevra in record.packages:
                db.execute("INSERT INTO packages_tasks VALUES (?, ?)", (self._package_id(db, nevra), row))
            db.executemany("INSERT INTO buildids VALUES (?, ?, ?)", [(row, path, bid) for path, bid in record.missing])

    @staticmethod
    def _package_id(db: sqlite3.Connection, nevra: str) -> int:
        name, version = _split_nvr(nevra.rsplit(".", 1)[0])
        found = db.execute("SELECT id FROM packages WHERE name = ? AND version = ?", (name, version)).fetchone()
        if found:
            return int(found[0])
        row = db.execute("INSERT INTO packages (name, version) VALUES (?, ?)", (name, version)).lastrowid
        assert row is not None  # an INSERT's
        return row

    def record_refusal(self, ip: str, retention_hours: int, now: float | None = None) -> int:
        """A refused upload; addresses older than the retention are blanked on the way."""
        now = now if now is not None else time.time()
        with self.transaction() as db:
            db.execute("INSERT INTO reportfull VALUES (?, ?)", (int(now), ip or ""))
        return self.forget_addresses(retention_hours, now)

    def forget_addresses(self, retention_hours: int, now: float | None = None) -> int:
        """Blank client addresses older than the retention; how many were blanked."""
        now = now if now is not None else time.time()
        with self.transaction() as db:
            return int(db.execute("UPDATE reportfull SET ip = '' WHERE ip != '' AND requesttime < ?",
                                  (int(now - retention_hours * 3600),)).rowcount)

    # -- reading ---------------------------------------------------------------

    def _count(self, sql: str, args: tuple[int, ...] = ()) -> int:
        return int(self.db.execute(sql, args).fetchone()[0])

    def summary(self, now: float | None = None, days: int = 30, top: int = 15) -> dict[str, Any]:
        """Everything /stats shows, as plain data (also the JSON answer)."""
        now = now if now is not None else time.time()
        total = self._count("SELECT COUNT(*) FROM tasks")
        succeeded = self._count("SELECT COUNT(*) FROM tasks WHERE status = ?", (SUCCESS,))
        first = self.db.execute("SELECT MIN(starttime) FROM tasks").fetchone()[0]
        return {
            "total": total,
            "successful": succeeded,
            "failed": total - succeeded,
            "success_rate": round(succeeded / total, 4) if total else None,
            "first_retrace": int(first) if first is not None else None,
            "refused": self.refusals(),
            "per_day": self._per_day(now, days),
            "phases": self.phase_percentiles(),
            "queue_wait": _percentiles([r[0] for r in self.db.execute(
                "SELECT queue_wait FROM tasks WHERE queue_wait IS NOT NULL")]),
            # Public: only names this server resolved from its own repositories for the
            # task (or "kernel", which the vmcore job writes), never text an upload made up.
            "top_packages": self._pairs(
                "SELECT package, COUNT(*) AS n FROM tasks t WHERE package = 'kernel' OR EXISTS (SELECT 1 FROM"
                " packages_tasks pt JOIN packages p ON p.id = pt.pkgid WHERE pt.taskid = t.id AND p.name = t.package)"
                " GROUP BY package ORDER BY n DESC, package LIMIT ?", (top,)),
            "failure_categories": self._pairs(
                "SELECT failure_category, COUNT(*) AS n FROM tasks WHERE status = ? GROUP BY failure_category"
                " ORDER BY n DESC", (FAILURE,)),
            "missing_buildids": [
                {"buildid": buildid, "library": public_library_name(soname), "count": count}
                for buildid, soname, count in self.db.execute(
                    "SELECT buildid, MAX(soname), COUNT(*) AS n FROM buildids GROUP BY buildid"
                    " ORDER BY n DESC, buildid LIMIT ?", (top,))
            ],
            "releases": self._pairs("SELECT release, COUNT(*) AS n FROM tasks WHERE release IS NOT NULL"
                                    " GROUP BY release ORDER BY n DESC, release"),
            "architectures": self._pairs("SELECT arch, COUNT(*) AS n FROM tasks WHERE arch IS NOT NULL"
                                         " GROUP BY arch ORDER BY n DESC, arch"),
        }

    def refusals(self) -> int:
        return self._count("SELECT COUNT(*) FROM reportfull")

    def _pairs(self, sql: str, args: tuple[int, ...] = ()) -> list[list[str | int]]:
        return [[key if key is not None else "unknown", count] for key, count in self.db.execute(sql, args)]

    def _per_day(self, now: float, days: int) -> list[list[str | int]]:
        start_day = int(now // 86400) - days + 1
        counts = dict(self.db.execute(
            "SELECT starttime / 86400 AS day, COUNT(*) FROM tasks WHERE starttime >= ? GROUP BY day",
            (start_day * 86400,)))
        return [[time.strftime("%Y-%m-%d", time.gmtime(day * 86400)), counts.get(day, 0)]
                for day in range(start_day, start_day + days)]

    def phase_percentiles(self) -> dict[str, dict[str, float] | None]:
        return {phase: _percentiles(values) for phase, values in self.phase_samples().items()}

    def phase_samples(self) -> dict[str, list[float]]:
        """``{phase: [seconds, ...]}`` for histograms."""
        samples: dict[str, list[float]] = {}
        for phase, seconds in self.db.execute("SELECT phase, seconds FROM phases"):
            samples.setdefault(phase, []).append(seconds)
        return samples

    def finished_counts(self) -> list[tuple[str, str, int]]:
        """``[(result, failure category or "", count)]`` of finished tasks."""
        return [
            ("success" if status == SUCCESS else "fail", category or "", count)
            for status, category, count in self.db.execute(
                "SELECT status, failure_category, COUNT(*) FROM tasks GROUP BY status, failure_category")
        ]

    def cache_totals(self) -> tuple[int, int]:
        hits, misses = self.db.execute(
            "SELECT COALESCE(SUM(cache_hits), 0), COALESCE(SUM(cache_misses), 0) FROM tasks").fetchone()
        return int(hits), int(misses)


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def at(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3)

    return {"count": len(ordered), "p50": at(0.5), "p95": at(0.95)}
