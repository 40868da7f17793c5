"""``retrace-server-dispatcher``: the one process that starts workers for queued tasks and ends dead workers' tasks.

``retrace-server-httpd`` runs it beside Apache, as it runs the debuginfod
relay; on a system install ``config/systemd/retrace-server-dispatcher.service``
does.  It prints one line once it listens, so whoever starts it knows when
uploads will be picked up.

Workers are started by forking the dispatcher and running the worker
command's ``main`` in the child: the dispatcher has already imported all the
worker needs, so a hand-off does not pay for a new Python start (about
200 ms on the benchmark machine; ``bench/dispatch.py``).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from retrace_server import __version__, add_version_argument, locking, service
from retrace_server.adminlog import syslog_handler
from retrace_server.analysis.indexes import GdbIndexes, debug_files
from retrace_server.packaging.prefetch import Prefetched, prefetch
from retrace_server.privileges import add_service_arguments, append_stderr_to
from retrace_server.tasks import dispatch
from retrace_server.tasks.task import is_live_upload, reindex_active
from retrace_server.worker import cli as worker_cli

if TYPE_CHECKING:
    from collections.abc import Sequence

    from retrace_server.config import Config
    from retrace_server.tasks.task import Task

PROG = "retrace-server-dispatcher"
_PREFETCH_SLOTS = ".prefetch"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Start retrace workers for queued tasks as slots free up.")
    add_version_argument(parser)
    add_service_arguments(parser)
    parser.add_argument("--log", help="append messages to this file instead of standard error")
    return parser


@service.command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config, path = service.load(args)
    os.umask(0o027)
    if args.log:
        append_stderr_to(args.log)
    # With LogTo = syslog the log records go there; standard error (--log) keeps what is not a record.
    handler = syslog_handler(config, "dispatcher") if config.LogTo == "syslog" else logging.StreamHandler(sys.stderr)
    logging.basicConfig(handlers=[handler], level=logging.INFO, format=f"{PROG}: %(levelname)s: %(message)s")
    added, removed = reindex_active(config.SaveDir, config.TaskIdLength)
    if added or removed:
        logging.getLogger(PROG).info("the spool's tasks not yet ended: %d found without their marker, %d markers of "
                                     "ended or deleted tasks removed", added, removed)
    if config.Dispatcher == "celery":
        logging.getLogger(PROG).info("%s started: publishing queued tasks to the broker (the worker hosts run them)",
                                     __version__)
    else:
        logging.getLogger(PROG).info("%s started: at most %d workers at once", __version__, config.MaxParallelTasks)
    dispatch.serve(config, path, ready=lambda: print(f"{PROG}: listening on {dispatch.socket_path(config)}",
                                                     flush=True),
                   run=lambda task: run_worker_in_fork(task, path),
                   prefetch=lambda crash_dir, size: prefetch_in_fork(config, crash_dir, size))
    return 0


def prefetch_in_fork(config: Config, crash_dir: Path, size: int) -> None:
    """``prefetch_packages`` in a grandchild: the dispatcher waits only for the child, which exits at once,
    and goes on dispatching while the core uploads."""
    child = os.fork()
    if child == 0:
        try:
            if os.fork() == 0:
                prefetch_packages(config, crash_dir, size)
        except BaseException:
            logging.getLogger(PROG).exception("the prefetch for upload %s failed", crash_dir.parent.name)
        finally:
            os._exit(0)
    os.waitpid(child, 0)


def prefetch_packages(config: Config, crash_dir: Path, size: int) -> None:
    """Unpack the packages of the core an upload is writing to ``crash_dir``, in one of MaxParallelTasks
    prefetch slots (an flock each, freed however the process ends), for at most WorkerTimeLimit."""
    log = logging.getLogger(PROG)
    upload = crash_dir.parent
    slots = Path(config.SaveDir) / _PREFETCH_SLOTS
    slots.mkdir(mode=0o750, exist_ok=True)
    claims = (locking.try_exclusive(slots / f"{n}.lock") for n in range(config.MaxParallelTasks))
    slot = next((fd for fd in claims if fd is not None), None)
    if slot is None:
        log.info("upload %s: its core's packages are not prefetched, %d prefetches run already", upload.name,
                 config.MaxParallelTasks)
        return
    signal.alarm(config.WorkerTimeLimit)
    started = time.monotonic()
    quiet = logging.getLogger(f"{PROG}.prefetch")
    quiet.setLevel(logging.WARNING)  # a line per package belongs in the task's log, which the worker writes
    indexes, indexed = GdbIndexes(config.CacheDir), []

    def uploading() -> bool:
        return is_live_upload(upload)

    def index(result: Prefetched) -> None:
        """While the rest still uploads, the gdb indexes the first task would build after its answer (not
        after: a gdb building them then would take the cores from the task's own)."""
        indexed.append(indexes.build(debug_files(result.modules, result.trees), quiet,
                                     go_on=uploading))

    result = prefetch(config, crash_dir, size, uploading, quiet, config.WorkerTimeLimit,
                      meanwhile=index)
    index(result)
    log.info("upload %s (a %d-byte core): %s; %d gdb indexes built; in %.2f s", upload.name, size,
             result.summary(), sum(indexed), time.monotonic() - started)


def run_worker_in_fork(task: Task, config_path: Path) -> tuple[int, str]:
    """``retrace-server-worker TASK_ID`` run in a forked child; ``(exit status, "")`` once the task is claimed."""
    child = os.fork()
    if child == 0:
        code = 2
        try:
            os.closerange(3, 1024)  # the dispatcher's socket and files are not the worker's
            code = worker_cli.main([task.task_id, "--config", str(config_path)])
        except BaseException:
            logging.getLogger(PROG).exception("the worker for task %s failed to start", task.task_id)
        finally:
            os._exit(code if isinstance(code, int) else 1)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status), "see the dispatcher's log"


if __name__ == "__main__":
    sys.exit(main())
