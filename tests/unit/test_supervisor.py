"""Whatever ends the job process, the supervisor ends the task with the stage and the cause."""

import os
import signal
import time

from retrace_server.config import Config
from retrace_server.tasks.task import JOB_PID, IncomingTask, TaskStatus, TaskType
from retrace_server.worker.supervisor import supervise


def started_task(tmp_path):
    with IncomingTask(tmp_path) as incoming:
        task, _ = incoming.commit(TaskType.COREDUMP, id_length=9, password_length=32)
    task.set_status(TaskStatus.ANALYZE)
    return task


def test_a_job_killed_by_a_signal_ends_its_task_naming_the_stage_and_the_signal(tmp_path):
    task = started_task(tmp_path)
    cleaned = tmp_path / "cleaned"

    def job():
        task.set_status(TaskStatus.BACKTRACE)
        os.kill(os.getpid(), signal.SIGKILL)

    assert supervise(Config(SaveDir=tmp_path), task, job, lambda: cleaned.touch()) is False
    assert task.status == TaskStatus.FAIL
    assert task.failure_reason == "the retrace job was killed by SIGKILL (out of memory?) while: Generating backtrace"
    assert cleaned.exists()
    assert (task.path / JOB_PID).read_text().isdigit()


def test_a_job_that_raises_past_its_own_handler_is_ended_too(tmp_path):
    task = started_task(tmp_path)

    def job():
        task.set_status(TaskStatus.CLEANUP)
        raise RuntimeError("second failure while recording the first")

    assert supervise(Config(SaveDir=tmp_path), task, job, lambda: None) is False
    assert task.failure_reason == ("the retrace job stopped unexpectedly (exit status 2) without recording its end "
                                   "while: Cleaning environment after backtrace generation")


def test_a_job_that_ended_its_task_is_believed(tmp_path):
    task = started_task(tmp_path)

    def job():
        task.set_status(TaskStatus.SUCCESS)
        return True

    assert supervise(Config(SaveDir=tmp_path), task, job, lambda: None) is True
    assert task.status == TaskStatus.SUCCESS


def test_processes_the_job_left_behind_are_killed(tmp_path):
    task = started_task(tmp_path)
    pid_file = tmp_path / "orphan"

    def job():
        orphan = os.fork()
        if orphan == 0:
            os.execvp("sleep", ["sleep", "60"])
        pid_file.write_text(str(orphan))
        task.set_status(TaskStatus.SUCCESS)
        return True

    supervise(Config(SaveDir=tmp_path), task, job, lambda: None)
    orphan = int(pid_file.read_text())
    deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{orphan}/stat").read().split()[2]
        except FileNotFoundError:
            state = "gone"
        if state in ("Z", "gone"):
            break
        time.sleep(0.01)
    assert state in ("Z", "gone"), "the job's child still runs"


def test_the_job_dies_with_its_supervisor(tmp_path):
    """The job must never outlive the supervisor: it holds the task's lock, and nobody would record its end."""
    task = started_task(tmp_path)
    job_pid = tmp_path / "job"
    supervisor = os.fork()
    if supervisor == 0:
        def job():
            job_pid.write_text(str(os.getpid()))
            time.sleep(60)

        supervise(Config(SaveDir=tmp_path), task, job, lambda: None)
        os._exit(0)
    deadline = time.monotonic() + 10
    while not job_pid.exists() or not job_pid.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(supervisor, signal.SIGKILL)
    os.waitpid(supervisor, 0)
    job = int(job_pid.read_text())
    while time.monotonic() < deadline:
        try:
            if open(f"/proc/{job}/stat").read().split()[2] == "Z":
                break
        except FileNotFoundError:
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the job outlived its supervisor")
