import os
import shutil

import pytest

from retrace_server import locking
from retrace_server.config import Config
from retrace_server.errors import QueueFull, TooManyUploads
from retrace_server.tasks.task import (
    ACTIVE_DIR,
    WORKER_HOST,
    WORKER_LOCK,
    IncomingTask,
    TaskStatus,
    TaskType,
    active_tasks,
    reindex_active,
)
from retrace_server.tasks.taskqueue import admitted_upload, occupancy, queue_position, queued_tasks, running_by_host


def config_for(tmp_path, **values):
    return Config(SaveDir=tmp_path, **values)


def add_task(config, status=None, queued_time=None):
    with IncomingTask(config.SaveDir) as incoming:
        task, _ = incoming.commit(TaskType.COREDUMP, id_length=config.TaskIdLength, password_length=32)
    if status is not None:
        task.set_status(status)
    if queued_time is not None:
        task.mark_time("queued_time", queued_time)
    return task


def test_occupancy_counts_running_queued_and_uploading(tmp_path):
    config = config_for(tmp_path)
    add_task(config)
    running = add_task(config, TaskStatus.BACKTRACE)
    add_task(config, TaskStatus.SUCCESS)
    add_task(config, TaskStatus.FAIL)
    lock = locking.try_exclusive(running.path / WORKER_LOCK)
    try:
        with IncomingTask(tmp_path):
            now = occupancy(config)
    finally:
        os.close(lock)
    assert (now.running, now.queued, now.uploading, now.total) == (1, 1, 1, 3)


def test_a_started_task_whose_worker_died_frees_its_slot_before_anyone_ends_it(tmp_path):
    """After a power loss: nothing holds the dead tasks' locks, so uploads are admitted at once."""
    config = config_for(tmp_path, MaxParallelTasks=1, MaxQueuedTasks=0)
    add_task(config, TaskStatus.BACKTRACE)
    assert occupancy(config).running == 0
    with admitted_upload(config, "192.0.2.1"):
        pass


def test_queue_is_oldest_first(tmp_path):
    config = config_for(tmp_path)
    newer = add_task(config, queued_time=2000)
    older = add_task(config, queued_time=1000)
    assert [t.task_id for t in queued_tasks(config)] == [older.task_id, newer.task_id]
    assert queue_position(newer, config) == 2


def test_admission_refuses_when_every_slot_is_taken(tmp_path):
    config = config_for(tmp_path, MaxParallelTasks=1, MaxQueuedTasks=1)
    add_task(config)
    with admitted_upload(config, "192.0.2.1"), pytest.raises(QueueFull, match="fully loaded"):
        with admitted_upload(config, "192.0.2.1"):
            pass


def test_admission_frees_the_slot_of_a_rejected_upload(tmp_path):
    config = config_for(tmp_path, MaxParallelTasks=1, MaxQueuedTasks=0)
    with pytest.raises(ValueError), admitted_upload(config, "192.0.2.1"):
        raise ValueError("bad archive")
    with admitted_upload(config, "192.0.2.1"):
        pass


def test_one_address_takes_at_most_its_share_of_the_slots(tmp_path):
    config = config_for(tmp_path, MaxUploadsPerClient=2)
    with admitted_upload(config, "192.0.2.1"), admitted_upload(config, "192.0.2.1"):
        with pytest.raises(TooManyUploads, match="You have 2 uploads in progress; this server takes at most 2"):
            with admitted_upload(config, "192.0.2.1"):
                pass
        with admitted_upload(config, "192.0.2.2"):
            pass
    with admitted_upload(config, "192.0.2.1"):
        pass


def test_finished_tasks_do_not_take_slots(tmp_path):
    config = config_for(tmp_path, MaxParallelTasks=1, MaxQueuedTasks=0)
    add_task(config, TaskStatus.SUCCESS)
    with admitted_upload(config, "192.0.2.1"):
        pass


def test_running_by_host_counts_only_tasks_whose_worker_is_alive(tmp_path):
    config = config_for(tmp_path)
    alive, dead = add_task(config, TaskStatus.BACKTRACE), add_task(config, TaskStatus.BACKTRACE)
    for task in (alive, dead):
        (task.path / WORKER_HOST).write_text("w1")
    lock = locking.try_exclusive(alive.path / WORKER_LOCK)
    try:
        assert running_by_host(config) == {"w1": 1}
    finally:
        os.close(lock)


def test_the_counts_read_the_tasks_not_yet_ended_whatever_the_spool_keeps(tmp_path):
    """Ended tasks have no marker in .active/: the counts never open their directories."""
    config = config_for(tmp_path)
    queued, ended = add_task(config), add_task(config, TaskStatus.SUCCESS)
    assert sorted(os.listdir(tmp_path / ACTIVE_DIR)) == [queued.task_id]
    (ended.path / "status").chmod(0)  # a walk of the spool would read it
    assert [task.task_id for task in active_tasks(tmp_path, config.TaskIdLength)] == [queued.task_id]
    queued.set_status(TaskStatus.FAIL)
    assert os.listdir(tmp_path / ACTIVE_DIR) == [] and occupancy(config).total == 0


def test_the_spool_wins_over_the_markers_and_a_reindex_finds_tasks_made_by_hand(tmp_path):
    config = config_for(tmp_path)
    restarted = add_task(config, TaskStatus.FAIL)
    restarted.crash_dir.mkdir(exist_ok=True)
    (restarted.crash_dir / "vmcore").write_bytes(b"kept")
    restarted.forget_run()
    assert [task.task_id for task in queued_tasks(config)] == [restarted.task_id], "a restart queues it again"
    by_hand = tmp_path / "123456789"
    by_hand.mkdir()  # upstream's tools and admins make tasks with mkdir
    gone = add_task(config)
    shutil.rmtree(gone.path)
    ended_elsewhere = add_task(config)
    (ended_elsewhere.path / "status").write_text(str(int(TaskStatus.SUCCESS)))  # by another host's old code
    assert occupancy(config).queued == 1, "markers of a deleted task and of an ended one are dropped"
    assert reindex_active(tmp_path, config.TaskIdLength) == (1, 0)
    assert {task.task_id for task in queued_tasks(config)} == {restarted.task_id, "123456789"}
    deleted = add_task(config)
    deleted.delete()
    assert deleted.task_id not in os.listdir(tmp_path / ACTIVE_DIR)
