import fcntl
import os
import sqlite3
import threading
import time

from retrace_server import locking


def hold(path, mode, seconds):
    """Another open file description holding ``mode`` on ``path`` for ``seconds`` (as another process would)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, mode)

    def release():
        time.sleep(seconds)
        os.close(fd)

    thread = threading.Thread(target=release)
    thread.start()
    return thread


def test_claim_succeeds_past_a_probe_holding_a_shared_lock_for_a_moment(tmp_path):
    path = tmp_path / "task.lock"
    probe = hold(path, fcntl.LOCK_SH, 0.02)
    fd = locking.try_exclusive(path)
    probe.join()
    assert fd is not None
    assert locking.is_held(path) is True
    os.close(fd)


def test_claim_fails_while_an_owner_holds_the_lock(tmp_path):
    path = tmp_path / "task.lock"
    owner = hold(path, fcntl.LOCK_EX, 0.5)
    assert locking.try_exclusive(path) is None
    owner.join()


def test_probe_does_not_take_the_lock_it_looks_at(tmp_path):
    path = tmp_path / "task.lock"
    path.write_text("")
    assert locking.is_held(path) is False
    fd = locking.try_exclusive(path)
    assert fd is not None
    os.close(fd)


def test_sqlite_writers_with_a_queue_wait_on_it_and_write_the_moment_it_is_free(tmp_path):
    path = tmp_path / "problems.db"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    queue = str(tmp_path / "problems.db.lock")
    previous = os.umask(0o077)  # the umask of the process that creates it would keep it private
    try:
        with locking.sqlite_write(setup, queue):
            setup.execute("CREATE TABLE t (x)")
    finally:
        os.umask(previous)
    assert os.stat(queue).st_mode & 0o044 == 0o044, "any other process of the server can wait on it"
    turn = os.open(queue, os.O_RDONLY)
    fcntl.flock(turn, fcntl.LOCK_EX)  # another writer's turn
    wrote = []

    def writer():
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        with locking.sqlite_write(db, queue):
            db.execute("INSERT INTO t VALUES (1)")
        wrote.append(time.monotonic())

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.2)
    assert wrote == [] and setup.execute("SELECT COUNT(*) FROM t").fetchone() == (0,), "it waits its turn"
    released = time.monotonic()
    os.close(turn)
    thread.join()
    assert wrote[0] >= released and setup.execute("SELECT COUNT(*) FROM t").fetchone() == (1,)


def test_a_queue_file_that_cannot_be_opened_leaves_the_writer_to_sqlites_own_waiting(tmp_path):
    db = sqlite3.connect(tmp_path / "problems.db", isolation_level=None)
    with locking.sqlite_write(db, str(tmp_path / "no such directory" / "problems.db.lock")):
        db.execute("CREATE TABLE t (x)")
    assert db.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)
