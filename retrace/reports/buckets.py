"""Crash buckets: one signature per bug, however many machines, builds and address layouts report it.

The signature is taken from the symbolized crash thread, innermost first:
frames of the machinery every crash passes through (raise, abort, assert,
the allocator's consistency checks) are skipped from the top, glibc's
internal aliases are folded (``__GI_raise`` is ``raise``), arguments,
addresses, files and lines are left out, and the first names the rules
count (``retrace_server.reports.rules``) with the executable's name are hashed (SHA-1, hex, like
FAF's ``bthash``).  A coreless report (symbolized here) and a full gdb
retrace of the same crash give the same names, so they land in the same
bucket; ASLR, another build of the same source or another machine change
addresses only.  Buckets live in SQLite beside the statistics
(``problems.db`` in SaveDir), every report and retrace as one row.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrace_server.reports.rules import Rules, folded

if TYPE_CHECKING:
    from collections.abc import Iterator

    from retrace_server.config import Config

DB_NAME = "problems.db"
# What a bucket keeps of a backtrace (its crash thread): a report's 13 KB must not become a megabyte on disk.
MAX_STORED_BACKTRACE = 64 * 1024
# New symbol-cache rows one report may add: a report of random offsets in known modules must not fill the disk.
MAX_NEW_SYMBOLS = 512
# The symbol cache's rows at most; cleanup trims the oldest beyond it.
MAX_SYMBOLS = 2_000_000
DEFAULT_RULES = Rules()
# A frame line of gdb's backtrace, or of the one a report is stored as (its inlined frames say " [inlined]").
_GDB_FRAME = re.compile(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(?P<function>\S.*?) \(.*?(?: at \S+:(?P<line>\d+))?"
                        r"(?: \[inlined\])?$", re.M)


def normalized(functions: list[str], rules: Rules = DEFAULT_RULES) -> list[str]:
    """The crash thread's function names (innermost first) that tell the bug (``rules``: SignatureRules)."""
    return rules.normalized([folded(function) or "??" for function in functions])


def signature(executable: str, functions: list[str], rules: Rules = DEFAULT_RULES) -> tuple[str, str]:
    """``(bthash, the text it hashes)`` for a crash of ``executable`` with these crash-thread functions."""
    text = "\n".join([Path(executable).name, *normalized(functions, rules)])
    return hashlib.sha1(text.encode("utf-8")).hexdigest(), text


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
    problem_type TEXT NOT NULL DEFAULT 'core');
CREATE TABLE IF NOT EXISTS occurrences (
    id INTEGER PRIMARY KEY, bthash TEXT NOT NULL REFERENCES buckets(bthash), time REAL NOT NULL,
    kind TEXT NOT NULL, package TEXT, version TEXT, release TEXT, arch TEXT, task_id TEXT);
CREATE INDEX IF NOT EXISTS occurrences_bucket ON occurrences (bthash, time);
CREATE TABLE IF NOT EXISTS attachments (
    id INTEGER PRIMARY KEY, bthash TEXT NOT NULL REFERENCES buckets(bthash), type TEXT NOT NULL,
    value TEXT NOT NULL, who TEXT, time REAL NOT NULL, UNIQUE (bthash, type, value));
CREATE TABLE IF NOT EXISTS symbols (
    build_id TEXT NOT NULL, offset INTEGER NOT NULL, locations TEXT NOT NULL, PRIMARY KEY (build_id, offset));
"""


@dataclasses.dataclass(frozen=True)
class View:
    """A triage view of the buckets: only a release's, a component's or an architecture's, counted over the last
    ``days``, sorted by all reports (``total``), the window's (``window``) or its growth over the window before
    (``growth``)."""

    release: str | None = None
    component: str | None = None
    arch: str | None = None
    days: int = 7
    sort: str = "total"
    now: float = dataclasses.field(default_factory=time.time)


class BucketDB:
    """The buckets and their occurrences; one connection per use, WAL so that readers never wait."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(buckets)")}
        if "component" not in columns:
            self.db.execute("ALTER TABLE buckets ADD COLUMN component TEXT")  # a database made before it
        if "problem_type" not in columns:
            self.db.execute("ALTER TABLE buckets ADD COLUMN problem_type TEXT NOT NULL DEFAULT 'core'")

    @classmethod
    def for_config(cls, config: Config) -> BucketDB:
        return cls(Path(config.SaveDir) / DB_NAME)

    def __enter__(self) -> BucketDB:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.db.close()

    def bucket(self, bthash: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT bthash, executable, signature, backtrace, first_seen, last_seen, count, "
                              "full_task, component, problem_type FROM buckets WHERE bthash = ?", (bthash,)).fetchone()
        if row is None:
            return None
        keys = ("bthash", "executable", "signature", "backtrace", "first_seen", "last_seen", "count", "full_task",
                "component", "problem_type")
        return dict(zip(keys, row))

    def record(self, bthash: str, text: str, executable: str, backtrace: str, kind: str, package: str | None = None,
               version: str | None = None, release: str | None = None, arch: str | None = None,
               task_id: str | None = None, when: float | None = None,
               component: str | None = None, problem_type: str = "core") -> dict[str, Any] | None:
        """Count one report or retrace in its bucket; returns the bucket as it was before (None: new).

        ``executable`` is the program's file name, ``component`` its package's name as the release's index
        knows it (None: unknown); the backtrace is cut at MAX_STORED_BACKTRACE.
        """
        when = when or time.time()
        backtrace = stored_backtrace(backtrace)
        with self._transaction():
            before = self.bucket(bthash)
            if before is None:
                self.db.execute("INSERT INTO buckets VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?)",
                                (bthash, executable, text, backtrace, when, when,
                                 task_id if kind == "retrace" else None, component, problem_type))
            else:
                # A full retrace's backtrace (with variables) replaces a coreless one's.
                self.db.execute("UPDATE buckets SET count = count + 1, last_seen = MAX(last_seen, ?), "
                                "full_task = COALESCE(?, full_task), backtrace = CASE WHEN ? THEN ? ELSE backtrace END, "
                                "component = COALESCE(component, ?) WHERE bthash = ?",
                                (when, task_id if kind == "retrace" else None, kind == "retrace", backtrace,
                                 component, bthash))
            self.db.execute("INSERT INTO occurrences (bthash, time, kind, package, version, release, arch, task_id) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (bthash, when, kind, package, version, release, arch, task_id))
        return before

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def attach(self, bthash: str, kind: str, value: str, who: str | None = None, when: float | None = None) -> bool:
        """Record what the bucket was reported as (a bug, an e-mail to notify, a comment); whether it is new
        (the same attachment twice is kept once). KeyError when there is no such bucket."""
        with self._transaction():
            if self.bucket(bthash) is None:
                raise KeyError(bthash)
            return self.db.execute("INSERT OR IGNORE INTO attachments (bthash, type, value, who, time) "
                                   "VALUES (?, ?, ?, ?, ?)",
                                   (bthash, kind, value, who, when or time.time())).rowcount == 1

    def attachments(self, bthash: str, kinds: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """The bucket's attachments, oldest first (only ``kinds`` when given)."""
        rows = self.db.execute("SELECT type, value, who, time FROM attachments WHERE bthash = ? ORDER BY time, id",
                               (bthash,)).fetchall()
        return [dict(zip(("type", "value", "who", "time"), row)) for row in rows if kinds is None or row[0] in kinds]

    def rebucket(self, rules: Rules) -> tuple[int, int]:
        """Recompute every bucket's signature from its stored crash thread under ``rules``: buckets whose
        signature changed move to the new bthash, merging where it exists (counts add up, occurrences and
        attachments follow). Returns ``(buckets before, buckets after)``."""
        with self._transaction():
            before = self.db.execute("SELECT COUNT(*) FROM buckets").fetchone()[0]
            # Python exceptions and oopses keep their frames as the client named them: they stay where they are.
            rows = self.db.execute("SELECT bthash, executable, backtrace FROM buckets WHERE problem_type = 'core' "
                                   "ORDER BY first_seen").fetchall()
            for bthash, executable, backtrace in rows:
                functions = gdb_crash_thread_functions("\n" + backtrace)
                if not functions:
                    continue
                new, text = signature(executable, functions, rules)
                if new == bthash:
                    self.db.execute("UPDATE buckets SET signature = ? WHERE bthash = ?", (text, bthash))
                    continue
                if self.db.execute("SELECT 1 FROM buckets WHERE bthash = ?", (new,)).fetchone() is None:
                    self.db.execute("INSERT INTO buckets SELECT ?, executable, ?, backtrace, first_seen, last_seen, "
                                    "count, full_task, component, problem_type FROM buckets WHERE bthash = ?",
                                    (new, text, bthash))
                else:  # merged: counts add up, the dates widen, a full retrace's backtrace wins (as in record())
                    old, into = self.bucket(bthash), self.bucket(new)
                    assert old is not None and into is not None
                    keep_old_backtrace = into["full_task"] is None and old["full_task"] is not None
                    self.db.execute(
                        "UPDATE buckets SET count = ?, first_seen = ?, last_seen = ?, full_task = ?, backtrace = ?, "
                        "component = ? WHERE bthash = ?",
                        (into["count"] + old["count"], min(into["first_seen"], old["first_seen"]),
                         max(into["last_seen"], old["last_seen"]), into["full_task"] or old["full_task"],
                         old["backtrace"] if keep_old_backtrace else into["backtrace"],
                         into["component"] or old["component"], new))
                self.db.execute("UPDATE occurrences SET bthash = ? WHERE bthash = ?", (new, bthash))
                self.db.execute("INSERT OR IGNORE INTO attachments (bthash, type, value, who, time) "
                                "SELECT ?, type, value, who, time FROM attachments WHERE bthash = ?", (new, bthash))
                self.db.execute("DELETE FROM attachments WHERE bthash = ?", (bthash,))
                self.db.execute("DELETE FROM buckets WHERE bthash = ?", (bthash,))
            after = self.db.execute("SELECT COUNT(*) FROM buckets").fetchone()[0]
        return before, after

    def symbols(self, keys: set[tuple[str, int]]) -> dict[tuple[str, int], list[tuple[str, str, int]]]:
        """``{(build-id, offset): [(function, file, line), ...]}`` for the keys symbolized before (debuginfo
        of a build never changes, so neither does what an offset in it means)."""
        by_build_id: dict[str, set[int]] = {}
        for build_id, offset in keys:
            by_build_id.setdefault(build_id, set()).add(offset)
        found: dict[tuple[str, int], list[tuple[str, str, int]]] = {}
        for build_id, offsets in by_build_id.items():
            ordered = sorted(offsets)
            for start in range(0, len(ordered), 500):  # SQLite's limit on parameters
                chunk = ordered[start:start + 500]
                rows = self.db.execute(f"SELECT offset, locations FROM symbols WHERE build_id = ? AND offset IN "
                                       f"({', '.join('?' * len(chunk))})", (build_id, *chunk))
                for offset, locations in rows:
                    found[(build_id, offset)] = [tuple(location) for location in json.loads(locations)]
        return found

    def remember_symbols(self, symbolized: dict[tuple[str, int], list[tuple[str, str, int]]]) -> None:
        """Keep ``{(build-id, offset): [(function, file, line), ...]}`` (the first MAX_NEW_SYMBOLS of them)."""
        rows = [(build_id, offset, json.dumps(locations))
                for (build_id, offset), locations in list(symbolized.items())[:MAX_NEW_SYMBOLS]]
        with self._transaction():
            self.db.executemany("INSERT OR REPLACE INTO symbols VALUES (?, ?, ?)", rows)

    def buckets(self, limit: int = 100, offset: int = 0, has_bug: bool | None = None,
                view: View | None = None) -> list[dict[str, Any]]:
        """Buckets, most reported first, with their releases, architectures, versions, how many bugs they were
        reported as (``has_bug``: only those with one, or without) and, for ``view``'s window, how many
        reports and retraces came in it (``recent``) and in the window before (``before``)."""
        view = view or View()
        since = view.now - view.days * 86400
        bugs = "(SELECT COUNT(*) FROM attachments a WHERE a.bthash = b.bthash AND a.type IN ('RHBZ', 'url'))"
        window = ("(SELECT COUNT(*) FROM occurrences w WHERE w.bthash = b.bthash AND w.time >= ? AND w.time < ?"
                  " AND (? IS NULL OR w.release = ?) AND (? IS NULL OR w.arch = ?))")
        conditions, arguments = [], []
        if has_bug is not None:
            conditions.append(f"{bugs} {'>' if has_bug else '='} 0")
        if view.component is not None:
            conditions.append("b.component = ?")
            arguments.append(view.component)
        for column, value in (("release", view.release), ("arch", view.arch)):
            if value is not None:
                conditions.append(f"EXISTS (SELECT 1 FROM occurrences f WHERE f.bthash = b.bthash AND f.{column} = ?)")
                arguments.append(value)
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        order = {"total": "b.count DESC", "window": "recent DESC, b.count DESC",
                 "growth": "recent - before DESC, recent DESC"}[view.sort]
        scope = (view.release, view.release, view.arch, view.arch)
        rows = self.db.execute(
            "SELECT b.bthash, b.executable, b.component, b.signature, b.first_seen, b.last_seen, b.count, "
            "b.full_task, group_concat(DISTINCT o.release), group_concat(DISTINCT o.arch), "
            f"group_concat(DISTINCT o.version), {bugs}, {window} AS recent, {window} AS before, b.problem_type "
            f"FROM buckets b LEFT JOIN occurrences o ON o.bthash = b.bthash {where}GROUP BY b.bthash "
            f"ORDER BY {order}, b.last_seen DESC LIMIT ? OFFSET ?",
            (since, view.now + 1, *scope, since - view.days * 86400, since, *scope, *arguments, limit, offset),
        ).fetchall()
        keys = ("bthash", "executable", "component", "signature", "first_seen", "last_seen", "count", "full_task",
                "releases", "architectures", "versions", "bugs", "recent", "before", "type")
        return [dict(zip(keys, row)) for row in rows]

    def occurrences(self, bthash: str, limit: int = 200) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT time, kind, package, version, release, arch, task_id FROM occurrences "
                               "WHERE bthash = ? ORDER BY time DESC LIMIT ?", (bthash, limit)).fetchall()
        keys = ("time", "kind", "package", "version", "release", "arch", "task_id")
        return [dict(zip(keys, row)) for row in rows]

    def per_day(self, bthash: str, days: int = 30, now: float | None = None) -> list[tuple[str, int]]:
        """``[(day, count)]`` of the last ``days`` days, oldest first."""
        now = now or time.time()
        start = int(now // 86400) - days + 1
        counts = dict(self.db.execute(
            "SELECT CAST(time / 86400 AS INTEGER) AS day, COUNT(*) FROM occurrences WHERE bthash = ? AND time >= ? "
            "GROUP BY day", (bthash, start * 86400)).fetchall())
        return [(time.strftime("%Y-%m-%d", time.gmtime(day * 86400)), counts.get(day, 0))
                for day in range(start, start + days)]

    def forget_before(self, when: float) -> int:
        """Remove the occurrences older than ``when``; the buckets' counts and dates stay. Returns how many."""
        with self._transaction():
            return self.db.execute("DELETE FROM occurrences WHERE time < ?", (when,)).rowcount

    def forget_buckets_before(self, when: float) -> int:
        """Remove the buckets last seen before ``when`` with their occurrences and attachments; returns how many
        buckets."""
        with self._transaction():
            for table in ("occurrences", "attachments"):
                self.db.execute(f"DELETE FROM {table} WHERE bthash IN (SELECT bthash FROM buckets WHERE last_seen < ?)",
                                (when,))
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

    def totals(self) -> dict[str, int]:
        reports, buckets = self.db.execute(
            "SELECT (SELECT COUNT(*) FROM occurrences WHERE kind = 'report'), (SELECT COUNT(*) FROM buckets)").fetchone()
        return {"reports": reports, "buckets": buckets}
