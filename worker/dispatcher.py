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

import argparse
import logging
import os
import sys

from retrace_server import __version__, add_version_argument
from retrace_server.adminlog import syslog_handler
from retrace_server.config import ConfigError, config_path, load_config
from retrace_server.privileges import PrivilegeError, add_service_arguments, append_stderr_to, run_as_service_user
from retrace_server.tasks import dispatch
from retrace_server.worker import cli as worker_cli

PROG = "retrace-server-dispatcher"


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description="Start retrace workers for queued tasks as slots free up.")
    add_version_argument(parser)
    add_service_arguments(parser)
    parser.add_argument("--log", help="append messages to this file instead of standard error")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    path = config_path(os.environ, args.config)
    try:
        config = load_config(path)
        run_as_service_user(args.user)
    except (ConfigError, PrivilegeError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    os.umask(0o027)
    if args.log:
        append_stderr_to(args.log)
    # With LogTo = syslog the log records go there; standard error (--log) keeps what is not a record.
    handler = syslog_handler(config, "dispatcher") if config.LogTo == "syslog" else logging.StreamHandler(sys.stderr)
    logging.basicConfig(handlers=[handler], level=logging.INFO, format=f"{PROG}: %(levelname)s: %(message)s")
    logging.getLogger(PROG).info("%s started: at most %d workers at once", __version__, config.MaxParallelTasks)
    dispatch.serve(config, path, ready=lambda: print(f"{PROG}: listening on {dispatch.socket_path(config)}",
                                                     flush=True),
                   run=lambda task: run_worker_in_fork(task, path))
    return 0


def run_worker_in_fork(task, config_path):
    """``retrace-server-worker TASK_ID`` run in a forked child; ``(exit status, "")`` once the task is claimed."""
    child = os.fork()
    if child == 0:
        code = 2
        try:
            os.closerange(3, 1024)  # the dispatcher's socket and files are not the worker's
            code = worker_cli.main([task.task_id, "--config", str(config_path)])
        except BaseException:  # noqa: BLE001 - whatever happens, this child must not return into the dispatcher
            logging.getLogger(PROG).exception("the worker for task %s failed to start", task.task_id)
        finally:
            os._exit(code if isinstance(code, int) else 1)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status), "see the dispatcher's log"


if __name__ == "__main__":
    sys.exit(main())
