"""Whatever kills a task's processes, the task ends FINISHED_FAILURE with its stage named; none is lost.

Each stage is held open by something the worker really waits for (the
package index being built, a package being unpacked, gdb working through a
deep core, the statistics database), then the job process, or the job
process and its supervisor, get SIGKILL.
"""

import contextlib
import os
import pwd
import subprocess
import sys
import time

import pytest

from retrace_server.tasks.task import TaskStatus
from testkit.distro import RELEASE_ID
from testkit.helpers import kill_worker, lock_held, outcome, package_lock_held, running, submit, wait_final
from testkit.server import SERVICE_USER


def crasher(fixture_rpms):
    return next(path for path in fixture_rpms if path.name.startswith("crasher-1.0"))


def index_lock_held(server):
    """Hold the lock the first task of a release takes to build its package index (stage: analyze)."""
    return lock_held(server.cache_dir / "index", f"{RELEASE_ID}.lock")


_LOCK_STATISTICS = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


@contextlib.contextmanager
def statistics_locked(server):
    """Hold the statistics database's write lock (stage: saving crash statistics), as the service user:
    a connection of root's would leave the WAL files unwritable for the server."""
    user = pwd.getpwnam(SERVICE_USER)
    holder = subprocess.Popen([sys.executable, "-c", _LOCK_STATISTICS, str(server.save_dir / "stats.db")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, user=user.pw_uid,
                              group=user.pw_gid, extra_groups=[])
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.stdin.close()
        holder.wait()


STAGES = {
    "Analyzing crash data": (lambda server, rpms: index_lock_held(server), "problem_dir"),
    "Preparing environment for backtrace generation": (
        lambda server, rpms: package_lock_held(server, crasher(rpms)), "problem_dir"),
    "Generating backtrace": (lambda server, rpms: contextlib.nullcontext(), "deep_problem_dir"),
}
STATUS_CODES = {status.sentence: str(int(status)) for status in TaskStatus}


def wait_for_stage(server, task_id, stage, timeout=60):
    deadline = time.monotonic() + timeout
    status = server.save_dir / task_id / "status"
    while time.monotonic() < deadline:
        if status.exists() and status.read_text() == STATUS_CODES[stage] and (status.parent / "job_pid").exists():
            return
        time.sleep(0.005)
    raise AssertionError(f"task {task_id} never reached {stage!r}")


def wait_until_gone(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while running(pid):
        assert time.monotonic() < deadline, f"process {pid} outlived its SIGKILL"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def supervised_server(start_server):
    # The deep core is larger than the test server's default caps.
    return start_server(MaxPackedSize="64", MaxUnpackedSize="512", MaxParallelTasks="1")


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("killed", ["job", "supervisor"])
def test_a_killed_task_ends_failed_with_its_stage_named(request, supervised_server, fixture_rpms, stage, killed):
    server = supervised_server
    hold, problem = STAGES[stage]
    if stage == "Analyzing crash data":
        for built in (server.cache_dir / "index").glob("*.sqlite"):
            built.unlink()  # the next task builds the index again, under the held lock
    with hold(server, fixture_rpms):
        task_id, auth = submit(server, request.getfixturevalue(problem))
        wait_for_stage(server, task_id, stage)
        queued = submit(server, request.getfixturevalue("problem_dir"))
        job = int((server.save_dir / task_id / "job_pid").read_text())
        kill_worker(server, task_id, supervisor=killed == "supervisor", job=killed == "job")
        wait_until_gone(job)  # SIGKILL, and the parent-death signal, are delivered asynchronously
        first_poll = server.get(f"/{task_id}", headers=auth)
    if killed == "job":
        status = wait_final(server, task_id, auth)
        assert outcome(status) == (f"Retrace job failed: the retrace job was killed by SIGKILL (out of memory?) "
                               f"while: {stage}")
        assert not (server.save_dir / task_id / "sysroot").exists(), "the supervisor removed the dead job's root"
    else:
        # The job dies with its supervisor: nothing of the worker is left, the first poll
        # already tells, and the dispatcher records it.
        assert first_poll.headers["X-Task-Status"] == "FINISHED_FAILURE", outcome(first_poll)
        expected = f"the retrace worker stopped unexpectedly (it was killed or crashed) while: {stage}"
        assert outcome(first_poll) == f"Retrace job failed: {expected}"
        wait_final(server, task_id, auth)
        deadline = time.monotonic() + 10
        while (server.save_dir / task_id / "status").read_text() != "7":
            assert time.monotonic() < deadline, "the dispatcher never recorded the dead task"
            time.sleep(0.05)
        assert (server.save_dir / task_id / "results" / "failure").read_text() == expected
    log = server.get(f"/{task_id}/log", headers=auth).text
    assert f"while: {stage}" in log
    assert wait_final(server, *queued).headers["X-Task-Status"] == "FINISHED_SUCCESS", "the queued task was lost"
    active = server.save_dir / ".active"
    assert task_id not in os.listdir(active) and queued[0] not in os.listdir(active), "both ended: counted no more"
    assert "running_tasks 0" in server.get("/settings").text


@pytest.mark.parametrize("killed", ["job", "supervisor"])
def test_a_worker_killed_after_its_answer_leaves_the_task_finished_successfully(supervised_server, problem_dir,
                                                                                killed):
    """The answer comes first: a worker that dies while it saves statistics (held here by a lock) has already
    marked the task FINISHED_SUCCESS with its backtrace; the task stays so, and the queue goes on."""
    server = supervised_server
    server.get("/stats")  # the database exists before it is locked
    with statistics_locked(server):
        task_id, auth = submit(server, problem_dir)
        wait_for_stage(server, task_id, TaskStatus.SUCCESS.sentence)
        queued = submit(server, problem_dir)
        job = int((server.save_dir / task_id / "job_pid").read_text())
        kill_worker(server, task_id, supervisor=killed == "supervisor", job=killed == "job")
        wait_until_gone(job)
    status = wait_final(server, task_id, auth, settled=False)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", outcome(status)
    assert "crash_in_library" in server.get(f"/{task_id}/backtrace", headers=auth).text
    if killed == "job":
        assert not (server.save_dir / task_id / "sysroot").exists(), "the supervisor removed the dead job's root"
    assert wait_final(server, *queued).headers["X-Task-Status"] == "FINISHED_SUCCESS", "the queued task was lost"

