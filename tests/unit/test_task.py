import os
import re
import time

import pytest

from retrace_server.errors import Forbidden, NotFound
from retrace_server.files import write_atomically
from retrace_server.tasks.task import (
    INCOMING_DIR,
    IncomingTask,
    Task,
    TaskStatus,
    TaskType,
    count_live_uploads,
    iter_tasks,
    wire_status,
)


def commit(save_dir, task_type=TaskType.COREDUMP):
    with IncomingTask(save_dir) as incoming:
        (incoming.crash_dir / "coredump").write_bytes(b"core")
        return incoming.commit(task_type, id_length=9, password_length=32)


def test_commit_publishes_a_task_with_upstream_files(tmp_path):
    task, password = commit(tmp_path)
    assert re.fullmatch(r"[1-9][0-9]{8}", task.task_id)
    assert re.fullmatch(r"[0-9A-Za-z]{32}", password)
    assert (tmp_path / task.task_id / "password").read_text() == password
    assert (tmp_path / task.task_id / "type").read_text() == "0"
    assert (tmp_path / task.task_id / "crash" / "coredump").read_bytes() == b"core"
    assert (tmp_path / task.task_id / "results").is_dir()
    assert task.timestamp("queued_time") is not None


def test_committed_task_dir_holds_no_upload_lock(tmp_path):
    task, _ = commit(tmp_path)
    assert sorted(os.listdir(task.path)) == ["crash", "password", "queued_time", "results", "type"]


def test_upload_left_without_commit_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), IncomingTask(tmp_path) as incoming:
        (incoming.crash_dir / "coredump").write_bytes(b"core")
        raise RuntimeError("rejected")
    assert os.listdir(tmp_path / INCOMING_DIR) == []
    assert list(iter_tasks(tmp_path, 9)) == []


def test_live_upload_is_counted(tmp_path):
    with IncomingTask(tmp_path):
        assert count_live_uploads(tmp_path) == 1
    assert count_live_uploads(tmp_path) == 0


def test_abandoned_upload_dir_is_swept(tmp_path):
    dead = tmp_path / INCOMING_DIR / "dead"
    dead.mkdir(parents=True)
    (dead / ".upload.lock").write_text("")
    an_hour_ago = time.time() - 3600
    os.utime(dead, (an_hour_ago, an_hour_ago))
    assert count_live_uploads(tmp_path) == 0
    assert not dead.exists()


def test_upload_that_has_not_locked_yet_is_counted_and_kept(tmp_path):
    """Between mkdtemp and flock a starting upload holds no lock; sweeping it then failed the upload."""
    starting = tmp_path / INCOMING_DIR / "starting"
    starting.mkdir(parents=True)
    (starting / ".upload.lock").write_text("")
    assert count_live_uploads(tmp_path) == 1
    assert starting.exists()


def test_open_unknown_or_malformed_id_is_not_found(tmp_path):
    for task_id in ("123456789", "12345", "../../etc", "12345678a"):
        with pytest.raises(NotFound, match="There is no such task"):
            Task.open(tmp_path, task_id, 9)


def test_password_check_accepts_only_the_password(tmp_path):
    task, password = commit(tmp_path)
    task.check_password(password)
    with pytest.raises(Forbidden, match="Invalid password"):
        task.check_password(password[:-1])
    with pytest.raises(Forbidden, match="X-Task-Password"):
        task.check_password(None)


def test_new_task_has_no_status(tmp_path):
    task, _ = commit(tmp_path)
    assert task.status is None


def test_status_is_stored_as_upstreams_integer_code(tmp_path):
    task, _ = commit(tmp_path)
    task.set_status(TaskStatus.FAIL)
    assert task.status == TaskStatus.FAIL
    assert (task.path / "status").read_text() == "7"


def test_wire_status_is_finished_only_for_final_codes():
    assert wire_status(None) == "PENDING"
    assert wire_status(TaskStatus.STATS) == "PENDING"
    assert wire_status(TaskStatus.SUCCESS) == "FINISHED_SUCCESS"
    assert wire_status(TaskStatus.FAIL) == "FINISHED_FAILURE"


def test_status_sentences_are_upstreams():
    assert TaskStatus.INIT.sentence == "Preparing environment for backtrace generation"
    assert TaskStatus.SUCCESS.sentence == "Retrace job finished successfully"


def test_atomic_write_leaves_no_temp_files(tmp_path):
    write_atomically(tmp_path / "status", "1")
    write_atomically(tmp_path / "status", "2")
    assert os.listdir(tmp_path) == ["status"]
    assert (tmp_path / "status").read_text() == "2"


def test_delete_removes_the_task(tmp_path):
    task, _ = commit(tmp_path)
    task.delete()
    assert list(iter_tasks(tmp_path, 9)) == []
    assert [name for name in os.listdir(tmp_path) if not name.startswith(".")] == []


@pytest.mark.parametrize("stored", ["", "\n"])
def test_an_empty_password_file_accepts_no_password_at_all(tmp_path, stored):
    task, _ = commit(tmp_path)
    (task.path / "password").write_text(stored)
    for given in ("", " ", "\n"):
        with pytest.raises(Forbidden, match="Invalid password"):
            task.check_password(given)
