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

import contextlib
import ctypes
import logging
import os
import signal

from retrace_server.tasks.dispatch import end_failed
from retrace_server.tasks.task import JOB_PID, TaskStatus, write_atomically

admin_log = logging.getLogger("retrace.worker")
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def supervise(config, task, run_job, clean_up):
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
        return status == TaskStatus.SUCCESS
    stage = status.sentence if status is not None else TaskStatus.ANALYZE.sentence
    reason = f"the retrace job {_how_it_ended(wait_status)} while: {stage}"
    admin_log.error("task %s: %s", task.task_id, reason)
    try:
        clean_up()
    except Exception:  # noqa: BLE001 - leftovers are cleanup's to catch; the end must be recorded
        admin_log.exception("task %s: removing the dead job's leftovers failed", task.task_id)
    end_failed(config, task, reason, "worker died")
    return False


def _run_child(run_job, supervisor):
    """The child: its own process group, so that the parent can kill everything the job started,
    and killed with its parent, so that a job never outlives its supervisor (and its lock)."""
    os.setpgid(0, 0)
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor:
        os._exit(2)  # the supervisor died before the line above
    code = 2
    try:
        code = 0 if run_job() else 1
    except BaseException:  # noqa: BLE001 - the parent records the end; the trace is for the admin
        admin_log.exception("the retrace job raised")
    finally:
        logging.shutdown()
        os._exit(code)


def kill_group(pgid):
    """SIGKILL process group ``pgid`` (its leader alone where the group holds a process we may not signal)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pgid, signal.SIGKILL)


def kill_worker(task, supervisor_pid):
    """SIGKILL a task's supervisor group, then its job's (the job would otherwise record its own end)."""
    try:
        job = int((task.path / JOB_PID).read_text())
    except (OSError, ValueError):
        job = None
    for group in (supervisor_pid, job):
        if group is not None:
            kill_group(group)


def _how_it_ended(wait_status):
    if os.WIFSIGNALED(wait_status):
        name = signal.Signals(os.WTERMSIG(wait_status)).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"stopped unexpectedly (exit status {os.WEXITSTATUS(wait_status)}) without recording its end"
