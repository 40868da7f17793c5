"""retrace-server-cleanup on a real server's spool, with real (stuck or killed) workers."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from testkit.helpers import kill_worker, outcome, package_lock_held, running, submit, wait_final, wait_for_log_line
from testkit.server import write_config

CLEANUP = Path(sys.executable).with_name("retrace-server-cleanup")


def cleanup(server, *arguments, **settings):
    """Run the cleanup command on ``server``'s spool with config overrides."""
    config = write_config(server.root, name="cleanup.conf", **settings)
    return subprocess.run([str(CLEANUP), "--config", str(config), *arguments], capture_output=True, text=True,
                          timeout=120)


def crasher(fixture_rpms):
    return next(rpm for rpm in fixture_rpms if rpm.name.startswith("crasher-1.0"))


def status_file(server, task_id):
    return (server.save_dir / task_id / "status").read_text()


def test_worker_over_its_time_limit_is_killed_and_its_task_failed(start_server, fixture_rpms, problem_dir):
    server = start_server()
    with package_lock_held(server, crasher(fixture_rpms)):
        task_id, auth = submit(server, problem_dir)
        wait_for_log_line(server, task_id, auth, "Waiting for another task")
        worker_pid = int((server.save_dir / task_id / ".worker.lock").read_text())
        time.sleep(1.2)
        result = cleanup(server, WorkerTimeLimit="1")
        assert result.returncode == 0, result.stderr
        assert f"task {task_id}: kill worker {worker_pid}" in result.stdout
        status = wait_final(server, task_id, auth)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert "the retrace worker was stopped after running" in outcome(status)
    assert "WorkerTimeLimit = 1 s" in outcome(status)
    assert not running(worker_pid)


def test_with_the_dispatcher_dead_cleanup_ends_an_orphan_and_starts_the_queued_task(start_server, fixture_rpms,
                                                                                      problem_dir):
    """The last safety net: the worker's supervisor and job and the dispatcher all died."""
    server = start_server(MaxParallelTasks="1")
    with package_lock_held(server, crasher(fixture_rpms)):
        first = submit(server, problem_dir)
        wait_for_log_line(server, *first, "Waiting for another task")
        os.kill(server.dispatcher_pid(), signal.SIGKILL)
        second = submit(server, problem_dir)
        kill_worker(server, first[0])
        time.sleep(0.2)
        assert not (server.save_dir / second[0] / "status").exists(), "no dispatcher, nothing started it"
        result = cleanup(server)
        assert result.returncode == 0, result.stderr
        assert f"task {first[0]}: no worker runs it any more" in result.stdout
        assert status_file(server, first[0]) == "7"
        assert (server.save_dir / second[0] / "status").exists(), "cleanup started the queued task"
    assert wait_final(server, *second).headers["X-Task-Status"] == "FINISHED_SUCCESS"


def finished_task_idle_for(server, problem_dir, hours):
    """A retraced task whose last activity was ``hours`` ago."""
    task_id, auth = submit(server, problem_dir)
    wait_final(server, task_id, auth)
    old = time.time() - hours * 3600
    os.utime(server.save_dir / task_id, (old, old))
    return task_id, auth, old


def test_dry_run_changes_nothing_in_the_spool_or_the_cache(start_server, problem_dir):
    server = start_server()
    task_id, _, old = finished_task_idle_for(server, problem_dir, 1000)
    for manifest in (server.cache_dir / "rpms").glob("*/manifest.json"):
        os.utime(manifest, (old, old))
    before = snapshot(server.root)
    result = cleanup(server, "--dry-run", MinStorageLeft=str(1024 * 1024 * 1024), WorkerTimeLimit="1")
    assert result.returncode == 0, result.stderr
    assert f"would: task {task_id}: delete" in result.stdout and "would: cache: evict" in result.stdout
    assert snapshot(server.root) == before


def snapshot(root):
    found = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            if name in ("cleanup.conf", "launcher.out") or name.endswith(".log"):
                continue
            path = os.path.join(directory, name)
            found[path] = os.lstat(path).st_mtime_ns
    return found


def test_expired_task_is_deleted_by_the_real_command(start_server, problem_dir):
    server = start_server()
    task_id, auth, _ = finished_task_idle_for(server, problem_dir, 200)
    assert cleanup(server).returncode == 0
    assert server.get(f"/{task_id}", headers=auth).status_code == 404
    assert "delete; 200 h since its last activity" in (server.log_dir / "cleanup.log").read_text()
