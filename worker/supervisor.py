"""The supervisor: the job runs in a child process group, the parent always records how the task ended.

A job that raises is ended by the job itself (``Job.run``), but nothing in
the job's own process survives a SIGKILL, the OOM killer, a segfault in a
library or a second failure while it records the first.  So the worker
forks: the child runs the stages in a process group of its own, and the
parent, which holds the task's worker lock, waits for it.  When the child
ends without having ended the task, the parent kills what is left of the
group, removes the job's leftovers and ends the task FINISHED_FAILURE with
the stage and the cause (rq's pattern).  If the parent dies as well, the
lock is released (the child dies with it) and the dispatcher ends the task
(``retrace_server.tasks.dispatch``).
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
from typing import TYPE_CHECKING, Callable, NoReturn

from retrace_server.files import write_atomically
from retrace_server.tasks.dispatch import end_failed, kill_group
from retrace_server.tasks.task import JOB_PID, Task, TaskStatus

if TYPE_CHECKING:
    from retrace_server.config import Config

admin_log = logging.getLogger("retrace.worker")
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def supervise(config: Config, task: Task, run_job: Callable[[], bool], clean_up: Callable[[], None]) -> bool:
    """Run ``run_job()`` (True on success) in a child; True when the task ended successfully.

    ``clean_up()`` removes a dead job's leftovers (its sysroot, partial files).
    """
    supervisor = os.getpid()
    child = os.fork()
    if child == 0:
        _run_child(run_job, supervisor)
    write_atomically(task.path / JOB_PID, str(child))
    _, wait_status = os.waitpid(child, 0)
    kill_group(child)
    status = task.status
    if status is not None and status.is_final:
        if wait_status != 0:  # it died after its answer: the answer stands, its leftovers go
            admin_log.warning("task %s: the retrace job %s after its answer", task.task_id,
                              _how_it_ended(wait_status))
            _clean_up(clean_up, task)
        return status == TaskStatus.SUCCESS
    stage = status.sentence if status is not None else TaskStatus.ANALYZE.sentence
    reason = f"the retrace job {_how_it_ended(wait_status)} while: {stage}"
    admin_log.error("task %s: %s", task.task_id, reason)
    _clean_up(clean_up, task)
    end_failed(config, task, reason, "worker died")
    return False


def _clean_up(clean_up: Callable[[], None], task: Task) -> None:
    try:
        clean_up()
    except Exception:
        admin_log.exception("task %s: removing the dead job's leftovers failed", task.task_id)


def _run_child(run_job: Callable[[], bool], supervisor: int) -> NoReturn:
    """The child: its own process group, so that the parent can kill everything the job started,
    and killed with its parent, so that a job never outlives its supervisor (and its lock)."""
    os.setpgid(0, 0)
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor:
        os._exit(2)  # the supervisor died before the line above
    code = 2
    try:
        code = 0 if run_job() else 1
    except BaseException:
        admin_log.exception("the retrace job raised")
    finally:
        logging.shutdown()
        os._exit(code)


def _how_it_ended(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        name = signal.Signals(os.WTERMSIG(wait_status)).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"stopped unexpectedly (exit status {os.WEXITSTATUS(wait_status)}) without recording its end"
