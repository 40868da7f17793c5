"""The manager's list: filters, search, paging, newest first, and rows that follow the spool."""

import os
import sqlite3
import time
from pathlib import Path

import pytest

from retrace_server.config import Config
from retrace_server.errors import TemporarilyUnavailable
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
    (tmp_path / "spool").mkdir()
    return Config(SaveDir=tmp_path / "spool", CacheDir=tmp_path / "cache")


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


def test_a_row_follows_its_task_through_the_spool_s_markers(config):
    task = add(config, TaskStatus.BACKTRACE)
    assert tasklist.list_tasks(config).rows[0].status == TaskStatus.BACKTRACE
    task.set_status(TaskStatus.SUCCESS)  # a new file in the directory: its mtime moves
    assert tasklist.list_tasks(config).rows[0].status == TaskStatus.SUCCESS
    task.delete()
    assert tasklist.list_tasks(config).rows == []


def test_an_ended_task_s_edits_and_deletion_reach_every_host_s_index(config, tmp_path):
    """Two API hosts on one spool, each with its index in its own CacheDir."""
    other_host = Config(SaveDir=config.SaveDir, CacheDir=tmp_path / "other-cache")
    ended = add(config, TaskStatus.SUCCESS)
    for host in (config, other_host):
        assert tasklist.list_tasks(host, caseno="42").rows == []
    casedata.set_caseno(ended, 42)
    for host in (config, other_host):
        assert [row.task_id for row in tasklist.list_tasks(host, caseno="42").rows] == [ended.task_id]
    ended.delete()
    for host in (config, other_host):
        assert tasklist.list_tasks(host).rows == []


def test_a_task_made_by_hand_is_listed_once_found_and_a_lost_index_is_built_again(config):
    add(config, TaskStatus.SUCCESS)
    assert tasklist.list_tasks(config).total == 1
    (config.SaveDir / "123456789").mkdir()  # by hand: no marker until the next reindex
    (config.SaveDir / "123456789" / "status").write_text(str(int(TaskStatus.SUCCESS)))
    (config.CacheDir / tasklist.INDEX_NAME).unlink()
    assert tasklist.list_tasks(config).total == 2, "built again from the whole spool"


def test_an_unreadable_index_is_set_aside_with_a_line_for_the_admin(config, caplog):
    add(config, TaskStatus.SUCCESS)
    assert tasklist.list_tasks(config).total == 1
    index = config.CacheDir / tasklist.INDEX_NAME
    for suffix in ("-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    index.write_bytes(b"this is not a database" * 100)
    assert tasklist.list_tasks(config).total == 1
    assert "is unreadable" in caplog.text and list(config.CacheDir.glob("tasks.sqlite.broken-*"))


def test_changes_older_than_the_hours_kept_are_forgotten_and_a_stale_index_reads_the_whole_spool(config):
    ended = add(config, TaskStatus.SUCCESS, caseno=5)  # a change of an ended task: this hour's directory
    assert tasklist.list_tasks(config).total == 1
    now = time.time()
    assert tasklist.forget_changes_before(config.SaveDir, now) == 0
    assert tasklist.forget_changes_before(config.SaveDir, now + (tasklist.CHANGED_KEEP_HOURS + 1) * 3600) == 1
    assert os.listdir(config.SaveDir / ".changed") == []
    with tasklist.TaskIndex(config) as index:
        index.db.execute("UPDATE meta SET value = ? WHERE key = 'refreshed'", (repr(now - 49 * 3600),))
    (ended.path / "caseno").write_text("77\n")  # behind the markers' back: only a whole read sees it
    assert [row.caseno for row in tasklist.list_tasks(config).rows] == ["77"]


def test_a_search_matching_more_tasks_than_are_counted_shows_the_newest_and_asks_to_narrow_it(config, monkeypatch):
    monkeypatch.setattr(tasklist, "SEARCH_COUNT_CAP", 3)
    tasks = [add(config, TaskStatus.SUCCESS, queued=number) for number in range(5)]
    listing = tasklist.list_tasks(config, search="bash", per_page=2)
    assert (listing.more, listing.total, listing.pages) == (True, 3, 2)
    assert [row.task_id for row in listing.rows] == [tasks[4].task_id, tasks[3].task_id], "newest first"
    few = tasklist.list_tasks(config, search=tasks[0].task_id)
    assert (few.more, few.total, [row.task_id for row in few.rows]) == (False, 1, [tasks[0].task_id])


def test_a_task_that_starts_and_ends_between_two_looks_is_listed(config):
    assert tasklist.list_tasks(config).rows == []  # the index is built, empty
    quick = add(config, TaskStatus.SUCCESS)
    assert [row.task_id for row in tasklist.list_tasks(config).rows] == [quick.task_id]


def test_a_busy_index_is_a_503_and_is_not_taken_for_a_broken_one(config, monkeypatch):
    add(config, TaskStatus.SUCCESS)
    assert tasklist.list_tasks(config).total == 1
    monkeypatch.setattr(tasklist, "_BUSY_SECONDS", 0.1)
    holder = sqlite3.connect(config.CacheDir / tasklist.INDEX_NAME, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(TemporarilyUnavailable, match="The task list cannot be read right now"):
            tasklist.list_tasks(config)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not list(config.CacheDir.glob("tasks.sqlite.broken-*")) and tasklist.list_tasks(config).total == 1
