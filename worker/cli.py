"""``retrace-server-worker TASK_ID [--foreground] [--restart [--kernelver VER] [--arch ARCH] [--release NAME]
[--package NVR]] [-v]``.

The command claims the task before it detaches: it takes the task's worker
lock, records its pid and sets the first status, so that whoever started
it (the dispatcher, an admin) sees the slot taken as soon as it returns.
Then it forks into its own session with no inherited descriptors but the
lock, which the kernel releases however the worker ends.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from retrace_server import add_version_argument, locking, service
from retrace_server.analysis.debuggers import NoDebugger, served_architectures
from retrace_server.errors import ConfigError, Conflict, NotFound, RetraceError
from retrace_server.files import write_atomically
from retrace_server.intake.overrides import InvalidOverride, Overrides
from retrace_server.privileges import add_service_arguments
from retrace_server.tasks.dispatch import poke
from retrace_server.tasks.task import DEBUG_NAME, LOG_NAME, LOG_TIME_FORMAT, WORKER_HOST, WORKER_LOCK, Task, TaskStatus
from retrace_server.worker.coredump import RetraceJob
from retrace_server.worker.supervisor import supervise
from retrace_server.worker.vmcore import VmcoreJob

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from retrace_server.config import Config
    from retrace_server.worker.job import Job

PROG = "retrace-server-worker"


class WorkerRefused(RetraceError):
    """The worker will not run this task; the sentence says why (exit status 2)."""

    exit_code = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Retrace one task: coredump in, backtrace out.")
    add_version_argument(parser)
    parser.add_argument("task_id", nargs="?")
    parser.add_argument("--serve", action="store_true",
                        help="be a Celery worker host (Dispatcher = celery) instead of retracing one task")
    parser.add_argument("--hostname", help="with --serve: this host's name in logs and statistics")
    parser.add_argument("--concurrency", type=int, help="with --serve: tasks at once (default MaxParallelTasks)")
    parser.add_argument("--arch", action="append",
                        help="with --serve: architectures to take (default RetraceArchitectures); with a task: "
                             "the architecture to retrace it as, instead of the one the dump or core names")
    parser.add_argument("--foreground", action="store_true", help="do not detach; exit when the task ends")
    parser.add_argument("--restart", action="store_true", help="run a task again that has already been started")
    parser.add_argument("--kernelver", help="a vmcore task's kernel release (uname -r), instead of the dump's")
    parser.add_argument("--release", help="a coredump task's release (like fedora-41-x86_64), instead of the one "
                                          "its crash data names")
    parser.add_argument("--package", help="a coredump task's crashed package (name-version-release), instead of "
                                          "the one its crash data names")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details to the task log")
    add_service_arguments(parser)
    return parser


def claim(task: Task) -> int:
    """Take the task's worker lock; returns its descriptor, which must stay open."""
    fd = locking.try_exclusive(task.path / WORKER_LOCK)
    if fd is None:
        raise WorkerRefused(f"task {task.task_id} already has a running worker")
    return fd


def record_pid(lock_fd: int) -> None:
    """Write the worker's pid into its lock file, for admins and cleanup."""
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)


def make_job(config: Config, task: Task, logger: logging.Logger) -> Job[Any]:
    """The pipeline for the task's type: a kernel vmcore, or a process coredump."""
    job_class = VmcoreJob if task.task_type.is_vmcore else RetraceJob
    return job_class(config, task, logger)


def run_supervised(config: Config, task: Task, verbose: bool) -> bool:
    """The task's stages in a supervised child (``retrace_server.worker.supervisor``); True on success."""

    def run_job() -> bool:
        # The manager's "debug" box asks for the same as --verbose (upstream's "Be more verbose").
        return make_job(config, task, task_logger(task, verbose or (task.path / DEBUG_NAME).is_file())).run()

    def clean_up() -> None:
        make_job(config, task, logging.getLogger("retrace.worker")).clean(succeeded=False)

    return supervise(config, task, run_job, clean_up)


def reset(task: Task) -> None:
    """Forget a previous run, so that --restart starts from the crash data."""
    try:
        task.forget_run()
    except Conflict as err:
        raise WorkerRefused(f"task {task.task_id} {err}") from None


def task_logger(task: Task, verbose: bool) -> logging.Logger:
    logger = logging.getLogger(f"retrace.tasks.task.{task.task_id}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler = logging.FileHandler(task.path / LOG_NAME, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(levelname).1s] %(message)s", LOG_TIME_FORMAT))
    logger.addHandler(handler)
    return logger


def setup_admin_log(config: Config) -> None:
    service.log_for_admin(config, "worker", "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")


def detach() -> bool:
    """Fork into a new session; the parent returns False and should exit."""
    if os.fork() != 0:
        return False
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    return True


def prepare(args: argparse.Namespace) -> tuple[Config, Path, Task, int]:
    config, path = service.load(args)
    try:
        task = Task.open(config.SaveDir, args.task_id, config.TaskIdLength)
        lock_fd = claim(task)
    except NotFound:
        raise WorkerRefused(f"there is no task {args.task_id} in {config.SaveDir}") from None
    except OSError as err:
        raise WorkerRefused(f"cannot open task {args.task_id}: {err.strerror} (run as the service user?)") from None
    try:
        overrides = requested_overrides(args).checked(task.task_type, config)
        if task.status is not None and not args.restart:
            raise WorkerRefused(f"task {task.task_id} has already been started; use --restart to run it again")
    except (WorkerRefused, InvalidOverride) as err:
        os.close(lock_fd)
        raise WorkerRefused(str(err)) from None
    if task.status is not None:
        reset(task)
    if overrides or args.restart:
        overrides.save(task)
    return config, path, task, lock_fd


def requested_overrides(args: argparse.Namespace) -> Overrides:
    if args.arch and len(args.arch) > 1:
        raise InvalidOverride("a task is retraced as one architecture: give --arch once")
    return Overrides(args.kernelver, args.arch[0] if args.arch else None, args.release, args.package)


def claim_when_free(task: Task, limit: float, poll: float = 0.5) -> int | None:
    """The task's lock descriptor once no other worker holds it; None after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        fd = locking.try_exclusive(task.path / WORKER_LOCK)
        if fd is not None or time.monotonic() >= deadline:
            return fd
        time.sleep(poll)


def run_delivered(config: Config, verbose: bool) -> Callable[[Task, str], str]:
    """For --serve: claim a delivered task and retrace it here (restarting a dead worker's task).

    A delivery for a task another worker holds waits for that worker
    instead of leaving: the broker may redeliver after a host lost its link
    before that host cancels its task, and a delivery acknowledged then
    would leave the cancelled task to nobody.  Waiting keeps the delivery
    unacknowledged until the task ends, here or there.
    """

    def run(task: Task, host: str) -> str:
        lock_fd = claim_when_free(task, config.WorkerTimeLimit)
        if lock_fd is None:
            return f"a live worker still holds it after {config.WorkerTimeLimit} s (a repeated delivery)"
        status = task.status
        if status is not None and status.is_final:
            os.close(lock_fd)
            return "finished by the worker that held it while this delivery waited"
        try:
            write_atomically(task.path / WORKER_HOST, host)
            if task.status is not None:
                reset(task)
            task.mark_time("started_time")
            task.set_status(TaskStatus.ANALYZE)
            record_pid(lock_fd)
            return "retraced" if run_supervised(config, task, verbose) else "failed"
        except WorkerRefused as err:
            return str(err)
        finally:
            os.close(lock_fd)

    return run


def serve_main(args: argparse.Namespace) -> int:
    from retrace_server.worker.serve import serve

    config, path = service.load(args)
    if config.Dispatcher != "celery" or not config.BrokerURL:
        raise ConfigError(f"--serve needs Dispatcher = celery and a BrokerURL in {path}")
    setup_admin_log(config)
    try:
        arches = args.arch or served_architectures(config)
    except NoDebugger as err:
        raise ConfigError(f"RetraceArchitectures in {path}: {err}") from None
    serve(config, path, args.hostname, args.concurrency or config.MaxParallelTasks, arches,
          run_delivered(config, args.verbose))
    return 0


@service.command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Crash data and backtraces are private: nothing the worker writes is world-readable.
    os.umask(0o027)
    if args.serve:
        return serve_main(args)
    if not args.task_id:
        print(f"{PROG}: give a TASK_ID, or --serve", file=sys.stderr)
        return 2
    config, _path, task, lock_fd = prepare(args)
    task.mark_time("started_time")
    task.set_status(TaskStatus.ANALYZE)
    if not args.foreground and not detach():
        os._exit(0)
    record_pid(lock_fd)
    setup_admin_log(config)
    succeeded = run_supervised(config, task, args.verbose)
    os.close(lock_fd)
    poke(config)
    return 0 if succeeded else 1
