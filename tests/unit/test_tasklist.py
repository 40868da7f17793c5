"""The manager's list: filters, search, paging, newest first, and rows that follow the spool."""

import os
import time

import pytest

from retrace_server.config import Config
from retrace_server.tasks import casedata, tasklist
from retrace_server.tasks.task import IncomingTask, TaskStatus, TaskType


def add(config, status, caseno=None, package="bash-5.2-1.fc41", queued=0.0):
    with IncomingTask(config.SaveDir) as incoming:
        (incoming.crash_dir / "package").write_text(package)
        (incoming.crash_dir / "coredump").write_bytes(bytes(1000))
        task, _ = incoming.commit(TaskType.COREDUMP, id_length=config.TaskIdLength, password_length=32)
    if status is not None:
        task.set_status(status)
    if caseno:
        casedata.set_caseno(task, caseno)
    task.mark_time("queued_time", queued)
    old = time.time() - 60
    os.utime(task.path, (old, old))
    return task


@pytest.fixture
def config(tmp_path):
    return Config(SaveDir=tmp_path)


def test_filters_search_and_newest_first(config):
    ok = add(config, TaskStatus.SUCCESS, caseno=7, queued=100)
    failed = add(config, TaskStatus.FAIL, package="zsh-5.9-1.fc41", queued=200)
    queued = add(config, None, queued=300)
    running = add(config, TaskStatus.BACKTRACE, queued=400)
    assert [row.task_id for row in tasklist.list_tasks(config).rows] == [
        running.task_id, queued.task_id, failed.task_id, ok.task_id]
    assert [row.task_id for row in tasklist.list_tasks(config, status="failed").rows] == [failed.task_id]
    assert [row.task_id for row in tasklist.list_tasks(config, status="queued").rows] == [queued.task_id]
    assert [row.task_id for row in tasklist.list_tasks(config, status="running").rows] == [running.task_id]
    assert [row.task_id for row in tasklist.list_tasks(config, caseno="7").rows] == [ok.task_id]
    assert [row.task_id for row in tasklist.list_tasks(config, search="ZSH").rows] == [failed.task_id]
    row = tasklist.list_tasks(config, caseno="7").rows[0]
    assert (row.subject, row.size, row.status) == ("bash-5.2-1.fc41", 1015, TaskStatus.SUCCESS)


def test_pages_of_fifty(config):
    for number in range(120):
        add(config, TaskStatus.SUCCESS, queued=number)
    listing = tasklist.list_tasks(config, page=3)
    assert (listing.total, listing.pages, listing.page, len(listing.rows)) == (120, 3, 3, 20)
    assert tasklist.list_tasks(config, page=99).page == 3


def test_a_cached_row_follows_its_task_directory(config):
    task = add(config, TaskStatus.BACKTRACE)
    assert tasklist.list_tasks(config).rows[0].status == TaskStatus.BACKTRACE
    task.set_status(TaskStatus.SUCCESS)  # a new file in the directory: its mtime moves
    assert tasklist.list_tasks(config).rows[0].status == TaskStatus.SUCCESS
    task.delete()
    assert tasklist.list_tasks(config).rows == []
