"""``retrace-server-interact TASK ACTION``: an engineer's debugger on a task's own environment.

    retrace-server-interact TASK gdb | crash | shell | printdir
    retrace-server-interact TASK set-success | set-fail [--reason TEXT]
    retrace-server-interact TASK delete

Upstream's actions.  ``gdb`` (a coredump task) and ``crash`` (a vmcore task)
start the debugger exactly as the task's job ran it (``session.json``: the
gdb for the core's architecture, the package tree, the vmlinux and module
debuginfo in the kernel cache), in the same sandbox (bubblewrap, no network,
unprivileged, seccomp), on this terminal, for at most InteractiveTimeLimit
seconds.  ``shell`` opens bash in that sandbox, the task's files at the
paths the debugger sees.  The command is printed before it runs.  An admin
command: run it as root or as the service user.  Exit status: the
debugger's; 2 when the action cannot be taken (the reason is printed).
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from typing import TYPE_CHECKING

from retrace_server import add_version_argument, service
from retrace_server.environments.sandbox import SandboxTimeout, SandboxUnavailable, run_interactive
from retrace_server.environments.session import Session
from retrace_server.errors import ConfigError, NotFound
from retrace_server.privileges import add_service_arguments
from retrace_server.tasks.dispatch import end_failed
from retrace_server.tasks.hooks import delete_task
from retrace_server.tasks.task import Task, worker_alive
from retrace_server.worker.cli import WorkerRefused

if TYPE_CHECKING:
    from collections.abc import Sequence

    from retrace_server.config import Config

PROG = "retrace-server-interact"
SESSIONS = ("gdb", "crash", "shell")
ACTIONS = (*SESSIONS, "printdir", "set-success", "set-fail", "delete")


class Refused(Exception):
    """The action cannot be taken; the message says why."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Open a task's debugger, or end a task by hand.")
    add_version_argument(parser)
    parser.add_argument("task_id", metavar="TASK")
    parser.add_argument("action", metavar="ACTION", choices=ACTIONS, help=" | ".join(ACTIONS))
    parser.add_argument("--reason", default="set by hand with retrace-server-interact",
                        help="with set-success or set-fail: what the task's log and status say")
    add_service_arguments(parser)
    return parser


@service.command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config, _ = service.load(args)
        task = Task.open(config.SaveDir, args.task_id, config.TaskIdLength)
        return act(config, task, args)
    except NotFound:
        print(f"{PROG}: there is no task {args.task_id}", file=sys.stderr)
    except (Refused, WorkerRefused, ConfigError, SandboxUnavailable) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
    return 2


def act(config: Config, task: Task, args: argparse.Namespace) -> int:
    if args.action == "printdir":
        print(task.path)
        return 0
    if args.action in ("set-success", "set-fail"):
        if worker_alive(task):
            raise Refused(f"task {task.task_id} has a running worker; let it end (or stop it) first")
        if args.action == "set-fail":
            end_failed(config, task, args.reason, "set by hand")
        else:
            task.succeed_by_hand(args.reason)
        print(f"task {task.task_id}: {task.status.name.lower() if task.status else 'queued'} ({args.reason})")
        return 0
    if args.action == "delete":
        if worker_alive(task):
            raise Refused(f"task {task.task_id} has a running worker; let it end (or stop it) first")
        delete_task(config, task, logging.getLogger(PROG))
        print(f"task {task.task_id}: deleted")
        return 0
    session = usable_session(task, args.action)
    argv = ["bash", "--norc", "-i"] if args.action == "shell" else list(session.argv)
    print(f"{PROG}: running {shlex.join(argv)}", file=sys.stderr)
    print(f"{PROG}: in the sandbox (bubblewrap, no network, read-only: {' '.join(session.read_only)}"
          f"{f'; root {session.root}' if session.root else ''}), at most {config.InteractiveTimeLimit} s",
          file=sys.stderr)
    try:
        return run_interactive(argv, session.read_only, time_limit=config.InteractiveTimeLimit,
                               memory_bytes=config.gdb_memory_limit_bytes, root=session.root)
    except SandboxTimeout:
        raise Refused(f"the session reached InteractiveTimeLimit ({config.InteractiveTimeLimit} s) and was "
                      "stopped") from None


def usable_session(task: Task, action: str) -> Session:
    """The task's Session, if ``action`` can open it now; Refused says precisely why not."""
    session = Session.load(task)
    if session is None:
        raise Refused(f"task {task.task_id} has no debugger session: its worker never reached the backtrace "
                      "stage (see its log)")
    if action != "shell" and action != session.debugger:
        kind = "vmcore" if session.debugger == "crash" else "coredump"
        raise Refused(f"task {task.task_id} is a {kind} task: use '{session.debugger}', not '{action}'")
    for path, what in session.needs:
        if os.path.exists(path):  # follows links: a tree's link into an evicted cache entry does not exist
            continue
        if what in ("the coredump", "the vmcore") and not task.task_type.keeps_environment:
            task_type = 4 if what == "the vmcore" else 3
            raise Refused(f"{what} of task {task.task_id} was deleted when the task ended: create the task as type "
                          f"{task_type} (X-Task-Type: {task_type}) to keep it")
        raise Refused(f"{what} of task {task.task_id} is gone (cleanup evicts unused cache entries); run "
                      f"'retrace-server-worker {task.task_id} --restart' to prepare it again")
    return session


if __name__ == "__main__":
    sys.exit(main())
