"""The stages every task goes through, with upstream's statuses, for coredump and vmcore jobs alike.

Each stage sets upstream's status, logs what it found with its duration,
and raises a RetraceError whose sentence tells the user what went wrong;
``Job.run`` turns that into FINISHED_FAILURE with the sentence in
``retrace_log`` and in the status body.  Tracebacks of unexpected errors go
to the admin's ``<LogDir>/worker.log`` only: the task log is shown to the
client and must not reveal server paths.
"""
from __future__ import annotations

import abc
import contextlib
import logging
import sqlite3
import time
from typing import TYPE_CHECKING, Generic, TypeVar

from retrace_server.errors import ConfigError, RetraceError, disk_full_explained
from retrace_server.intake import crashdata
from retrace_server.intake.overrides import Overrides
from retrace_server.reports import rules
from retrace_server.reports.buckets import BucketDB
from retrace_server.stats import FAILURE, SUCCESS, StatsDB, TaskRecord
from retrace_server.tasks import notify, taskqueue
from retrace_server.tasks.hooks import Hooks
from retrace_server.tasks.task import TaskStatus
from retrace_server.worker import fetch

if TYPE_CHECKING:
    from collections.abc import Iterator

    from retrace_server.config import Config
    from retrace_server.reports.stacks import Stack
    from retrace_server.tasks.task import Task

admin_log = logging.getLogger("retrace.worker")


class TaskFailed(RetraceError):
    """A stage cannot go on; the sentence is the user's explanation."""


# What a job's ANALYZE stage found, which its later stages take.
CrashT = TypeVar("CrashT")


class Job(abc.ABC, Generic[CrashT]):
    """The stages every task goes through, with upstream's statuses; subclasses fill them in.

    ``analyze`` returns what the later stages need; ``prepare`` and
    ``backtrace`` take it; ``clean(succeeded)`` also runs when a stage
    failed (and, from the supervisor, when the job died).
    """

    def __init__(self, config: Config, task: Task, log: logging.Logger) -> None:
        self.config = config
        self.task = task
        self.log = log
        self.overrides = Overrides.load(task)
        self.hooks = Hooks.load(config.HookConfig)
        self.started = time.monotonic()
        now = time.time()
        queued_time = task.timestamp("queued_time")
        self.record = TaskRecord(
            task.task_id, SUCCESS, task.timestamp("started_time") or now, 0.0,
            queue_wait=round(max(0.0, now - queued_time), 3) if queued_time else None,
            running_before=taskqueue.occupancy(config).running,
        )

    # -- the stages -----------------------------------------------------------

    @abc.abstractmethod
    def analyze(self) -> CrashT:
        """ANALYZE: what the crash is and what it needs, found and fetched."""

    @abc.abstractmethod
    def prepare(self, crash: CrashT) -> None:
        """INIT: the environment the debugger runs in."""

    @abc.abstractmethod
    def backtrace(self, crash: CrashT) -> None:
        """BACKTRACE: the debugger's results, written to the task."""

    @abc.abstractmethod
    def clean(self, succeeded: bool) -> None:
        """CLEANUP: what the task no longer needs removed, whether or not it succeeded."""

    def count(self, crash: CrashT) -> None:
        """The retrace counted in its crash bucket, once the answer is out (``run``)."""

    def improve(self, crash: CrashT) -> None:
        """What makes the next retrace of such a crash faster, once the answer is out (``run``)."""

    # -- driving -------------------------------------------------------------

    @contextlib.contextmanager
    def stage(self, status: TaskStatus, announce: bool = True) -> Iterator[None]:
        """One stage, timed and logged; ``announce``: its status is the task's (not after the task ended)."""
        with disk_full_explained(f"The server ran out of disk space at '{status.sentence}'; "
                                 "try again later (the administrator needs to free space)"):
            if announce:
                self.task.set_status(status)
            self.log.info("%s", status.sentence)
            began = time.monotonic()
            yield
        seconds = time.monotonic() - began
        self.record.phases[status.name.lower()] = round(seconds, 4)
        self.log.info("%s: done in %.3f s", status.sentence, seconds)

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Time one part of a stage (``init.packages``, ``backtrace.gdb``): into the statistics, hence /metrics'
        ``retrace_phase_duration_seconds``, and the task log at debug level, so a regression shows where."""
        began = time.monotonic()
        yield
        seconds = time.monotonic() - began
        self.record.phases[name] = round(seconds, 4)
        self.log.debug("Timing: %s %.3f s", name, seconds)

    def hook(self, point: str) -> None:
        self.hooks.run(point, self.task, admin_log)

    @contextlib.contextmanager
    def hooked(self, name: str) -> Iterator[None]:
        """Upstream's ``pre_<name>`` and ``post_<name>`` hooks around a stage (post only when it succeeded)."""
        self.hook(f"pre_{name}")
        yield
        self.hook(f"post_{name}")

    def run(self) -> bool:
        """Run every stage; True on success.  The task always ends final.

        The answer comes first: the task is FINISHED_SUCCESS as soon as its
        backtrace and results are stored; cleaning, the crash bucket and the
        statistics follow (``after_answer``), and nothing that goes wrong
        there changes the answer.
        """
        if self.overrides:
            self.log.info("Forced by an administrator: %s", self.overrides.describe())
        self.hook("pre_start")
        self.hook("start")
        try:
            if fetch.needs_fetch(self.task):
                fetch.fetch_remote(self)
            with self.hooked("prepare_debuginfo"), self.stage(TaskStatus.ANALYZE):
                crash = self.analyze()
            with self.hooked("prepare_environment"), self.stage(TaskStatus.INIT):
                self.prepare(crash)
            with self.hooked("retrace"), self.stage(TaskStatus.BACKTRACE):
                self.backtrace(crash)
        except RetraceError as err:
            self.finish_failed(self.without_server_paths(err.sentence), err.category)
            return False
        except Exception as err:
            admin_log.exception("task %s: unexpected error", self.task.task_id)
            self.finish_failed(
                f"internal error in the retrace worker ({type(err).__name__}); "
                "the administrator finds the details in the server's worker.log",
                "internal error",
            )
            return False
        self.task.mark_time("finished_time")
        # Logged first: whoever sees FINISHED_SUCCESS finds the line, and knows the worker's last line follows.
        self.log.info("Retrace job finished successfully in %.3f s", time.monotonic() - self.started)
        self.task.set_status(TaskStatus.SUCCESS)
        self.after_answer(crash)
        return True

    def after_answer(self, crash: CrashT) -> None:
        """The crash bucket, cleaning, the statistics, the success hook and the end mail of a task that already
        answered FINISHED_SUCCESS: an error is logged (the task log, worker.log) and leaves the answer as it
        is; the last log line says the worker is done."""
        began = time.monotonic()
        try:
            with self.part("stats.buckets"):  # first: the next report of this crash learns it has a retrace
                self.count(crash)
            with self.hooked("clean_task"), self.stage(TaskStatus.CLEANUP, announce=False):
                self.clean(succeeded=True)
            with self.part("after.indexes"):
                self.improve(crash)
            with self.stage(TaskStatus.STATS, announce=False):
                self.save_stats()
        except Exception as err:
            admin_log.exception("task %s: after its answer", self.task.task_id)
            sentence = err.sentence if isinstance(err, RetraceError) else type(err).__name__
            self.log.warning("After the answer, cleaning or counting failed (%s); the retrace stands",
                             self.without_server_paths(sentence))
        self.hook("success")
        notify.send_end_mail(self.config, self.task, True, None, self.log, admin_log)
        self.log.info("After the answer: cleaned and counted in %.3f s", time.monotonic() - began)

    def finish_failed(self, reason: str, category: str) -> None:
        try:
            with self.hooked("clean_task"):
                self.clean(succeeded=False)
        except Exception:
            admin_log.exception("task %s: cleaning up after the failure failed", self.task.task_id)
        self.record.status, self.record.failure, self.record.failure_category = FAILURE, reason, category
        self.save_stats()
        self.task.fail(reason)
        self.hook("fail")
        notify.send_end_mail(self.config, self.task, False, reason, self.log, admin_log)

    def without_server_paths(self, text: str) -> str:
        """``text`` (a tool's message for the user) without the server's directories: files in the task read
        as the user named them, anything else as the kind of place it is in."""
        places = ((self.task.crash_dir, ""), (self.task.path, ""), (self.config.CacheDir, "cache"),
                  (self.config.RepoDir, "repository"), (self.config.SaveDir, "spool"))
        for directory, shown in places:
            text = text.replace(f"{directory}/", f"{shown}/" if shown else "").replace(str(directory), shown or ".")
        return text

    def crash_text(self, name: str) -> str | None:
        path = self.task.crash_dir / name
        if not path.is_file():
            return None
        return crashdata.read_text_file(path, name)

    def count_in_bucket(self, stack: Stack, backtrace: str, release: str | None, component: str | None = None,
                        package: str | None = None, version: str | None = None) -> None:
        """Count the retrace in its crash bucket (/problems), where reports of the same crash land too. A bad
        rules file or an unwritable problems.db is a warning: the retrace itself succeeded."""
        try:
            signature_rules = rules.load(self.config.SignatureRules, stack.kind)
            with BucketDB.for_config(self.config) as buckets:
                bthash = buckets.record(stack, signature_rules, backtrace, "retrace", package, version, release,
                                        self.record.arch, self.task.task_id, component=component).bthash
        except ConfigError as err:
            self.log.warning("Not counted in the crash buckets: %s", err.sentence)
            return
        except sqlite3.Error as err:
            self.log.warning("Not counted in the crash buckets: %s", err)
            return
        self.log.info("Crash bucket %s", bthash)

    def save_stats(self) -> None:
        """Add the task to the statistics; a database problem is logged, never fatal."""
        self.record.duration = round(time.monotonic() - self.started, 3)
        self.record.running_after = taskqueue.occupancy(self.config).running
        try:
            with StatsDB.for_config(self.config) as stats:
                stats.record_task(self.record)
        except (sqlite3.Error, OSError) as err:
            self.log.warning("Statistics not saved: %s", err)
            admin_log.error("task %s: statistics not saved: %s", self.task.task_id, err)
