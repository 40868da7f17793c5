"""Starting workers for queued tasks, and noticing workers that died.

A worker proves it is alive by holding an exclusive ``flock`` on its task's
``.worker.lock`` for as long as it runs; the kernel drops the lock when the
process dies, however it dies.  A task with a running status whose lock is
free therefore has no worker any more, and is failed with that reason
instead of staying PENDING forever (upstream issue #50).

``start_queued`` runs after every upload and whenever a worker ends: under
one lock it frees the slots of dead workers and starts the oldest queued
tasks until MaxParallelTasks workers run.  The worker command claims its
task (lock, status) before it detaches, so when the command returns, the
slot is visibly taken.
"""

import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from retrace import locking
from retrace.config import CONFIG_PATH_VARIABLE
from retrace.stats import record_ended_task
from retrace.task import iter_tasks, worker_alive
from retrace.taskqueue import queued_tasks

log = logging.getLogger(__name__)

WORKER_VARIABLE = "RETRACE_WORKER"
_DISPATCH_LOCK = ".dispatch.lock"
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


def fail_if_worker_died(task, config):
    """End a running task whose worker is gone; True when it did.

    Not with ``Dispatcher = celery``: there the broker redelivers a task
    whose worker died (to this host or another), and ends it after the
    delivery limit.
    """
    if config.Dispatcher == "celery":
        return False
    status = task.status
    if status is None or status.is_final or worker_alive(task):
        return False
    # Re-read: the worker may have finished between the two reads.
    status = task.status
    if status is None or status.is_final:
        return False
    end_failed(config, task, DEAD_WORKER_REASON.format(stage=status.sentence), "worker died")
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
    from retrace.celeryapp import is_published, publish

    with locking.exclusive(Path(config.SaveDir) / _DISPATCH_LOCK):
        for task in queued_tasks(config):
            if not is_published(task) and not publish(config, task):
                return


def on_status_poll(config, config_path, environ):
    """What a client's status poll of a queued task may do: start local workers into free
    slots.  With Dispatcher = celery nothing: publishing can wait seconds for an absent
    broker, and uploads and the cleanup already publish what is left."""
    if config.Dispatcher == "local":
        start_queued(config, config_path, environ)


def launch_worker(task, config, config_path, environ):
    """Run the worker command for ``task``; it returns once the task is claimed."""
    command = worker_command(environ)
    env = {
        "PATH": environ.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        CONFIG_PATH_VARIABLE: str(config_path),
        WORKER_VARIABLE: command[0],
    }
    try:
        result = subprocess.run(
            [*command, task.task_id], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            close_fds=True, cwd="/", timeout=_LAUNCH_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        log.error("cannot start the worker for task %s: %s", task.task_id, err)
        end_failed(config, task, "the server could not start a retrace worker; the administrator finds the details "
                   "in the server log", "worker did not start")
        return
    if result.returncode != 0:
        log.error("the worker for task %s refused to start: %s", task.task_id, result.stderr.strip())
        if task.status is None:
            end_failed(config, task, "the retrace worker could not start; the administrator finds the details in the "
                       "server log", "worker did not start")


def start_queued(config, config_path, environ=os.environ):
    """Start workers for the oldest queued tasks while worker slots are free.

    With ``Dispatcher = celery`` the slots are the worker hosts': queued
    tasks not yet on the broker are published instead.
    """
    if config.Dispatcher == "celery":
        _publish_queued(config)
        return
    with locking.exclusive(Path(config.SaveDir) / _DISPATCH_LOCK):
        free = config.MaxParallelTasks - len(running_tasks(config))
        for task in queued_tasks(config)[:max(0, free)]:
            launch_worker(task, config, config_path, environ)

