"""Dispatcher = celery: the real HTTPS API, a real RabbitMQ, real Celery workers on two "hosts".

The hosts are network namespaces (testkit/cluster.py) sharing SaveDir
on the local filesystem, which stands in for the NFS mount of a real
cluster; each host has its own package cache.  Deterministic by holding a
package's cache lock on a host, as a task unpacking it would.
"""

import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testkit.cluster import Cluster
from testkit.debian import apt_release, debian_problem_dir
from testkit.foreign import foreign_crash
from testkit.helpers import outcome, package_lock_held, parse_settings, submit, wait_final, wait_for_log_line
from testkit.server import SERVICE_USER, write_config
from tests.integration.manager_client import ENGINEER, ENGINEER_PASSWORD, Engineer

HOSTS = ("w1", "w2")
CLEANUP = Path(sys.executable).with_name("retrace-server-cleanup")


class HostCache:
    """Stands in for a server object where helpers expect ``cache_dir``."""

    def __init__(self, cache_dir):
        self.cache_dir = cache_dir


@pytest.fixture(scope="module")
def cluster(start_server, tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start_broker()
        server = start_server(Dispatcher="celery", BrokerURL=cluster.broker_url, DeliveryLimit="3", AllowMetrics="1")
        user = pwd.getpwnam(SERVICE_USER)
        cluster.server = server
        cluster.configs = {}
        for name in HOSTS:
            cache = server.root / f"cache-{name}"
            cache.mkdir()
            os.chown(cache, user.pw_uid, user.pw_gid)
            cluster.configs[name] = write_config(server.root, name=f"{name}.conf", CacheDir=cache,
                                                 Dispatcher="celery", BrokerURL=cluster.broker_url, DeliveryLimit="3")
            cluster.add_host(name, cluster.configs[name])
        yield cluster
    finally:
        cluster.close()


def crasher(fixture_rpms):
    return next(rpm for rpm in fixture_rpms if rpm.name.startswith("crasher-1.0"))


def host_of(cluster, task_id):
    return (cluster.server.save_dir / task_id / "worker_host").read_text()


def finished(cluster, task):
    return wait_final(cluster.server, *task, timeout=120)


def wait_for_worker_log(cluster, host, text, failure, timeout=90):
    deadline = time.monotonic() + timeout
    while text not in cluster.worker_log(host):
        assert time.monotonic() < deadline, failure
        time.sleep(0.2)


def test_two_hosts_retrace_crashes_concurrently(cluster, problem_dir):
    tasks = [submit(cluster.server, problem_dir) for _ in range(4)]
    for task in tasks:
        status = finished(cluster, task)
        assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", outcome(status)
        assert "crash_in_library (depth=0" in cluster.server.get(f"/{task[0]}/backtrace", headers=task[1]).text
    assert {host_of(cluster, task_id) for task_id, _ in tasks} == set(HOSTS)


def test_an_x86_64_host_with_gdb_multiarch_takes_the_aarch64_queue(cluster, tmp_path):
    """RetraceArchitectures is empty: each host takes its own architecture and every one its debuggers read,
    so a foreign crash needs no foreign host."""
    crash = foreign_crash("aarch64")
    apt_release(cluster.server.repo_dir / "debian-12-aarch64", crash.debs.values(), "arm64")
    problem = debian_problem_dir(tmp_path / "problem", crash.core, "/usr/bin/crasher", "crasher-1.0-1", "aarch64")
    task = submit(cluster.server, problem, names=("coredump", "executable", "package", "os_info"))
    status = finished(cluster, task)
    log = cluster.server.get(f"/{task[0]}/log", headers=task[1]).text
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert "Debugger for aarch64 cores: gdb-multiarch" in log and host_of(cluster, task[0]) in HOSTS
    assert (cluster.server.save_dir / task[0] / "published").read_text() == "aarch64"


def test_killed_host_s_task_finishes_on_the_other_host_exactly_once(cluster, problem_dir, fixture_rpms):
    cluster.kill_host("w2")
    w1_cache = HostCache(cluster.server.root / "cache-w1")
    with package_lock_held(w1_cache, crasher(fixture_rpms)):
        task = submit(cluster.server, problem_dir)
        wait_for_log_line(cluster.server, *task, "Waiting for another task")
        assert host_of(cluster, task[0]) == "w1"
        cluster.start_worker("w2", cluster.configs["w2"])
        cluster.kill_host("w1")
        status = finished(cluster, task)
    cluster.start_worker("w1", cluster.configs["w1"])
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", outcome(status)
    assert host_of(cluster, task[0]) == "w2"
    log = cluster.server.get(f"/{task[0]}/log", headers=task[1]).text
    assert log.count("Retrace job finished successfully") == 1


def test_task_whose_worker_always_dies_fails_after_the_delivery_limit(cluster, problem_dir, fixture_rpms):
    caches = [HostCache(cluster.server.root / f"cache-{name}") for name in HOSTS]
    with package_lock_held(caches[0], crasher(fixture_rpms)), package_lock_held(caches[1], crasher(fixture_rpms)):
        task_id, auth = submit(cluster.server, problem_dir)
        lock = cluster.server.save_dir / task_id / ".worker.lock"
        killed = set()
        deadline = time.monotonic() + 90
        while cluster.server.get(f"/{task_id}", headers=auth).headers["X-Task-Status"] == "PENDING":
            assert time.monotonic() < deadline, "the task never ended"
            text = lock.read_text().strip() if lock.exists() else ""
            if text.isdigit() and int(text) not in killed and Path(f"/proc/{text}").exists():
                os.kill(int(text), signal.SIGKILL)
                killed.add(int(text))
            time.sleep(0.05)
    status = cluster.server.get(f"/{task_id}", headers=auth)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert "the retrace worker died 4 times on this task" in outcome(status)
    assert len(killed) == 4


def test_upload_while_the_broker_is_down_waits_then_runs_once_it_is_back(cluster, problem_dir):
    cluster.stop_broker()
    try:
        task_id, auth = submit(cluster.server, problem_dir)
        assert cluster.server.get(f"/{task_id}", headers=auth).headers["X-Task-Status"] == "PENDING"
        assert not (cluster.server.save_dir / task_id / "published").exists()
    finally:
        cluster.start_broker(first=False)
    cleanup = subprocess.run([str(CLEANUP), "--config", str(cluster.server.config_path)], capture_output=True,
                             text=True, timeout=120)
    assert cleanup.returncode == 0, cleanup.stderr
    assert (cluster.server.save_dir / task_id / "published").exists()
    assert finished(cluster, (task_id, auth)).headers["X-Task-Status"] == "FINISHED_SUCCESS"


def test_broker_restart_loses_neither_queued_nor_running_tasks(cluster, problem_dir, fixture_rpms):
    caches = [HostCache(cluster.server.root / f"cache-{name}") for name in HOSTS]
    with package_lock_held(caches[0], crasher(fixture_rpms)), package_lock_held(caches[1], crasher(fixture_rpms)):
        tasks = [submit(cluster.server, problem_dir) for _ in range(4)]
        wait_for_log_line(cluster.server, *tasks[0], "Waiting for another task")
        cluster.stop_broker()
        cluster.start_broker(first=False)
    statuses = [finished(cluster, task).headers["X-Task-Status"] for task in tasks]
    assert statuses == ["FINISHED_SUCCESS"] * 4


def test_cut_link_requeues_the_task_and_it_is_finished_exactly_once(cluster, problem_dir, fixture_rpms):
    """The broker requeues the cut host's task after its heartbeat, and the other host's delivery
    waits while the cut host's worker still holds the task (shared storage is not cut).  Either
    the cut host noticed the lost connection and stopped its task, and the other host retraces
    it; or the cut host finishes it and the other host's delivery ends.  Both ways: one result."""
    cluster.kill_host("w2")
    w1_cache = HostCache(cluster.server.root / "cache-w1")
    with package_lock_held(w1_cache, crasher(fixture_rpms)):
        task = submit(cluster.server, problem_dir)
        wait_for_log_line(cluster.server, *task, "Waiting for another task")
        cluster.start_worker("w2", cluster.configs["w2"])
        cluster.set_link("w1", up=False)
        try:
            wait_for_worker_log(cluster, "w2", f"retrace.run[{task[0]}] received", "the broker never requeued the "
                                "cut host's task")
        finally:
            cluster.set_link("w1", up=True)
    status = finished(cluster, task)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", outcome(status)
    wait_for_worker_log(cluster, "w2", f"retrace.run[{task[0]}] succeeded", "the requeued delivery never ended")
    if host_of(cluster, task[0]) == "w2":
        assert "Connection to broker lost" in cluster.worker_log("w1")
    else:
        assert "finished by the worker that held it while this delivery waited" in cluster.worker_log("w2")
    log = cluster.server.get(f"/{task[0]}/log", headers=task[1]).text
    assert log.count("Retrace job finished successfully") == 1


def test_stats_and_metrics_count_running_tasks_per_host(cluster, problem_dir, fixture_rpms):
    from prometheus_client.parser import text_string_to_metric_families

    caches = [HostCache(cluster.server.root / f"cache-{name}") for name in HOSTS]
    with package_lock_held(caches[0], crasher(fixture_rpms)), package_lock_held(caches[1], crasher(fixture_rpms)):
        tasks = [submit(cluster.server, problem_dir) for _ in range(2)]
        for task in tasks:
            wait_for_log_line(cluster.server, *task, "Waiting for another task")
        assert "running_by_host" not in cluster.server.get("/stats?format=json").json()  # host names are not public
        metrics = text_string_to_metric_families(cluster.server.get("/metrics").text)
        by_host = next(family for family in metrics if family.name == "retrace_tasks_running_by_host")
        assert {sample.labels["host"]: sample.value for sample in by_host.samples} == {"w1": 1, "w2": 1}
    for task in tasks:
        assert finished(cluster, task).headers["X-Task-Status"] == "FINISHED_SUCCESS"


def test_two_api_hosts_on_one_spool_agree_on_counts_and_the_task_list(cluster, start_server, problem_dir, users):
    """Two more API hosts (each its own Apache and CacheDir, so its own task index) on the cluster's SaveDir:
    what one host accepts, edits or deletes, the other counts and lists."""
    hosts = [start_server(Dispatcher="celery", BrokerURL=cluster.broker_url, SaveDir=str(cluster.server.save_dir),
                          AllowTaskManager="1", ManagerUserFile=str(users), TaskManagerDeleteUsers=ENGINEER)
             for _ in range(2)]
    engineers = [Engineer(host, ENGINEER, ENGINEER_PASSWORD) for host in hosts]
    for engineer in engineers:  # each index built from the shared spool before the upload
        assert engineer.get("/manager").status_code == 200
    cluster.stop_broker()  # nothing is published: the task waits, queued
    try:
        task_id, auth = submit(hosts[0], problem_dir)
        assert [parse_settings(host.get("/settings").text)["running_tasks"] for host in hosts] == ["1", "1"]
        assert all(f"/manager/{task_id}" in engineer.get("/manager?status=queued").text for engineer in engineers)
    finally:
        cluster.start_broker(first=False)
    cleanup = subprocess.run([str(CLEANUP), "--config", str(cluster.server.config_path)], capture_output=True,
                             text=True, timeout=120)
    assert cleanup.returncode == 0, cleanup.stderr
    assert wait_final(hosts[1], task_id, auth, timeout=120).headers["X-Task-Status"] == "FINISHED_SUCCESS"
    assert all(f"/manager/{task_id}" in engineer.get("/manager?status=finished").text for engineer in engineers)
    assert engineers[0].set_field(task_id, "caseno", "31415").status_code in (200, 303)
    assert f"/manager/{task_id}" in engineers[1].get("/manager?case=31415").text, "an ended task's edit"
    assert engineers[1].post(f"/manager/{task_id}/delete", allow_redirects=False).status_code == 303
    assert f"/manager/{task_id}" not in engineers[0].get("/manager").text
    assert [parse_settings(host.get("/settings").text)["running_tasks"] for host in hosts] == ["0", "0"]
