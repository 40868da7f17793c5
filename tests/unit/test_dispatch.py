import fcntl
import os
import threading
import time
from unittest import mock

from retrace_server.config import Config
from retrace_server.tasks import dispatch
from retrace_server.tasks.dispatch import dead_worker_reason, fail_if_worker_died, poke, start_queued
from retrace_server.tasks.task import WORKER_LOCK, IncomingTask, TaskStatus, TaskType, worker_alive
from retrace_server.worker import dispatcher


def add_task(save_dir, status=None):
    with IncomingTask(save_dir) as incoming:
        task, _ = incoming.commit(TaskType.COREDUMP, id_length=9, password_length=32)
    if status is not None:
        task.set_status(status)
    return task


def hold_worker_lock(task):
    fd = os.open(task.path / WORKER_LOCK, os.O_CREAT | os.O_RDWR, 0o640)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_worker_is_alive_exactly_while_its_lock_is_held(tmp_path):
    task = add_task(tmp_path, TaskStatus.BACKTRACE)
    assert not worker_alive(task)
    fd = hold_worker_lock(task)
    assert worker_alive(task)
    os.close(fd)
    assert not worker_alive(task)


def test_running_task_without_worker_fails_saying_where_it_stopped(tmp_path):
    task = add_task(tmp_path, TaskStatus.INIT)
    assert fail_if_worker_died(task, Config(SaveDir=tmp_path))
    assert task.status == TaskStatus.FAIL
    assert task.failure_reason == (
        "the retrace worker stopped unexpectedly (it was killed or crashed) while: "
        "Preparing environment for backtrace generation"
    )
    assert "[E] Task failed: the retrace worker stopped unexpectedly" in (task.path / "retrace_log").read_text()
    assert (task.path / "finished_time").read_text().isdigit()


def test_task_with_a_live_worker_or_no_status_is_left_alone(tmp_path):
    running = add_task(tmp_path, TaskStatus.BACKTRACE)
    fd = hold_worker_lock(running)
    queued = add_task(tmp_path)
    try:
        config = Config(SaveDir=tmp_path)
        assert not fail_if_worker_died(running, config) and not fail_if_worker_died(queued, config)
    finally:
        os.close(fd)
    assert running.status == TaskStatus.BACKTRACE and queued.status is None


def recording_worker(tmp_path):
    """A worker command that only records which task it was asked to start."""
    record = tmp_path / "started"
    script = tmp_path / "worker"
    script.write_text(f'#!/bin/sh\necho "$1" >> {record}\n')
    script.chmod(0o755)
    return script, record


def test_dispatcher_starts_queued_tasks_only_into_free_worker_slots(tmp_path):
    save_dir = tmp_path / "spool"
    save_dir.mkdir()
    config = Config(SaveDir=save_dir, MaxParallelTasks=2)
    busy = add_task(save_dir, TaskStatus.BACKTRACE)
    fd = hold_worker_lock(busy)
    queued = [add_task(save_dir) for _ in range(3)]
    script, record = recording_worker(tmp_path)
    try:
        start_queued(config, tmp_path / "retrace-server.conf", {"RETRACE_WORKER": str(script)})
    finally:
        os.close(fd)
    started = record.read_text().split()
    assert len(started) == 1 and started[0] in {task.task_id for task in queued}


def test_worker_that_refuses_to_start_fails_its_task_with_a_sentence(tmp_path):
    config = Config(SaveDir=tmp_path, MaxParallelTasks=1)
    task = add_task(tmp_path)
    start_queued(config, tmp_path / "retrace-server.conf", {"RETRACE_WORKER": "false"})
    assert task.status == TaskStatus.FAIL
    assert task.failure_reason.startswith("the retrace worker could not start")


def test_a_poke_without_a_dispatcher_is_lost_quietly(tmp_path):
    assert poke(Config(SaveDir=tmp_path)) is False


def test_the_dispatcher_ends_dead_workers_tasks_at_start_and_starts_queued_ones_when_poked(tmp_path):
    save_dir = tmp_path / "spool"
    save_dir.mkdir()
    config = Config(SaveDir=save_dir, MaxParallelTasks=1)
    dead = add_task(save_dir, TaskStatus.BACKTRACE)
    script, record = recording_worker(tmp_path)
    listening = threading.Event()
    environ = {"RETRACE_WORKER": str(script)}
    thread = threading.Thread(target=dispatch.serve, args=(config, tmp_path / "r.conf"),
                              kwargs={"ready": listening.set}, daemon=True)
    with mock.patch.dict(os.environ, environ):
        thread.start()
        assert listening.wait(10)
        deadline = time.monotonic() + 10
        while dead.status != TaskStatus.FAIL and time.monotonic() < deadline:
            time.sleep(0.01)
        assert dead.failure_reason.endswith("while: Generating backtrace")
        queued = add_task(save_dir)
        assert poke(config)
        deadline = time.monotonic() + dispatch.SCAN_SECONDS / 2
        while not (record.exists() and record.read_text().split()) and time.monotonic() < deadline:
            time.sleep(0.01)
    # The stand-in worker never claims its task, so a later pass may start it again.
    assert set(record.read_text().split()) == {queued.task_id}


def test_a_dead_worker_s_task_reads_as_failed_without_any_write(tmp_path):
    task = add_task(tmp_path, TaskStatus.INIT)
    before = sorted(os.listdir(task.path))
    assert dead_worker_reason(task, Config(SaveDir=tmp_path)).endswith(
        "while: Preparing environment for backtrace generation")
    assert sorted(os.listdir(task.path)) == before and task.status == TaskStatus.INIT


def test_the_dispatcher_says_what_it_does_in_each_mode(tmp_path, monkeypatch):
    """Locally it starts at most MaxParallelTasks workers; with Celery the worker hosts run the tasks."""
    monkeypatch.setattr(dispatcher.dispatch, "serve", lambda *args, **kwargs: None)
    said = []
    for mode in ("local", "celery"):
        config = tmp_path / f"{mode}.conf"
        config.write_text(f"[retrace]\nSaveDir = {tmp_path}\nLogDir = {tmp_path}\nDispatcher = {mode}\n"
                          "MaxParallelTasks = 3\n")
        with mock.patch.object(dispatcher.logging, "basicConfig"), \
                mock.patch.object(dispatcher.logging.getLogger(dispatcher.PROG), "info") as info:
            assert dispatcher.main(["--config", str(config), "--user", "root"]) == 0
        said.append(info.call_args[0][0] % info.call_args[0][1:])
    assert said[0].endswith("started: at most 3 workers at once")
    assert said[1].endswith("started: publishing queued tasks to the broker (the worker hosts run them)")
