"""The cleanup's rules on a spool and a package cache built by the tests."""

import logging
import os
import tarfile
import time

import pytest

from retrace_server import locking
from retrace_server.cleanup.cli import check_expiry_settings
from retrace_server.cleanup.collector import HOUR, Collector
from retrace_server.config import Config, ConfigError
from retrace_server.packaging.cache import SIZE_FILE, PackageCache
from retrace_server.tasks.task import WORKER_LOCK, IncomingTask, Task, TaskStatus, TaskType

NOW = time.time()
MIB = 1024 * 1024


@pytest.fixture
def config(tmp_path):
    (tmp_path / "spool").mkdir()
    return Config(SaveDir=tmp_path / "spool", CacheDir=tmp_path / "cache", DropDir=tmp_path / "archive",
                  LogDir=tmp_path, DeleteTaskAfter=120, DeleteFailedTaskAfter=24, MinStorageLeft=0)


def add_task(config, status, age_hours):
    with IncomingTask(config.SaveDir) as incoming:
        task, _ = incoming.commit(TaskType.COREDUMP, id_length=config.TaskIdLength, password_length=32)
    if status is not None:
        task.set_status(status)
    (task.path / "retrace_backtrace").write_text("#0  main () at main.c:1\n")
    stamp = NOW - age_hours * HOUR
    os.utime(task.path, (stamp, stamp))
    return task


def collector(config, caplog, dry_run=False):
    caplog.set_level(logging.DEBUG, logger="test.cleanup")
    return Collector(config, None, logging.getLogger("test.cleanup"), dry_run=dry_run, now=NOW)


def exists(task):
    return task.path.exists()


def test_finished_task_is_deleted_after_delete_task_after(config, caplog):
    old, young = add_task(config, TaskStatus.SUCCESS, 121), add_task(config, TaskStatus.SUCCESS, 119)
    collector(config, caplog).expire_tasks()
    assert not exists(old) and exists(young)
    assert f"task {old.task_id}: delete; 121 h since its last activity (DeleteTaskAfter)" in caplog.text


def test_failed_task_goes_after_delete_failed_task_after(config, caplog):
    failed, succeeded = add_task(config, TaskStatus.FAIL, 25), add_task(config, TaskStatus.SUCCESS, 25)
    collector(config, caplog).expire_tasks()
    assert not exists(failed) and exists(succeeded)


def test_queued_task_nobody_started_expires_too(config, caplog):
    queued = add_task(config, None, 121)
    collector(config, caplog).expire_tasks()
    assert not exists(queued)


def test_task_whose_worker_runs_is_never_expired(config, caplog):
    running = add_task(config, TaskStatus.BACKTRACE, 500)
    fd = locking.try_exclusive(running.path / WORKER_LOCK)
    try:
        collector(config, caplog).expire_tasks()
    finally:
        os.close(fd)
    assert exists(running)


def test_archive_task_after_saves_a_tarball_without_the_password(config, caplog):
    config = Config(**{**vars(config), "ArchiveTaskAfter": 48})
    task = add_task(config, TaskStatus.SUCCESS, 50)
    collector(config, caplog).expire_tasks()
    [archive] = list(config.DropDir.glob(f"{task.task_id}-*.tar.gz"))
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert f"{task.task_id}/retrace_backtrace" in names and f"{task.task_id}/password" not in names
    assert not exists(task)


def test_dry_run_only_says_what_it_would_do(config, caplog):
    task = add_task(config, TaskStatus.SUCCESS, 200)
    collector(config, caplog, dry_run=True).expire_tasks()
    assert exists(task)
    assert f"would: task {task.task_id}: delete" in caplog.text


def test_orphan_is_ended_failed_with_the_stage_it_was_in(config, caplog):
    orphan = add_task(config, TaskStatus.BACKTRACE, 1)
    collector(config, caplog).end_orphans()
    assert Task(orphan.path).status == TaskStatus.FAIL
    assert "stopped unexpectedly" in Task(orphan.path).failure_reason and "Generating backtrace" in caplog.text


def cache_entry(config, pkgid, size, idle_seconds):
    """An entry as PackageCache leaves it, claiming ``size`` bytes, last used ``idle_seconds`` ago."""
    path = PackageCache(config.CacheDir).entry_path(pkgid)
    (path / "root").mkdir(parents=True)
    (path / "manifest.json").write_text("[]")
    (path / SIZE_FILE).write_text(str(size))
    os.utime(path / "manifest.json", (NOW - idle_seconds, NOW - idle_seconds))
    return path


def test_cache_over_budget_evicts_least_recently_used_first(config, caplog):
    config = Config(**{**vars(config), "CacheSize": 3})
    oldest = cache_entry(config, "aaa", 2 * MIB, 9 * HOUR)
    older = cache_entry(config, "bbb", 1 * MIB, 8 * HOUR)
    newer = cache_entry(config, "ccc", 1 * MIB, 7 * HOUR)
    collector(config, caplog).trim_cache()
    assert not oldest.exists() and older.exists() and newer.exists()


def test_package_used_within_the_worker_time_limit_stays_over_budget(config, caplog):
    config = Config(**{**vars(config), "CacheSize": 1})
    in_use = cache_entry(config, "aaa", 5 * MIB, 60)
    collector(config, caplog).trim_cache()
    assert in_use.exists()
    assert "was used 60 s ago and stays" in caplog.text


def test_package_locked_by_a_task_right_now_stays(config, caplog):
    config = Config(**{**vars(config), "CacheSize": 1})
    locked = cache_entry(config, "aaa", 5 * MIB, 9 * HOUR)
    fd = locking.try_exclusive(PackageCache(config.CacheDir).lock_path("aaa"))
    try:
        collector(config, caplog).trim_cache()
    finally:
        os.close(fd)
    assert locked.exists() and "in use right now and stays" in caplog.text


def test_low_disk_evicts_even_within_budget(config, caplog):
    config = Config(**{**vars(config), "MinStorageLeft": 1024 * 1024 * 1024})
    idle = cache_entry(config, "aaa", 1024, 9 * HOUR)
    collector(config, caplog).trim_cache()
    assert not idle.exists() and "below MinStorageLeft" in caplog.text


def test_failed_tasks_outliving_successful_ones_is_a_config_error():
    with pytest.raises(ConfigError, match="DeleteTaskAfter .* is shorter than DeleteFailedTaskAfter"):
        check_expiry_settings(Config(DeleteTaskAfter=10, DeleteFailedTaskAfter=24))


def test_gdb_roots_and_debuginfod_files_share_the_cache_budget(config, caplog):
    from retrace_server.packaging.debuginfod import BuildIdCache

    config = Config(**{**vars(config), "CacheSize": 1})
    root = config.CacheDir / "roots" / "fedora-41-x86_64-0123456789abcdef"
    (root / "root").mkdir(parents=True)
    (root / "manifest.json").write_text("[]")
    (root / SIZE_FILE).write_text(str(2 * MIB))
    os.utime(root / "manifest.json", (NOW - 9 * HOUR, NOW - 9 * HOUR))
    debuginfo = BuildIdCache(config.CacheDir).path("ab12cd", "debuginfo")
    debuginfo.parent.mkdir(parents=True)
    debuginfo.write_bytes(b"x" * (MIB + 1))
    os.utime(debuginfo, (NOW - 8 * HOUR, NOW - 8 * HOUR))
    collector(config, caplog).trim_cache()
    assert not root.exists() and not debuginfo.exists()
    assert "cache: evict gdb root fedora-41-x86_64-0123456789abcdef" in caplog.text
    assert "cache: evict debuginfod files of ab12cd" in caplog.text


def test_cached_vmlinux_shares_the_cache_budget(config, caplog):
    from retrace_server.packaging.kernel import KernelCache

    config = Config(**{**vars(config), "CacheSize": 1})
    vmlinux = KernelCache(config.CacheDir).entry_path("3b43fad5")
    (vmlinux / "root").mkdir(parents=True)
    (vmlinux / "manifest.json").write_text("[]")
    (vmlinux / SIZE_FILE).write_text(str(590 * MIB))
    os.utime(vmlinux / "manifest.json", (NOW - 9 * HOUR, NOW - 9 * HOUR))
    collector(config, caplog).trim_cache()
    assert not vmlinux.exists() and "cache: evict vmlinux 3b43fad5" in caplog.text


def test_shared_sysroots_share_the_cache_budget_and_stay_while_a_task_may_read_them(config, caplog):
    config = Config(**{**vars(config), "CacheSize": 1})
    idle, recent = (config.CacheDir / "sysroots" / key for key in ("0a1b", "2c3d"))
    for tree, idle_seconds in ((idle, 9 * HOUR), (recent, 60)):
        (tree / "root").mkdir(parents=True)
        (tree / "manifest.json").write_text("[]")
        (tree / SIZE_FILE).write_text(str(2 * MIB))
        os.utime(tree / "manifest.json", (NOW - idle_seconds, NOW - idle_seconds))
    collector(config, caplog).trim_cache()
    assert not idle.exists() and "cache: evict sysroot 0a1b" in caplog.text
    assert recent.exists(), "a tree used within WorkerTimeLimit may be read by a running task"


def test_refused_clients_addresses_are_forgotten_even_without_new_refusals(config, caplog):
    from retrace_server.stats import StatsDB

    with StatsDB.for_config(config) as stats:
        stats.record_refusal("192.0.2.7", retention_hours=24, now=NOW - 30 * HOUR)
    collector(config, caplog).forget_client_addresses()
    with StatsDB.for_config(config) as stats:
        assert [row[0] for row in stats.db.execute("SELECT ip FROM reportfull")] == [""]
    assert "1 client addresses blanked" in caplog.text


def test_a_package_half_unpacked_by_a_worker_that_died_is_removed_and_a_live_one_is_not(config, caplog):
    rpms = config.CacheDir / "rpms"
    dead, live = rpms / ".tmp-aa11-dead0000", rpms / ".tmp-bb22-live0000"
    for partial in (dead, live):
        (partial / "root" / "usr").mkdir(parents=True)
        (partial / ".building").write_text("")
        os.utime(partial, (NOW - HOUR, NOW - HOUR))
    builder = locking.try_exclusive(live / ".building")
    try:
        collector(config, caplog).sweep_partial_entries()
    finally:
        os.close(builder)
    assert not dead.exists() and live.exists()
    assert "cache: remove rpms/.tmp-aa11-dead0000, left half built by a worker that died" in caplog.text


def test_a_download_left_by_a_dead_worker_goes_and_a_running_tasks_stays(config, caplog):
    downloads = config.CacheDir / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "old.123.deb").write_bytes(b"x")
    (downloads / "new.456.deb").write_bytes(b"y")
    stale = NOW - config.WorkerTimeLimit - 601
    os.utime(downloads / "old.123.deb", (stale, stale))
    os.utime(downloads / "new.456.deb", (NOW - 60, NOW - 60))
    collector(config, caplog).sweep_downloads()
    assert sorted(path.name for path in downloads.iterdir()) == ["new.456.deb"]
    assert "downloaded by a worker that died" in caplog.text


def test_a_pass_adopts_tasks_made_by_hand_and_expires_from_the_index(config, caplog):
    """An admin's mkdir: the hourly pass lists SaveDir once, reads only what its index does not know."""
    pass_ = collector(config, caplog)
    pass_.reindex()
    old_by_hand, queued_by_hand = config.SaveDir / "123456789", config.SaveDir / "223456789"
    for directory in (old_by_hand, queued_by_hand):
        directory.mkdir()
    (old_by_hand / "status").write_text(str(int(TaskStatus.FAIL)))
    stamp = NOW - 200 * HOUR
    os.utime(old_by_hand, (stamp, stamp))
    pass_.reindex()
    assert "2 tasks found without the index" in caplog.text
    assert os.listdir(config.SaveDir / ".active") == ["223456789"], "the queued one is counted from now on"
    pass_.expire_tasks()
    assert not old_by_hand.exists() and queued_by_hand.exists()
