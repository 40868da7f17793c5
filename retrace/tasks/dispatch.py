"""Starting workers for queued tasks, and ending tasks whose worker died: in one process, the dispatcher.

A worker proves it is alive by holding an exclusive ``flock`` on its task's
``.worker.lock`` for as long as it runs; the kernel drops the lock when the
process dies, however it dies.  A task with a running status whose lock is
free therefore has no worker any more, and is failed with that reason
instead of staying PENDING forever (upstream issue #50).

Requests only store and read: an upload, and a worker that ends, *poke*
the dispatcher (a datagram on ``SaveDir/.dispatcher.sock``), which then,
under one lock, ends the tasks of dead workers and starts the oldest
queued tasks until MaxParallelTasks workers run.  It also looks every
``SCAN_SECONDS`` on its own, so a lost poke costs seconds, and a restarted
dispatcher finds everything in the spool, which stays the only truth;
``retrace-server-cleanup`` does the same pass as the last safety net.  The
worker command claims its task (lock, status) before it detaches, so when
the command returns, the slot is visibly taken.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

from retrace_server import locking
from retrace_server.config import CONFIG_PATH_VARIABLE, Config
from retrace_server.stats import FAILURE, StatsDB, TaskRecord
from retrace_server.tasks.notify import send_end_mail
from retrace_server.tasks.task import INCOMING_DIR, JOB_PID, Task, TaskType, active_tasks, is_live_upload, worker_alive
from retrace_server.tasks.taskqueue import queued_tasks

log = logging.getLogger(__name__)

WORKER_VARIABLE = "RETRACE_WORKER"
_DISPATCH_LOCK = ".dispatch.lock"
SOCKET_NAME = ".dispatcher.sock"
SCAN_SECONDS = 5.0
_LAUNCH_TIMEOUT = 60
# Starts a task's worker: (exit status, what it said), see ``run_worker_command``.
Runner = Callable[[Task], tuple[int, str]]
# "prefetch <upload directory> <core size>": an upload's coredump has begun (prefetch_trigger).
_PREFETCH = "prefetch "
_PREFETCH_REQUEST = re.compile(rb"prefetch (tmp[A-Za-z0-9_]{1,32}) ([1-9][0-9]{0,15})")
DEAD_WORKER_REASON = "the retrace worker stopped unexpectedly (it was killed or crashed) while: {stage}"


def worker_command(environ: Mapping[str, str]) -> list[str]:
    """The ``retrace-server-worker`` to run: named by the environment, else next to this Python."""
    named = environ.get(WORKER_VARIABLE)
    if named:
        return [named]
    return [str(Path(sys.executable).with_name("retrace-server-worker"))]


def end_failed(config: Config, task: Task, reason: str, category: str) -> None:
    """End ``task`` FINISHED_FAILURE with ``reason`` and count it in the statistics."""
    task.fail(reason)
    started = task.timestamp("started_time")
    queued = task.timestamp("queued_time")
    now = time.time()
    record = TaskRecord(task.task_id, FAILURE, started or now, round(now - started, 3) if started else 0.0,
                        queue_wait=round(started - queued, 3) if started and queued else None,
                        failure=reason, failure_category=category)
    try:
        with StatsDB.for_config(config) as stats:
            stats.record_task(record)
    except (sqlite3.Error, OSError) as err:
        log.error("task %s: statistics not saved: %s", task.task_id, err)
    send_end_mail(config, task, False, reason, log, log)


def dead_worker_reason(task: Task, config: Config) -> str | None:
    """Why a started task that is not final has no worker any more; None while it has one (or is final, or queued).

    Not with ``Dispatcher = celery``: there the broker redelivers a task
    whose worker died (to this host or another), and ends it after the
    delivery limit.
    """
    if config.Dispatcher == "celery":
        return None
    status = task.status
    if status is None or status.is_final or worker_alive(task):
        return None
    # Re-read: the worker may have finished between the two reads.
    status = task.status
    if status is None or status.is_final:
        return None
    return DEAD_WORKER_REASON.format(stage=status.sentence)


def fail_if_worker_died(task: Task, config: Config) -> bool:
    """End a running task whose worker is gone; True when it did."""
    reason = dead_worker_reason(task, config)
    if reason is None:
        return False
    end_failed(config, task, reason, "worker died")
    return True


def running_tasks(config: Config) -> list[Task]:
    """Tasks with a live worker; dead workers' tasks are failed on the way."""
    running = []
    for task in active_tasks(config.SaveDir, config.TaskIdLength):
        status = task.status
        if status is None or status.is_final:
            continue
        if not fail_if_worker_died(task, config):
            running.append(task)
    return running


def _publish_queued(config: Config) -> None:
    """Publish the queued tasks not yet on the broker; stop at the first failure
    (the broker is away: each further attempt would only add its timeout)."""
    from retrace_server.tasks.celeryapp import is_published, publish

    with locking.exclusive(Path(config.SaveDir) / _DISPATCH_LOCK):
        for task in queued_tasks(config):
            if not is_published(task) and not publish(config, task):
                return


def run_worker_command(task: Task, config_path: Path, environ: Mapping[str, str]) -> tuple[int, str]:
    """Run the worker command for ``task`` as a new program; ``(exit status, what it said)``.

    It returns once the task is claimed (the worker detaches after that).
    """
    command = worker_command(environ)
    env = {
        "PATH": environ.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        CONFIG_PATH_VARIABLE: str(config_path),
        WORKER_VARIABLE: command[0],
    }
    result = subprocess.run(
        [*command, task.task_id], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        close_fds=True, cwd="/", timeout=_LAUNCH_TIMEOUT,
    )
    return result.returncode, result.stderr.strip()


def launch_worker(task: Task, config: Config, run: Runner) -> None:
    """Start ``task``'s worker with ``run(task)`` (see ``run_worker_command``); a worker that cannot
    start ends its task failed, saying so."""
    try:
        returncode, said = run(task)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.error("cannot start the worker for task %s: %s", task.task_id, err)
        end_failed(config, task, "the server could not start a retrace worker; the administrator finds the details "
                   "in the server log", "worker did not start")
        return
    if returncode != 0:
        log.error("the worker for task %s refused to start: %s", task.task_id, said)
        if task.status is None:
            end_failed(config, task, "the retrace worker could not start; the administrator finds the details in the "
                       "server log", "worker did not start")


def start_queued(config: Config, config_path: Path, environ: Mapping[str, str] = os.environ,
                 run: Runner | None = None) -> None:
    """Start workers for the oldest queued tasks while worker slots are free.

    ``run(task)`` starts one (default: ``run_worker_command``).  With
    ``Dispatcher = celery`` the slots are the worker hosts': queued tasks
    not yet on the broker are published instead.
    """
    if config.Dispatcher == "celery":
        _publish_queued(config)
        return
    start: Runner = run or (lambda task: run_worker_command(task, config_path, environ))
    with locking.exclusive(Path(config.SaveDir) / _DISPATCH_LOCK):
        free = config.MaxParallelTasks - len(running_tasks(config))
        for task in queued_tasks(config)[:max(0, free)]:
            launch_worker(task, config, start)


def socket_path(config: Config) -> Path:
    return Path(config.SaveDir) / SOCKET_NAME


def poke(config: Config) -> bool:
    """Tell the dispatcher the spool changed; False when no dispatcher listens (it will still scan)."""
    return _send(config, b"!")


def _send(config: Config, datagram: bytes) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        try:
            sender.sendto(datagram, str(socket_path(config)))
        except OSError:
            return False
    return True


def prefetch_trigger(config: Config, task_type: TaskType, upload_dir: Path) -> Callable[[str, int], None] | None:
    """What an upload calls as each crash file starts (its name, declared size): for a coredump larger than
    PrefetchAbove, it asks the dispatcher to unpack the core's packages while the rest arrives
    (``retrace_server.packaging.prefetch``).  None where nobody here would: with Celery the worker hosts
    unpack."""
    if not config.PrefetchPackages or task_type.is_vmcore or config.Dispatcher != "local":
        return None

    def started(name: str, size: int) -> None:
        if name == "coredump" and size >= config.prefetch_above_bytes:
            _send(config, f"{_PREFETCH}{upload_dir.name} {size}".encode())

    return started


def prefetch_request(config: Config, datagram: bytes) -> tuple[Path, int] | None:
    """``(upload directory, core size)`` of a prefetch request, or None for anything else: the socket is
    the service user's, but a request still names only a live upload's directory, and a size it may have."""
    match = _PREFETCH_REQUEST.fullmatch(datagram)
    if match is None:
        return None
    upload_dir = Path(config.SaveDir) / INCOMING_DIR / match[1].decode()
    size = int(match[2])
    if not 0 < size <= config.unpacked_cap_bytes(False) or not is_live_upload(upload_dir):
        return None
    return upload_dir / "crash", size


def serve(config: Config, config_path: Path, ready: Callable[[], None] = lambda: None,
          run: Runner | None = None, prefetch: Callable[[Path, int], None] = lambda _dir, _size: None) -> None:
    """The dispatcher's loop: a pass at start (after a crash, at once), then one per poke or scan interval.

    ``ready`` is called once the socket listens; ``run`` starts a worker (see
    ``start_queued``); ``prefetch(crash directory, core size)`` starts the
    prefetch an upload asked for.  Runs until killed.
    """
    path = socket_path(config)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        listener.bind(str(path))
        listener.setblocking(False)
        ready()
        while True:
            try:
                start_queued(config, config_path, run=run)
            except (OSError, sqlite3.Error) as err:
                log.error("dispatch pass failed: %s", err)
            readable, _, _ = select.select([listener], [], [], SCAN_SECONDS)
            while readable:
                try:
                    datagram = listener.recv(256)
                except BlockingIOError:
                    break
                if (request := prefetch_request(config, datagram)) is not None:
                    prefetch(*request)


def kill_group(pgid: int) -> None:
    """SIGKILL process group ``pgid`` (its leader alone where the group holds a process we may not signal)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pgid, signal.SIGKILL)


def kill_worker(task: Task, supervisor_pid: int | None) -> None:
    """SIGKILL a task's supervisor group, then its job's (the job would otherwise record its own end)."""
    try:
        job = int((task.path / JOB_PID).read_text())
    except (OSError, ValueError):
        job = None
    for group in (supervisor_pid, job):
        if group is not None:
            kill_group(group)
