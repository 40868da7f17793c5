"""What one cleanup run does, step by step; every step can be a dry run.

Order matters: overdue workers are stopped first and orphans ended, so
that their slots count as free when queued tasks are started and their
tasks can expire in later runs; the cache is trimmed last, after tasks
that held packages are gone.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from retrace_server.analysis.indexes import GdbIndexes
from retrace_server.environments.chroot import GdbRoots
from retrace_server.environments.sysroot import SharedTrees
from retrace_server.packaging.cache import PackageCache, abandoned_partial_entries
from retrace_server.packaging.debuginfod import BuildIdCache
from retrace_server.packaging.download import DOWNLOADS
from retrace_server.packaging.kernel import KernelCache
from retrace_server.reports.buckets import DB_NAME as BUCKETS_DB
from retrace_server.reports.buckets import BucketDB
from retrace_server.reports.triage import resymbolize
from retrace_server.stats import StatsDB
from retrace_server.tasks import casedata, tasklist
from retrace_server.tasks.dispatch import end_failed, fail_if_worker_died, kill_worker, start_queued
from retrace_server.tasks.hooks import delete_task
from retrace_server.tasks.task import (
    MD5_NAME,
    WORKER_LOCK,
    Task,
    TaskStatus,
    TaskType,
    active_tasks,
    iter_tasks,
    mark_active,
    reindex_active,
    worker_alive,
)

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

    from retrace_server.config import Config

HOUR = 3600
_KILL_WAIT_SECONDS = 10
# A download older than the longest a task may run, and this, has no task left.
DOWNLOAD_GRACE_SECONDS = 600
_ARCHIVE_SKIP = ("password", WORKER_LOCK)


class Collector:
    def __init__(self, config: Config, config_path: Path, log: logging.Logger, dry_run: bool = False,
                 now: float | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.log = log
        self.dry_run = dry_run
        self.now = now if now is not None else time.time()

    def act(self, message: str) -> bool:
        """Log an action; returns whether to carry it out (not in a dry run)."""
        self.log.info("%s%s", "would: " if self.dry_run else "", message)
        return not self.dry_run

    def run(self) -> None:
        self.reindex()
        self.stop_overdue_workers()
        self.end_orphans()
        if self.act("start queued tasks into free worker slots"):
            start_queued(self.config, self.config_path)
        self.expire_tasks()
        self.link_identical_vmcores()
        self.sweep_partial_entries()
        self.sweep_downloads()
        self.trim_cache()
        self.forget_client_addresses()
        self.prune_reports()
        self.resymbolize_reports()

    def reindex(self, full: bool = False) -> None:
        """The markers of tasks not yet ended made to agree with the spool (a task made by hand is found), and
        this host's task index brought up to date, so that the manager's next page need not (``full``: read
        from every task directory, ``--reindex``)."""
        if self.dry_run:
            return
        if full:
            added, removed = reindex_active(self.config.SaveDir, self.config.TaskIdLength)
            self.log.info("tasks not yet ended: %d markers added, %d removed", added, removed)
        hours = tasklist.forget_changes_before(self.config.SaveDir, self.now)
        with tasklist.TaskIndex(self.config) as index:
            rows = index.refresh(full)
            adopted = index.adopt()
            for task_id in adopted:  # made by hand: a queued or running one is counted from now on
                task = Task(Path(self.config.SaveDir) / task_id)
                with contextlib.suppress(OSError, ValueError):
                    if task.status is None or not task.status.is_final:
                        mark_active(self.config.SaveDir, task_id)
        self.log.info("task index: %d rows read again, %d tasks found without the index, %d hours of changes "
                      "forgotten", rows, len(adopted), hours)

    # -- workers ---------------------------------------------------------------

    def _active(self) -> list[Task]:
        return list(active_tasks(self.config.SaveDir, self.config.TaskIdLength))

    def _ended(self, last_change_before: float | None = None,
               types: tuple[TaskType, ...] | None = None) -> list[Task]:
        """Ended tasks from the task index (brought up to date first), those whose directory is there; a dry run,
        which writes nothing, not even the index, reads the spool itself."""
        if self.dry_run:
            return [task for task in iter_tasks(self.config.SaveDir, self.config.TaskIdLength)
                    if _ended_task(task) and (types is None or task.task_type in types)
                    and (last_change_before is None or task.path.stat().st_mtime < last_change_before)]
        with tasklist.task_index(self.config) as index:
            names = index.ended(last_change_before, types)
        tasks = [Task(Path(self.config.SaveDir) / name) for name in names]
        return [task for task in tasks if task.path.is_dir()]

    def stop_overdue_workers(self) -> None:
        limit = self.config.WorkerTimeLimit
        for task in self._active():
            status = task.status
            started = task.timestamp("started_time")
            if status is None or status.is_final or started is None or not worker_alive(task):
                continue
            running = self.now - started
            if running <= limit:
                continue
            pid = _worker_pid(task)
            reason = (
                f"the retrace worker was stopped after running {running / 60:.0f} min "
                f"(the limit is WorkerTimeLimit = {limit} s) while: {status.sentence}"
            )
            if pid is None or not self.act(f"task {task.task_id}: kill worker {pid}; {reason}"):
                continue
            kill_worker(task, pid)
            _wait_until_dead(task)
            end_failed(self.config, task, reason, "worker time limit")

    def end_orphans(self) -> None:
        for task in self._active():
            status = task.status
            if status is None or status.is_final or worker_alive(task):
                continue
            if self.act(f"task {task.task_id}: no worker runs it any more ({status.sentence}); ending it failed"):
                fail_if_worker_died(task, self.config)

    # -- expiry ----------------------------------------------------------------

    def _age_hours(self, task: Task) -> float:
        return (self.now - task.path.stat().st_mtime) / HOUR

    def _rule(self, task: Task, status: TaskStatus | None) -> tuple[str, str] | None:
        """``("archive" | "delete", why)`` for an expired task, else None."""
        age = self._age_hours(task)
        for rule in casedata.age_rules(self.config, status == TaskStatus.FAIL):
            if age >= rule.hours:
                return rule.action, f"{'failed, ' if rule.failed_only else ''}{age:.0f} h since its last activity ({rule.cited})"
        return None

    def expire_tasks(self) -> None:
        rules = casedata.age_rules(self.config, True) + casedata.age_rules(self.config, False)
        if not rules:
            return
        youngest = min(rule.hours for rule in rules)
        # Ended tasks old enough (the index), and queued ones nobody started (the markers).
        waiting = [task for task in self._active() if task.status is None]
        for task in self._ended(self.now - youngest * HOUR) + waiting:
            status = task.status
            if (status is not None and not status.is_final) or worker_alive(task):
                continue
            rule = self._rule(task, status)
            if rule is None:
                continue
            if casedata.kept(task, self.now):
                self.log.debug("task %s: expired (%s) but kept for its case", task.task_id, rule[1])
                continue
            action, why = rule
            if action == "archive":
                stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(self.now))
                archive = Path(self.config.DropDir) / f"{task.task_id}-{stamp}.tar.gz"
                if self.act(f"task {task.task_id}: archive to {archive} and delete; {why}"):
                    _archive(task, archive)
                    delete_task(self.config, task, self.log)
            elif self.act(f"task {task.task_id}: delete; {why}"):
                delete_task(self.config, task, self.log)

    def link_identical_vmcores(self) -> None:
        """Store identical vmcores once (upstream's dedup): tasks whose ``md5sum`` and size agree get one file,
        hard-linked; the file goes when the last task holding it does."""
        first: dict[tuple[str, int], tuple[Task, Path, os.stat_result]] = {}
        for task in sorted(self._ended(types=(TaskType.VMCORE, TaskType.VMCORE_INTERACTIVE)),
                           key=lambda task: task.task_id):
            if (task.status is not None and not task.status.is_final) or worker_alive(task):
                continue  # its worker may be stripping or reassembling the vmcore
            vmcore, md5 = task.crash_dir / "vmcore", task.read_text(MD5_NAME, 200)
            try:
                info = vmcore.stat()
            except OSError:
                continue
            if not md5 or not vmcore.is_file() or vmcore.is_symlink():
                continue
            key = (md5.split()[0], info.st_size)
            kept = first.setdefault(key, (task, vmcore, info))
            if kept[0] is task or (kept[2].st_dev, kept[2].st_ino) == (info.st_dev, info.st_ino):
                continue
            if self.act(f"task {task.task_id}: its vmcore is task {kept[0].task_id}'s (md5 {key[0]}); stored once"):
                spare = vmcore.with_name(".vmcore.link")
                spare.unlink(missing_ok=True)
                os.link(kept[1], spare)
                os.replace(spare, vmcore)

    def forget_client_addresses(self) -> None:
        """Refused clients' addresses go after StatsIPRetention hours, refusals or not."""
        if not (Path(self.config.SaveDir) / self.config.DBFile).exists():
            return
        if self.act(f"statistics: blank client addresses older than {self.config.StatsIPRetention} h"):
            with StatsDB.for_config(self.config) as stats:
                forgotten = stats.forget_addresses(self.config.StatsIPRetention, self.now)
            self.log.info("statistics: %d client addresses blanked", forgotten)

    def prune_reports(self) -> None:
        """Each report and retrace's row goes after ReportRetention days (its bucket keeps counting it), a
        bucket no report reached for BucketRetention days goes whole, the symbol cache keeps its newest rows,
        and the freed pages go back to the disk."""
        if not (Path(self.config.SaveDir) / BUCKETS_DB).exists():
            return
        if self.act(f"crash buckets: forget reports older than {self.config.ReportRetention} days and buckets "
                    f"unseen for {self.config.BucketRetention} days"):
            with BucketDB.for_config(self.config) as buckets:
                pruned = buckets.forget_before(self.now - self.config.ReportRetention * 86400)
                gone = buckets.forget_buckets_before(self.now - self.config.BucketRetention * 86400)
                trimmed = buckets.trim_symbols()
                buckets.vacuum()
            self.log.info("crash buckets: %d old reports, %d buckets and %d cached symbols forgotten", pruned, gone,
                          trimmed)

    def resymbolize_reports(self) -> None:
        """Reports symbolized in part are symbolized again: a reposync or a mirror's change may have brought the
        debuginfo they missed (reposync itself does this for the release it synced)."""
        if not (Path(self.config.SaveDir) / BUCKETS_DB).exists():
            return
        if self.act("crash buckets: symbolize again the reports symbolized in part"):
            tried, moved = resymbolize(self.config)
            self.log.info("crash buckets: %d reports symbolized in part tried again, %d moved", tried, moved)

    # -- cache -----------------------------------------------------------------

    def _cache_entries(self) -> list[tuple[str, float, int, Callable[[], bool]]]:
        """``(description, last use, bytes, evict)`` of everything CacheDir holds for tasks."""
        cache_dir = Path(self.config.CacheDir)
        kinds = (("rpms", PackageCache, "package"), ("roots", GdbRoots, "gdb root"), ("sysroots", SharedTrees, "sysroot"),
                 ("gdb-index", GdbIndexes, "gdb index of"), ("buildid", BuildIdCache, "debuginfod files of"),
                 ("kernel", KernelCache, "vmlinux"))
        found: list[tuple[str, float, int, Callable[[], bool]]] = []
        for directory, store_class, label in kinds:
            if (cache_dir / directory).is_dir():
                store = store_class(cache_dir)
                found += [(f"{label} {name}", last, size, functools.partial(store.evict, name))
                          for name, last, size in store.entries()]
        return found

    def sweep_partial_entries(self) -> None:
        """Remove cache entries a killed worker left half built (``.tmp-*`` with no builder alive)."""
        for directory in ("rpms", "roots", "sysroots", "gdb-index", "buildid", "kernel"):
            for path in abandoned_partial_entries(Path(self.config.CacheDir) / directory, self.now):
                if self.act(f"cache: remove {directory}/{path.name}, left half built by a worker that died"):
                    shutil.rmtree(path, ignore_errors=True)

    def sweep_downloads(self) -> None:
        """Remove packages downloaded for a task whose worker died before it removed them: a download
        lives no longer than its task, and no task lives longer than WorkerTimeLimit."""
        directory = Path(self.config.CacheDir) / DOWNLOADS
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                age = self.now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            if age > self.config.WorkerTimeLimit + DOWNLOAD_GRACE_SECONDS and self.act(
                    f"cache: remove {DOWNLOADS}/{entry.name}, downloaded by a worker that died"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def trim_cache(self) -> None:
        """Evict the least recently used cache entries until CacheDir fits CacheSize and MinStorageLeft.

        Unpacked packages, shared sysroots, gdb indexes, gdb roots, debuginfod files and vmlinux files share
        the budget.
        An entry used within WorkerTimeLimit may belong to a running task
        (no task runs longer), so it stays whatever the budget says.
        """
        entries = sorted(self._cache_entries(), key=lambda entry: entry[1])
        total = sum(entry[2] for entry in entries)
        free = shutil.disk_usage(self.config.CacheDir).free if Path(self.config.CacheDir).is_dir() else 0
        for name, last_use, size, evict in entries:
            over_budget = total > self.config.cache_size_bytes
            low_on_disk = free < self.config.min_storage_left_bytes
            if not (over_budget or low_on_disk):
                break
            if self.now - last_use < self.config.WorkerTimeLimit:
                self.log.debug("cache over budget, but %s was used %.0f s ago and stays", name, self.now - last_use)
                continue
            why = "over CacheSize" if over_budget else "below MinStorageLeft"
            idle_hours = (self.now - last_use) / HOUR
            if self.act(f"cache: evict {name} ({size} bytes, unused for {idle_hours:.1f} h; {why})") and not evict():
                self.log.info("cache: %s is in use right now and stays", name)
                continue
            total -= size
            free += size


def _worker_pid(task: Task) -> int | None:
    try:
        text = (task.path / WORKER_LOCK).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _wait_until_dead(task: Task) -> None:
    deadline = time.monotonic() + _KILL_WAIT_SECONDS
    while worker_alive(task) and time.monotonic() < deadline:
        time.sleep(0.05)


def _archive(task: Task, archive: Path) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".part")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(task.path, arcname=task.task_id, filter=lambda info: None if Path(info.name).name in _ARCHIVE_SKIP else info)
    os.replace(partial, archive)


def _ended_task(task: Task) -> bool:
    try:
        status = task.status
    except (OSError, ValueError):
        return False
    return status is not None and status.is_final
