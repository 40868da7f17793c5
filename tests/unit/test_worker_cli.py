"""retrace-server-worker as a real process on a spool with a synthetic core and no repositories."""

import fcntl
import os
import re
import subprocess
import sys

import pytest

from retrace_server import locking
from retrace_server.tasks.task import WORKER_LOCK, IncomingTask, Task, TaskStatus, TaskType
from retrace_server.worker.cli import claim_when_free
from testkit.synthetic_core import synthetic_core


@pytest.fixture
def spool(tmp_path):
    (tmp_path / "spool").mkdir()
    (tmp_path / "repos").mkdir()
    config = tmp_path / "retrace-server.conf"
    config.write_text(
        f"[retrace]\nSaveDir = {tmp_path / 'spool'}\nRepoDir = {tmp_path / 'repos'}\n"
        f"LogDir = {tmp_path}\nCacheDir = {tmp_path / 'cache'}\n"
    )
    return tmp_path


def add_task(spool, task_type=TaskType.COREDUMP):
    with IncomingTask(spool / "spool") as incoming:
        (incoming.crash_dir / "coredump").write_bytes(synthetic_core())
        (incoming.crash_dir / "executable").write_text("/usr/bin/crasher")
        (incoming.crash_dir / "package").write_text("crasher-1.0-1.fc41")
        (incoming.crash_dir / "os_release").write_text("Fedora release 41 (Forty One)")
        task, _ = incoming.commit(task_type, id_length=9, password_length=32)
    return task


def worker(spool, task_id, *options):
    return subprocess.run(
        [sys.executable, "-m", "retrace_server.worker", task_id, "--foreground", "--config", str(spool / "retrace-server.conf"),
         "--user", "root", *options],
        capture_output=True, text=True, timeout=60,
    )


def test_unsupported_release_ends_the_task_failed_with_the_reason(spool):
    task = add_task(spool)
    result = worker(spool, task.task_id)
    assert result.returncode == 1
    assert task.status == TaskStatus.FAIL
    assert task.failure_reason == "release fedora-41-x86_64 (from os_release 'Fedora release 41 (Forty One)') " \
        "is not supported by this server; it supports: none"
    log = (task.path / "retrace_log").read_text()
    assert re.search(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] \[E\] Task failed: release fedora-41-x86_64", log, re.M)


def test_failed_task_loses_its_coredump_but_a_debug_task_keeps_it(spool):
    normal, debug = add_task(spool), add_task(spool, TaskType.DEBUG)
    worker(spool, normal.task_id)
    worker(spool, debug.task_id)
    assert not normal.crash_dir.exists()
    assert (debug.crash_dir / "coredump").is_file()


def test_started_task_is_not_run_twice_without_restart(spool):
    task = add_task(spool)
    worker(spool, task.task_id)
    result = worker(spool, task.task_id)
    assert result.returncode == 2
    assert "has already been started; use --restart" in result.stderr


def test_restart_runs_a_debug_task_again_from_scratch(spool):
    task = add_task(spool, TaskType.DEBUG)
    worker(spool, task.task_id)
    first_log = (task.path / "retrace_log").read_text()
    assert worker(spool, task.task_id, "--restart").returncode == 1
    assert (task.path / "retrace_log").read_text().count("Task failed") == first_log.count("Task failed") == 1


def test_restart_is_refused_once_the_coredump_is_gone(spool):
    task = add_task(spool)
    worker(spool, task.task_id)
    result = worker(spool, task.task_id, "--restart")
    assert result.returncode == 2 and "its coredump was deleted" in result.stderr


def test_task_with_a_running_worker_is_refused(spool):
    task = add_task(spool)
    fd = os.open(task.path / WORKER_LOCK, os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        result = worker(spool, task.task_id)
    finally:
        os.close(fd)
    assert result.returncode == 2 and "already has a running worker" in result.stderr
    assert Task(task.path).status is None


def test_unknown_task_is_refused(spool):
    result = worker(spool, "123456789")
    assert result.returncode == 2 and "there is no task 123456789" in result.stderr


def test_a_repeated_delivery_gets_the_lock_once_its_holder_lets_go(spool):
    task = add_task(spool)
    holder = locking.try_exclusive(task.path / WORKER_LOCK)
    assert claim_when_free(task, limit=0.2, poll=0.05) is None
    os.close(holder)
    claimed = claim_when_free(task, limit=0.2, poll=0.05)
    assert claimed is not None
    assert locking.is_held(task.path / WORKER_LOCK)
    os.close(claimed)
