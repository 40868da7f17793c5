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

import contextlib
import logging
import os
import select
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

from retrace_server import locking
from retrace_server.config import CONFIG_PATH_VARIABLE
from retrace_server.stats import record_ended_task
from retrace_server.tasks.notify import send_end_mail
from retrace_server.tasks.task import iter_tasks, worker_alive
from retrace_server.tasks.taskqueue import queued_tasks

log = logging.getLogger(__name__)

WORKER_VARIABLE = "RETRACE_WORKER"
_DISPATCH_LOCK = ".dispatch.lock"
SOCKET_NAME = ".dispatcher.sock"
SCAN_SECONDS = 5.0
_LAUNCH_TIMEOUT = 60
DEAD_WORKER_REASON = "the retrace worker stopped unexpectedly (it was killed or crashed) while: {stage}"


def worker_command(environ):
    """The ``retrace-server-worker`` to run: named by the environment, else next to this Python."""
    named = environ.get(WORKER_VARIABLE)
    if named:
        return [named]
    return [str(Path(sys.executable).with_name("retrace-server-worker"))]


def end_failed(config, task, reason, category):
    """End ``task`` FINISHED_FAILURE with ``reason`` and count it in the statistics."""
    task.fail(reason)
    try:
        record_ended_task(config, task, reason, category)
    except (sqlite3.Error, OSError) as err:
        log.error("task %s: statistics not saved: %s", task.task_id, err)
    send_end_mail(config, task, False, reason, log, log)


def dead_worker_reason(task, config):
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


def fail_if_worker_died(task, config):
    """End a running task whose worker is gone; True when it did."""
    reason = dead_worker_reason(task, config)
    if reason is None:
        return False
    end_failed(config, task, reason, "worker died")
    return True


def running_tasks(config):
    """Tasks with a live worker; dead workers' tasks are failed on the way."""
    running = []
    for task in iter_tasks(config.SaveDir, config.TaskIdLength):
        status = task.status
        if status is None or status.is_final:
            continue
        if not fail_if_worker_died(task, config):
            running.append(task)
    return running


def _publish_queued(config):
    """Publish the queued tasks not yet on the broker; stop at the first failure
    (the broker is away: each further attempt would only add its timeout)."""
    from retrace_server.tasks.celeryapp import is_published, publish

    with locking.exclusive(Path(config.SaveDir) / _DISPATCH_LOCK):
        for task in queued_tasks(config):
            if not is_published(task) and not publish(config, task):
                return


def run_worker_command(task, config_path, environ):
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


def launch_worker(task, config, run):
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


def start_queued(config, config_path, environ=os.environ, run=None):
    """Start workers for the oldest queued tasks while worker slots are free.

    ``run(task)`` starts one (default: ``run_worker_command``).  With
    ``Dispatcher = celery`` the slots are the worker hosts': queued tasks
    not yet on the broker are published instead.
    """
    if config.Dispatcher == "celery":
        _publish_queued(config)
        return
    run = run or (lambda task: run_worker_command(task, config_path, environ))
    with locking.exclusive(Path(config.SaveDir) / _DISPATCH_LOCK):
        free = config.MaxParallelTasks - len(running_tasks(config))
        for task in queued_tasks(config)[:max(0, free)]:
            launch_worker(task, config, run)


def socket_path(config):
    return Path(config.SaveDir) / SOCKET_NAME


def poke(config):
    """Tell the dispatcher the spool changed; False when no dispatcher listens (it will still scan)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        try:
            sender.sendto(b"!", str(socket_path(config)))
        except OSError:
            return False
    return True


def serve(config, config_path, ready=lambda: None, run=None):
    """The dispatcher's loop: a pass at start (after a crash, at once), then one per poke or scan interval.

    ``ready`` is called once the socket listens; ``run`` starts a worker (see
    ``start_queued``).  Runs until killed.
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
                    listener.recv(64)
                except BlockingIOError:
                    break
