"""Crash buckets: one signature per bug, however many machines, builds and address layouts report it.

How a signature is made is ``retrace_server.reports.stacks``; this module
keeps the buckets in SQLite beside the statistics (``problems.db`` in
SaveDir).  Every report and retrace is one row of ``occurrences`` (kept
ReportRetention days); what the pages and views count is kept in
aggregates written in the same transaction, so that a listing reads a page
of buckets and a window of days, never every report: per bucket its count,
dates, releases, architectures and versions; per stack and day the count
by release, architecture and version (``daily``).  With a million reports
in fifty thousand buckets, a first page, a bucket page and a new report
each stay well under 100 ms (``bench/problems.py``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrace_server import locking
from retrace_server.lru import LRU
from retrace_server.packaging.versions import compare_versions
from retrace_server.reports.stacks import Stack

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from retrace_server.config import Config
    from retrace_server.reports.rules import Rules

DB_NAME = "problems.db"
# What a bucket keeps of a backtrace (its crash thread): a report's 13 KB must not become a megabyte on disk.
MAX_STORED_BACKTRACE = 64 * 1024
# New symbol-cache rows one report may add: a report of random offsets in known modules must not fill the disk.
MAX_NEW_SYMBOLS = 512
# The symbol cache's rows at most; cleanup trims the oldest beyond it.
MAX_SYMBOLS = 2_000_000
# Reports kept to symbolize again at most (the newest): each one is tried whenever its release's index changes.
MAX_PENDING = 100_000
# What the symbol cache says of an offset, innermost first: (function, source file, line).
Place = tuple[str | None, str | None, int | None]
# Symbol-cache rows a web process also keeps in memory (a few hundred bytes each).
MEMORY_SYMBOLS = 65_536
# Days of per-day counts kept: the longest view (366 days) and the window before it, for its growth.
DAILY_DAYS = 2 * 366
# A frame line of gdb's backtrace, or of the one a report is stored as (its inlined frames say " [inlined]").
_GDB_FRAME = re.compile(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(?P<function>\S.*?) \(.*?(?: at \S+:(?P<line>\d+))?"
                        r"(?: \[inlined\])?$", re.M)


def stored_backtrace(text: str) -> str:
    """``text`` cut at MAX_STORED_BACKTRACE (at a line), saying so."""
    if len(text) <= MAX_STORED_BACKTRACE:
        return text
    cut = text.rfind("\n", 0, MAX_STORED_BACKTRACE - 64) + 1
    return text[:cut] + f"(the rest of the backtrace, {len(text) - cut} characters, is not kept)\n"


def gdb_crash_thread(backtrace: str) -> str:
    """The crashing thread (``Thread 1``) of a retrace's gdb output: its header, frames and their locals."""
    start = backtrace.find("\nThread 1 ")
    if start < 0:
        return ""
    lines = backtrace[start + 1:].splitlines()
    kept = [lines[0]]
    for line in lines[1:]:
        if not re.match(r"#\d+ |\s+\S|No locals\.|No symbol table info available\.", line):
            break
        kept.append(line)
    return "\n".join(kept) + "\n"


def gdb_crash_thread_functions(backtrace: str) -> list[str]:
    """The function names of the crashing thread's frames that have a source line, innermost first (all its
    frames when none has): see ``located_functions``."""
    frames = [(match["function"], bool(match["line"])) for match in _GDB_FRAME.finditer(gdb_crash_thread(backtrace))]
    return located_functions(frames)


def located_functions(frames: list[tuple[str, bool]]) -> list[str]:
    """``[(function, has a source line)]`` -> the functions that have one (all when none has).

    What a signature may rest on: a frame with a source line was read from
    debuginfo, which a retrace and a symbolized report read alike; without
    one, gdb still names a function from the library's symbol table where a
    report's frame stays unnamed, and the two would differ.
    """
    located = [function for function, has_line in frames if has_line]
    return located or [function for function, _ in frames]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    bthash TEXT PRIMARY KEY, executable TEXT NOT NULL, signature TEXT NOT NULL, backtrace TEXT NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, count INTEGER NOT NULL, full_task TEXT, component TEXT,
    problem_type TEXT NOT NULL DEFAULT 'core', releases TEXT NOT NULL DEFAULT ' ',
    architectures TEXT NOT NULL DEFAULT ' ', versions TEXT NOT NULL DEFAULT ' ', bugs INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS stacks (
    id INTEGER PRIMARY KEY, digest TEXT NOT NULL, bthash TEXT NOT NULL, stack TEXT NOT NULL, count INTEGER NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, full_task TEXT, backtrace TEXT NOT NULL,
    UNIQUE (digest, bthash));
CREATE INDEX IF NOT EXISTS stacks_bucket ON stacks (bthash);
CREATE TABLE IF NOT EXISTS daily (
    stack INTEGER NOT NULL, day INTEGER NOT NULL, release TEXT NOT NULL, arch TEXT NOT NULL, version TEXT NOT NULL,
    count INTEGER NOT NULL, bthash TEXT NOT NULL, PRIMARY KEY (stack, day, release, arch, version)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS daily_window ON daily (day, bthash, release, arch, count);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS occurrences (
    id INTEGER PRIMARY KEY, bthash TEXT NOT NULL REFERENCES buckets(bthash), time REAL NOT NULL,
    kind TEXT NOT NULL, package TEXT, version TEXT, release TEXT, arch TEXT, task_id TEXT, stack INTEGER);
CREATE INDEX IF NOT EXISTS occurrences_bucket ON occurrences (bthash, time);
CREATE TABLE IF NOT EXISTS pending (
    occurrence INTEGER PRIMARY KEY, release TEXT NOT NULL, report TEXT NOT NULL, index_digest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS component_versions (
    component TEXT NOT NULL, version TEXT NOT NULL, first_seen REAL NOT NULL, PRIMARY KEY (component, version));
CREATE TABLE IF NOT EXISTS attachments (
    id INTEGER PRIMARY KEY, bthash TEXT NOT NULL REFERENCES buckets(bthash), type TEXT NOT NULL,
    value TEXT NOT NULL, who TEXT, time REAL NOT NULL, UNIQUE (bthash, type, value));
CREATE TABLE IF NOT EXISTS symbols (
    build_id TEXT NOT NULL, offset INTEGER NOT NULL, locations TEXT NOT NULL, PRIMARY KEY (build_id, offset));
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS buckets_count ON buckets (count DESC, last_seen DESC);
CREATE INDEX IF NOT EXISTS buckets_component ON buckets (component, count DESC);
"""
# The layout this code writes (PRAGMA user_version); older databases are brought to it when opened.
_LAYOUT = 2
# Attachments that are bugs (the rest are e-mail addresses and comments).
BUG_KINDS = ("RHBZ", "url")
_BUCKET_KEYS = ("bthash", "executable", "signature", "backtrace", "first_seen", "last_seen", "count", "full_task",
                "component", "problem_type", "releases", "architectures", "versions", "bugs")
_SETS = ("releases", "architectures", "versions")
# What counting a report in a bucket reads of it: not its stored backtrace (up to 64 KiB).
_COUNTING_KEYS = ("count", "full_task", *_SETS)


def _day(when: float) -> int:
    return int(when // 86400)


def _words(text: str | None) -> list[str]:
    """A bucket's set column (`` a b ``) as a list."""
    return (text or "").split()


def _in_range(versions: str, low: str | None, high: str | None) -> bool:
    """Whether one of a bucket's versions is within ``[low, high]`` (the SQL function ``in_versions``)."""
    return any((low is None or compare_versions(version, low) >= 0)
               and (high is None or compare_versions(version, high) <= 0) for version in _words(versions))


@dataclasses.dataclass(frozen=True)
class View:
    """A triage view of the buckets: only a release's, a component's or an architecture's, with a version in
    ``[version_from, version_to]``, counted over the last ``days`` (whole UTC days, today included), sorted by
    all reports (``total``), the window's (``window``) or its growth over the window before (``growth``)."""

    release: str | None = None
    component: str | None = None
    arch: str | None = None
    days: int = 7
    sort: str = "total"
    now: float = dataclasses.field(default_factory=time.time)
    version_from: str | None = None
    version_to: str | None = None


@dataclasses.dataclass(frozen=True)
class Recorded:
    """Where a report or retrace was counted."""

    bthash: str
    signature: str
    before: dict[str, Any] | None  # the bucket's count, full_task and sets as they were (None: new)
    occurrence: int
    count: int  # the bucket's, this one included
    full_task: str | None  # the bucket's full retrace, if any


# The symbol cache's rows a process read or wrote last, shared by its threads, by (database path, build-id,
# offset): a known crash's report is symbolized without a query (and without decoding a JSON text per frame,
# which cost more than the query). Forgotten for a path when the file there is replaced (kept_open notices).
_MEMORY: LRU[tuple[str, str, int], list[Place]] = LRU(MEMORY_SYMBOLS)
# Each thread's connections kept open by kept_open(), per database path.
_KEPT = threading.local()


class BucketDB:
    """The buckets and their occurrences; one connection per use (or per thread, kept_open), WAL so that
    readers never wait."""

    def __init__(self, path: Path) -> None:
        self.kept = False
        self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.file = str(path)
        self.inode = os.stat(path).st_ino
        self.db.create_function("in_versions", 3, _in_range, deterministic=True)
        if self._layout() < _LAYOUT:
            with self._transaction():  # one process upgrades; the others find it done
                if self._layout() < _LAYOUT:
                    self._upgrade()

    def _layout(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    @classmethod
    def for_config(cls, config: Config) -> BucketDB:
        return cls(Path(config.SaveDir) / DB_NAME)

    @classmethod
    def kept_open(cls, config: Config) -> BucketDB:
        """This thread's connection to the config's problems.db, kept open for its next requests: opening one
        (and the checkpoint SQLite runs when the last one closes) cost more than a known crash's whole report.
        Opened anew when the file was replaced or removed since (a restored backup, a new spool)."""
        path = Path(config.SaveDir) / DB_NAME
        kept: dict[str, BucketDB] = _KEPT.__dict__.setdefault("connections", {})
        found = kept.pop(str(path), None)
        if found is not None:
            try:
                current = os.stat(path).st_ino == found.inode
            except FileNotFoundError:
                current = False
            if current and not found.db.in_transaction:
                kept[str(path)] = found
                return found
            found.db.close()
            if not current:
                _MEMORY.forget(lambda key: key[0] == str(path))
        opened = cls(path)
        opened.kept = True
        kept[str(path)] = opened
        return opened

    def __enter__(self) -> BucketDB:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.kept:
            self.db.close()

    def _upgrade(self) -> None:
        """Create the tables, or bring a database of layout 1 (no stacks, no aggregates) to this one: each
        bucket's stored crash thread becomes its one stack, its stored reports its days."""
        exists = self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'buckets'").fetchone() is not None
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(buckets)")} if exists else set()
        if exists:
            added = {"component": "TEXT", "problem_type": "TEXT NOT NULL DEFAULT 'core'",
                     "releases": "TEXT NOT NULL DEFAULT ' '", "architectures": "TEXT NOT NULL DEFAULT ' '",
                     "versions": "TEXT NOT NULL DEFAULT ' '", "bugs": "INTEGER NOT NULL DEFAULT 0"}
            for column, declared in added.items():
                if column not in columns:
                    self.db.execute(f"ALTER TABLE buckets ADD COLUMN {column} {declared}")
            if "stack" not in {row[1] for row in self.db.execute("PRAGMA table_info(occurrences)")}:
                self.db.execute("ALTER TABLE occurrences ADD COLUMN stack INTEGER")
        for statement in (_SCHEMA + _INDEXES).split(";"):
            if statement.strip():
                self.db.execute(statement)
        if exists:
            rows = self.db.execute("SELECT bthash, executable, signature, backtrace, count, first_seen, last_seen, "
                                   "full_task, problem_type FROM buckets").fetchall()
            for bthash, executable, text, backtrace, count, first, last, full_task, kind in rows:
                stack = _legacy_stack(kind, executable, text, backtrace)
                stack_id = self.db.execute(
                    "INSERT INTO stacks (digest, bthash, stack, count, first_seen, last_seen, full_task, backtrace) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (stack.digest, bthash, stack.encoded(), count, first, last, full_task, backtrace)).lastrowid
                self.db.execute("UPDATE occurrences SET stack = ? WHERE bthash = ?", (stack_id, bthash))
                self.db.execute(
                    "INSERT INTO daily SELECT stack, CAST(time / 86400 AS INTEGER) AS d, COALESCE(release, ''), "
                    "COALESCE(arch, ''), COALESCE(version, ''), COUNT(*), bthash FROM occurrences WHERE bthash = ? "
                    "GROUP BY d, release, arch, version", (bthash,))
                self._count_bugs(bthash)
                self._refresh(bthash, keep_count=True)
            self.db.execute("INSERT INTO counters SELECT kind, COUNT(*) FROM occurrences GROUP BY kind")
        self.db.execute(f"PRAGMA user_version = {_LAYOUT}")

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return locking.sqlite_write(self.db, f"{self.file}.lock")

    def bucket(self, bthash: str, keys: Sequence[str] = _BUCKET_KEYS) -> dict[str, Any] | None:
        """The bucket's row (its ``keys``, which hold the sets); its releases, architectures and versions as
        lists."""
        row = self.db.execute(f"SELECT {', '.join(keys)} FROM buckets WHERE bthash = ?", (bthash,)).fetchone()
        if row is None:
            return None
        found = dict(zip(keys, row))
        return {**found, **{key: _words(found[key]) for key in _SETS}}

    # -- counting --------------------------------------------------------------

    def record(self, stack: Stack, rules: Rules, backtrace: str, kind: str, package: str | None = None,
               version: str | None = None, release: str | None = None, arch: str | None = None,
               task_id: str | None = None, when: float | None = None, component: str | None = None) -> Recorded:
        """Count one report or retrace of ``stack`` in the bucket ``rules`` sign it into.

        ``component`` is the package's name as the release's index knows it
        (None: unknown), ``version`` its version-release; the backtrace (the
        crash thread) is cut at MAX_STORED_BACKTRACE.
        """
        with self._transaction():
            return self._record(stack, rules, stored_backtrace(backtrace), kind, package, version, release, arch,
                                task_id, when or time.time(), component)

    def _record(self, stack: Stack, rules: Rules, backtrace: str, kind: str, package: str | None,
                version: str | None, release: str | None, arch: str | None, task_id: str | None, when: float,
                component: str | None, moving: bool = False) -> Recorded:
        bthash, text = stack.signed(rules)
        full_task = task_id if kind == "retrace" else None
        before = self.bucket(bthash, _COUNTING_KEYS)
        if before is None:
            self.db.execute("INSERT INTO buckets (bthash, executable, signature, backtrace, first_seen, last_seen, "
                            "count, full_task, component, problem_type) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                            (bthash, stack.executable, text, backtrace, when, when, full_task, component, stack.kind))
        # A full retrace's backtrace (with variables) replaces a coreless one's.
        count, bucket_task = self.db.execute(
            "UPDATE buckets SET count = count + 1, first_seen = MIN(first_seen, ?), "
            "last_seen = MAX(last_seen, ?), full_task = COALESCE(?, full_task), "
            "backtrace = CASE WHEN ? THEN ? ELSE backtrace END, component = COALESCE(component, ?), "
            "releases = ?, architectures = ?, versions = ? WHERE bthash = ? RETURNING count, full_task",
            (when, when, full_task, full_task is not None, backtrace, component,
             *(_added(before, column, value) for column, value in
               (("releases", release), ("architectures", arch), ("versions", version))), bthash)).fetchone()
        stack_id = self._count_stack(stack, bthash, when, full_task, backtrace)
        self.db.execute("INSERT INTO daily VALUES (?, ?, ?, ?, ?, 1, ?) ON CONFLICT DO UPDATE SET count = count + 1",
                        (stack_id, _day(when), release or "", arch or "", version or "", bthash))
        if component and version:
            self.db.execute("INSERT OR IGNORE INTO component_versions VALUES (?, ?, ?)", (component, version, when))
        if not moving:
            self.db.execute("INSERT INTO counters VALUES (?, 1) ON CONFLICT DO UPDATE SET value = value + 1", (kind,))
        occurrence = self.db.execute(
            "INSERT INTO occurrences (bthash, time, kind, package, version, release, arch, task_id, stack) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (bthash, when, kind, package, version, release, arch, task_id, stack_id)).lastrowid
        assert occurrence is not None
        return Recorded(bthash, text, before, occurrence, count, bucket_task)

    def _count_stack(self, stack: Stack, bthash: str, when: float, full_task: str | None, backtrace: str) -> int:
        row = self.db.execute("SELECT id FROM stacks WHERE digest = ? AND bthash = ?", (stack.digest, bthash)).fetchone()
        if row is None:
            created = self.db.execute(
                "INSERT INTO stacks (digest, bthash, stack, count, first_seen, last_seen, full_task, backtrace) "
                "VALUES (?, ?, ?, 1, ?, ?, ?, ?)",
                (stack.digest, bthash, stack.encoded(), when, when, full_task, backtrace)).lastrowid
            assert created is not None
            return created
        self.db.execute("UPDATE stacks SET count = count + 1, first_seen = MIN(first_seen, ?), "
                        "last_seen = MAX(last_seen, ?), full_task = COALESCE(?, full_task), "
                        "backtrace = CASE WHEN ? THEN ? ELSE backtrace END WHERE id = ?",
                        (when, when, full_task, full_task is not None, backtrace, row[0]))
        return int(row[0])

    def move(self, occurrence: int, stack: Stack, rules: Rules, backtrace: str) -> Recorded | None:
        """Count a stored report again as ``stack`` (symbolized anew): out of its bucket, into the one ``rules``
        sign the stack into. None when the report is no longer stored or its stack did not change."""
        with self._transaction():
            row = self.db.execute("SELECT bthash, time, kind, package, version, release, arch, task_id, stack "
                                  "FROM occurrences WHERE id = ?", (occurrence,)).fetchone()
            if row is None:
                return None
            old_bthash, when, kind, package, version, release, arch, task_id, old_stack = row
            same = self.db.execute("SELECT digest FROM stacks WHERE id = ?", (old_stack,)).fetchone()
            if same is not None and same[0] == stack.digest and stack.signed(rules)[0] == old_bthash:
                return None  # symbolized no further than before
            component = self.db.execute("SELECT component FROM buckets WHERE bthash = ?", (old_bthash,)).fetchone()
            self.db.execute("UPDATE stacks SET count = count - 1 WHERE id = ?", (old_stack,))
            self.db.execute("UPDATE daily SET count = count - 1 WHERE stack = ? AND day = ? AND release = ? AND "
                            "arch = ? AND version = ?", (old_stack, _day(when), release or "", arch or "",
                                                          version or ""))
            self.db.execute("DELETE FROM daily WHERE stack = ? AND count <= 0", (old_stack,))
            self.db.execute("DELETE FROM stacks WHERE id = ? AND count <= 0", (old_stack,))
            self.db.execute("DELETE FROM occurrences WHERE id = ?", (occurrence,))
            self._refresh(old_bthash)  # its count, dates and sets from the stacks left
            recorded = self._record(stack, rules, stored_backtrace(backtrace), kind, package, version, release,
                                    arch, task_id, when, component[0] if component else None, moving=True)
            self.db.execute("UPDATE pending SET occurrence = ? WHERE occurrence = ?", (recorded.occurrence, occurrence))
            return recorded

    def _count_bugs(self, bthash: str) -> None:
        """The bucket's bug count from its attachments (after they moved with its stacks)."""
        self.db.execute(f"UPDATE buckets SET bugs = (SELECT COUNT(*) FROM attachments a WHERE a.bthash = ? AND "
                        f"a.type IN {BUG_KINDS}) WHERE bthash = ?", (bthash, bthash))

    def _refresh(self, bthash: str, keep_count: bool = False) -> None:
        """A bucket's aggregates computed again from its stacks and days (after stacks moved); a bucket left
        without a stack goes, with its attachments."""
        stacks = self.db.execute("SELECT COALESCE(SUM(count), 0), MIN(first_seen), MAX(last_seen), MAX(full_task) "
                                 "FROM stacks WHERE bthash = ?", (bthash,)).fetchone()
        if not stacks[0] and not keep_count:
            for table in ("attachments", "buckets"):
                self.db.execute(f"DELETE FROM {table} WHERE bthash = ?", (bthash,))
            return
        sets = [" " + " ".join(sorted({value for (value,) in self.db.execute(
            f"SELECT DISTINCT d.{column} FROM daily d JOIN stacks s ON s.id = d.stack WHERE s.bthash = ?",
            (bthash,)) if value})) + " " for column in ("release", "arch", "version")]
        full = self.db.execute("SELECT backtrace FROM stacks WHERE bthash = ? ORDER BY full_task IS NULL, count DESC "
                               "LIMIT 1", (bthash,)).fetchone()
        if keep_count:
            self.db.execute("UPDATE buckets SET releases = ?, architectures = ?, versions = ? WHERE bthash = ?",
                            (*sets, bthash))
            return
        self.db.execute("UPDATE buckets SET count = ?, first_seen = ?, last_seen = ?, full_task = ?, backtrace = ?, "
                        "releases = ?, architectures = ?, versions = ? WHERE bthash = ?",
                        (*stacks, full[0], *sets, bthash))

    # -- attachments -------------------------------------------------------------

    def attach(self, bthash: str, kind: str, value: str, who: str | None = None, when: float | None = None) -> bool:
        """Record what the bucket was reported as (a bug, an e-mail to notify, a comment); whether it is new
        (the same attachment twice is kept once). KeyError when there is no such bucket."""
        with self._transaction():
            if self.bucket(bthash) is None:
                raise KeyError(bthash)
            added = self.db.execute("INSERT OR IGNORE INTO attachments (bthash, type, value, who, time) "
                                    "VALUES (?, ?, ?, ?, ?)",
                                    (bthash, kind, value, who, when or time.time())).rowcount == 1
            if added and kind in BUG_KINDS:
                self.db.execute("UPDATE buckets SET bugs = bugs + 1 WHERE bthash = ?", (bthash,))
            return added

    def attachments(self, bthash: str, kinds: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """The bucket's attachments, oldest first (only ``kinds`` when given)."""
        rows = self.db.execute("SELECT type, value, who, time FROM attachments WHERE bthash = ? ORDER BY time, id",
                               (bthash,)).fetchall()
        return [dict(zip(("type", "value", "who", "time"), row)) for row in rows if kinds is None or row[0] in kinds]

    # -- signature rules -----------------------------------------------------------

    def rebucket(self, rules_for: Callable[[str], Rules]) -> tuple[int, int]:
        """Sign every stack again under ``rules_for(kind)``: a stack whose bucket changed moves (its counts,
        days and reports with it), buckets whose stacks now sign alike merge, a bucket whose stacks no longer
        do splits; bug links and notes go with every part. Returns ``(buckets before, buckets after)``."""
        with self._transaction():
            before = self.db.execute("SELECT COUNT(*) FROM buckets").fetchone()[0]
            touched: set[str] = set()
            rows = self.db.execute("SELECT id, digest, bthash, stack FROM stacks ORDER BY first_seen").fetchall()
            for stack_id, digest, old, encoded in rows:
                stack = Stack.decoded(encoded)
                new, text = stack.signed(rules_for(stack.kind))
                if new == old:
                    self.db.execute("UPDATE buckets SET signature = ? WHERE bthash = ?", (text, old))
                    continue
                touched |= {old, new}
                if self.db.execute("SELECT 1 FROM buckets WHERE bthash = ?", (new,)).fetchone() is None:
                    self.db.execute("INSERT INTO buckets (bthash, executable, signature, backtrace, first_seen, "
                                    "last_seen, count, component, problem_type) SELECT ?, executable, ?, backtrace, "
                                    "first_seen, last_seen, 0, component, problem_type FROM buckets WHERE bthash = ?",
                                    (new, text, old))
                self.db.execute("INSERT OR IGNORE INTO attachments (bthash, type, value, who, time) "
                                "SELECT ?, type, value, who, time FROM attachments WHERE bthash = ?", (new, old))
                into = self.db.execute("SELECT id FROM stacks WHERE digest = ? AND bthash = ?", (digest, new)).fetchone()
                if into is None:
                    self.db.execute("UPDATE stacks SET bthash = ? WHERE id = ?", (new, stack_id))
                    self.db.execute("UPDATE daily SET bthash = ? WHERE stack = ?", (new, stack_id))
                else:  # the same stack, counted in both before a rule change: one row again
                    self._merge_stacks(stack_id, into[0])
                self.db.execute("UPDATE occurrences SET bthash = ? WHERE stack = ?", (new, into[0] if into else stack_id))
            for bthash in touched:
                self._count_bugs(bthash)
                self._refresh(bthash)
            after = self.db.execute("SELECT COUNT(*) FROM buckets").fetchone()[0]
        return before, after

    def _merge_stacks(self, source: int, into: int) -> None:
        self.db.execute("UPDATE stacks SET count = count + (SELECT count FROM stacks WHERE id = ?), "
                        "first_seen = MIN(first_seen, (SELECT first_seen FROM stacks WHERE id = ?)), "
                        "last_seen = MAX(last_seen, (SELECT last_seen FROM stacks WHERE id = ?)), "
                        "full_task = COALESCE(full_task, (SELECT full_task FROM stacks WHERE id = ?)) WHERE id = ?",
                        (source, source, source, source, into))
        self.db.execute("INSERT INTO daily SELECT ?, day, release, arch, version, count, (SELECT bthash FROM stacks "
                        "WHERE id = ?) FROM daily WHERE stack = ? "
                        "ON CONFLICT DO UPDATE SET count = daily.count + excluded.count", (into, into, source))
        self.db.execute("DELETE FROM daily WHERE stack = ?", (source,))
        self.db.execute("UPDATE occurrences SET stack = ? WHERE stack = ?", (into, source))
        self.db.execute("DELETE FROM stacks WHERE id = ?", (source,))

    # -- reports symbolized in part ------------------------------------------------

    def keep_pending(self, occurrence: int, release: str, report: dict[str, Any], index_digest: str) -> None:
        """Keep a report whose crash thread could not all be symbolized from the release's index as it is now
        (``index_digest``), to symbolize it again once the index changes."""
        with self._transaction():
            self.db.execute("INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?)",
                            (occurrence, release, json.dumps(report, separators=(",", ":")), index_digest))

    def pending(self, release: str | None = None) -> list[tuple[int, str, dict[str, Any], str]]:
        """``[(occurrence, release, report, index digest)]`` kept to symbolize again (``release``'s only)."""
        rows = self.db.execute("SELECT occurrence, release, report, index_digest FROM pending WHERE ? IS NULL OR "
                               "release = ? ORDER BY occurrence", (release, release)).fetchall()
        return [(occurrence, name, json.loads(report), digest) for occurrence, name, report, digest in rows]

    def tried_pending(self, occurrence: int, index_digest: str | None) -> None:
        """A kept report was symbolized again from the index ``index_digest``; None: it is whole now."""
        with self._transaction():
            if index_digest is None:
                self.db.execute("DELETE FROM pending WHERE occurrence = ?", (occurrence,))
            else:
                self.db.execute("UPDATE pending SET index_digest = ? WHERE occurrence = ?", (index_digest, occurrence))

    # -- symbol cache ----------------------------------------------------------------

    def symbols(self, keys: set[tuple[str, int]]) -> dict[tuple[str, int], list[Place]]:
        """``{(build-id, offset): [(function, file, line), ...]}`` for the keys symbolized before (debuginfo
        of a build never changes, so neither does what an offset in it means)."""
        remembered = {(build_id, offset): locations for (_, build_id, offset), locations
                      in _MEMORY.get_many((self.file, *key) for key in keys).items()}
        by_build_id: dict[str, set[int]] = {}
        for build_id, offset in keys - remembered.keys():
            by_build_id.setdefault(build_id, set()).add(offset)
        found: dict[tuple[str, int], list[Place]] = {}
        for build_id, offsets in by_build_id.items():
            ordered = sorted(offsets)
            for start in range(0, len(ordered), 500):  # SQLite's limit on parameters
                chunk = ordered[start:start + 500]
                rows = self.db.execute(f"SELECT offset, locations FROM symbols WHERE build_id = ? AND offset IN "
                                       f"({', '.join('?' * len(chunk))})", (build_id, *chunk))
                for offset, locations in rows:
                    found[(build_id, offset)] = [tuple(location) for location in json.loads(locations)]
        _MEMORY.put_many(((self.file, *key), locations) for key, locations in found.items())
        return {**remembered, **found}

    def remember_symbols(self, symbolized: dict[tuple[str, int], list[Place]]) -> None:
        """Keep ``{(build-id, offset): [(function, file, line), ...]}`` (the first MAX_NEW_SYMBOLS of them)."""
        kept = dict(list(symbolized.items())[:MAX_NEW_SYMBOLS])
        if not kept:
            return
        with self._transaction():
            self.db.executemany("INSERT OR REPLACE INTO symbols VALUES (?, ?, ?)",
                                [(build_id, offset, json.dumps(locations)) for (build_id, offset), locations in kept.items()])
        _MEMORY.put_many(((self.file, *key), locations) for key, locations in kept.items())

    # -- views ---------------------------------------------------------------------

    def buckets(self, limit: int = 100, offset: int = 0, has_bug: bool | None = None,
                view: View | None = None) -> list[dict[str, Any]]:
        """Buckets of ``view`` (``has_bug``: only those reported as a bug, or only those not), with their
        releases, architectures and versions, and how many reports and retraces came in the view's window
        (``recent``) and in the window before (``before``)."""
        view = view or View()
        today = _day(view.now)
        since = today - view.days + 1
        conditions: list[str] = []
        arguments: list[str | None] = []
        if has_bug is not None:
            conditions.append("b.bugs > 0" if has_bug else "b.bugs = 0")
        if view.component is not None:
            conditions.append("b.component = ?")
            arguments.append(view.component)
        for column, value in (("releases", view.release), ("architectures", view.arch)):
            if value is not None:
                conditions.append(f"instr(b.{column}, ?) > 0")
                arguments.append(f" {value} ")
        if view.version_from is not None or view.version_to is not None:
            conditions.append("in_versions(b.versions, ?, ?)")
            arguments += [view.version_from, view.version_to]
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        for number in range(len(arguments)):
            where = where.replace("?", f":a{number}", 1)
        parameters: dict[str, Any] = {
            "since": since, "start": since - view.days, "today": today, "release": view.release, "arch": view.arch,
            "limit": limit, "offset": offset, **{f"a{number}": value for number, value in enumerate(arguments)}}
        # An index-only walk of the window's days (daily_window), whatever the number of reports before it.
        window = ("SELECT d.bthash, SUM(CASE WHEN d.day >= :since THEN d.count ELSE 0 END) AS recent, "
                  "SUM(CASE WHEN d.day < :since THEN d.count ELSE 0 END) AS before FROM daily d "
                  "WHERE d.day >= :start AND d.day <= :today "
                  "AND (:release IS NULL OR d.release = :release) AND (:arch IS NULL OR d.arch = :arch)")
        columns = ("b.bthash, b.executable, b.component, b.signature, b.first_seen, b.last_seen, b.count, "
                   "b.full_task, b.releases, b.architectures, b.versions, b.bugs")
        if view.sort == "total":
            # The page first (an index walk), then its window: never the whole table's days.
            page = self.db.execute(f"SELECT {columns}, b.problem_type FROM buckets b {where}"
                                   "ORDER BY b.count DESC, b.last_seen DESC LIMIT :limit OFFSET :offset",
                                   parameters).fetchall()
            shown = {f"h{number}": row[0] for number, row in enumerate(page)}
            counts = {bthash: (recent, before) for bthash, recent, before in self.db.execute(
                f"{window} AND d.bthash IN ({', '.join(':' + name for name in shown) or 'NULL'}) GROUP BY d.bthash",
                {**parameters, **shown})}
            rows = [(*row[:-1], *counts.get(row[0], (0, 0)), row[-1]) for row in page]
        else:
            order = {"window": "recent DESC, b.count DESC", "growth": "recent - before DESC, recent DESC"}[view.sort]
            rows = self.db.execute(
                f"WITH w AS ({window} GROUP BY d.bthash) SELECT {columns}, COALESCE(w.recent, 0) AS recent, "
                f"COALESCE(w.before, 0) AS before, b.problem_type FROM buckets b LEFT JOIN w ON w.bthash = b.bthash "
                f"{where}ORDER BY {order}, b.last_seen DESC LIMIT :limit OFFSET :offset", parameters).fetchall()
        keys = ("bthash", "executable", "component", "signature", "first_seen", "last_seen", "count", "full_task",
                "releases", "architectures", "versions", "bugs", "recent", "before", "type")
        listed = [dict(zip(keys, row)) for row in rows]
        for row in listed:
            for key in ("releases", "architectures", "versions"):
                row[key] = ",".join(_words(row[key])) or None
        return listed

    def occurrences(self, bthash: str, limit: int = 200) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT time, kind, package, version, release, arch, task_id FROM occurrences "
                               "WHERE bthash = ? ORDER BY time DESC LIMIT ?", (bthash, limit)).fetchall()
        keys = ("time", "kind", "package", "version", "release", "arch", "task_id")
        return [dict(zip(keys, row)) for row in rows]

    def per_day(self, bthash: str, days: int = 30, now: float | None = None) -> list[tuple[str, int]]:
        """``[(day, count)]`` of the last ``days`` days, oldest first."""
        start = _day(now or time.time()) - days + 1
        counts = dict(self.db.execute(
            "SELECT d.day, SUM(d.count) FROM daily d JOIN stacks s ON s.id = d.stack WHERE s.bthash = ? "
            "AND d.day >= ? GROUP BY d.day", (bthash, start)).fetchall())
        return [(time.strftime("%Y-%m-%d", time.gmtime(day * 86400)), counts.get(day, 0))
                for day in range(start, start + days)]

    def versions(self, bthash: str) -> dict[str, int]:
        """``{version: reports}`` of the bucket (those the release's index confirmed)."""
        return dict(self.db.execute(
            "SELECT d.version, SUM(d.count) FROM daily d JOIN stacks s ON s.id = d.stack WHERE s.bthash = ? "
            "AND d.version != '' GROUP BY d.version", (bthash,)).fetchall())

    def component_versions(self, component: str) -> list[str]:
        """Every version of ``component`` any report or retrace named (confirmed by its release's index)."""
        return [version for (version,) in self.db.execute(
            "SELECT version FROM component_versions WHERE component = ?", (component,))]

    def totals(self) -> dict[str, int]:
        """Reports ever received (a counter: cleanup forgetting old reports does not lower it) and buckets now."""
        reports, buckets = self.db.execute(
            "SELECT (SELECT COALESCE(MAX(value), 0) FROM counters WHERE name = 'report'), "
            "(SELECT COUNT(*) FROM buckets)").fetchone()
        return {"reports": reports, "buckets": buckets}

    # -- cleanup -------------------------------------------------------------------

    def forget_before(self, when: float) -> int:
        """Remove the occurrences older than ``when`` (and the reports kept to symbolize again among them); the
        buckets' counts and days stay. Returns how many."""
        with self._transaction():
            self.db.execute("DELETE FROM pending WHERE occurrence IN (SELECT id FROM occurrences WHERE time < ?)",
                            (when,))
            self.db.execute("DELETE FROM daily WHERE day < ?", (_day(when) - DAILY_DAYS,))
            self.db.execute("DELETE FROM pending WHERE occurrence IN (SELECT occurrence FROM pending ORDER BY "
                            "occurrence DESC LIMIT -1 OFFSET ?)", (MAX_PENDING,))
            return self.db.execute("DELETE FROM occurrences WHERE time < ?", (when,)).rowcount

    def forget_buckets_before(self, when: float) -> int:
        """Remove the buckets last seen before ``when`` with everything kept of them; returns how many."""
        with self._transaction():
            old = "(SELECT bthash FROM buckets WHERE last_seen < ?)"
            self.db.execute(f"DELETE FROM pending WHERE occurrence IN (SELECT id FROM occurrences WHERE bthash IN {old})",
                            (when,))
            self.db.execute(f"DELETE FROM daily WHERE stack IN (SELECT id FROM stacks WHERE bthash IN {old})", (when,))
            for table in ("occurrences", "attachments", "stacks"):
                self.db.execute(f"DELETE FROM {table} WHERE bthash IN {old}", (when,))
            return self.db.execute("DELETE FROM buckets WHERE last_seen < ?", (when,)).rowcount

    def trim_symbols(self, keep: int = MAX_SYMBOLS) -> int:
        """Forget the oldest symbol-cache rows beyond ``keep``; returns how many."""
        with self._transaction():
            return self.db.execute("DELETE FROM symbols WHERE rowid <= (SELECT MAX(rowid) FROM symbols) - ?",
                                   (keep,)).rowcount

    def vacuum(self) -> bool:
        """Give the pages deleted rows left back to the file system, once they are a quarter of the file
        (VACUUM rewrites the whole database and holds writers back meanwhile); whether it ran."""
        free, pages = (self.db.execute(f"PRAGMA {name}").fetchone()[0] for name in ("freelist_count", "page_count"))
        if free * 4 < pages:
            return False
        self.db.execute("VACUUM")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # VACUUM wrote the whole database through the WAL
        return True


def _added(before: dict[str, Any] | None, column: str, value: str | None) -> str:
    """A bucket's set column with ``value`` in it."""
    words = list(before[column]) if before is not None else []
    if value and value not in words:
        words.append(value)
    return " " + " ".join(words) + " " if words else " "


def _legacy_stack(kind: str, executable: str, signature_text: str, backtrace: str) -> Stack:
    """The stack of a bucket stored before stacks were kept: a core's from its stored crash thread, the other
    kinds' from their signature's lines (all that is left of their frames)."""
    if kind == "core":
        return Stack.core(executable, gdb_crash_thread_functions("\n" + backtrace))
    lines = signature_text.splitlines()
    if kind == "python":
        return Stack("python", "python", tuple((line.split(":", 1)[-1], line.split(":", 1)[0])
                                               for line in lines[2:]), lines[1] if len(lines) > 1 else "")
    return Stack(kind, kind, tuple((line, None) for line in lines[1:]))
