"""Concurrent uploads share one view of the free disk space."""

import pytest

from retrace_server.errors import NotEnoughStorage
from retrace_server.intake import storage
from retrace_server.tasks.task import RESERVED_NAME, IncomingTask


def test_an_upload_cannot_claim_the_space_another_live_upload_has_claimed(tmp_path):
    free = storage.free_bytes(tmp_path)
    with IncomingTask(tmp_path) as first, IncomingTask(tmp_path) as second:
        storage.reserve(tmp_path, first.path, free * 2 // 3, min_left_bytes=0)
        with pytest.raises(NotEnoughStorage, match="not enough storage space"):
            storage.reserve(tmp_path, second.path, free * 2 // 3, min_left_bytes=0)
        storage.reserve(tmp_path, first.path, 0, min_left_bytes=0)
        storage.reserve(tmp_path, second.path, free * 2 // 3, min_left_bytes=0)


def test_a_finished_upload_s_claim_leaves_with_it(tmp_path):
    free = storage.free_bytes(tmp_path)
    with IncomingTask(tmp_path) as first:
        storage.reserve(tmp_path, first.path, free * 2 // 3, min_left_bytes=0)
    assert storage.reserved_by_others(tmp_path) == 0


def test_a_committed_task_keeps_no_claim(tmp_path):
    with IncomingTask(tmp_path) as upload:
        storage.reserve(tmp_path, upload.path, 10, min_left_bytes=0)
        task, _ = upload.commit(0, id_length=9, password_length=16)
    assert not (task.path / RESERVED_NAME).exists()
