"""Benchmark: Dispatcher = celery with one and with two worker hosts.

Run as root after `make setup`:  .venv/bin/python -m bench.cluster

The real HTTPS API, a real RabbitMQ and `retrace-server-worker --serve`
hosts in network namespaces (testkit/cluster.py), all on this
machine's 2 cores, sharing SaveDir.  Measured:
  1. dispatch latency: the upload request (which publishes the task with a
     broker confirm) and from its start to the task's first status (a
     worker host claimed it), 20 tasks one after the other;
  2. throughput: 20 fixture crashes submitted at once, retraces per minute,
     with one worker host and with two (each `--concurrency 1`).
"""

import os
import pwd
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from bench.workspace import Workspace
from testkit.cluster import Cluster
from testkit.helpers import submit, wait_final
from testkit.server import SERVICE_USER, write_config

LATENCY_TASKS = 20
BURST = 20


def dispatch_latency(server, archive):
    """``(upload request seconds, upload start -> claimed seconds)``: publishing happens inside /create."""
    started = time.monotonic()
    task_id, auth = submit(server, None, archive=archive)
    uploaded = time.monotonic() - started
    status_file = server.save_dir / task_id / "status"
    while not status_file.exists():
        time.sleep(0.001)
    claimed = time.monotonic() - started
    wait_final(server, task_id, auth, poll=0.02)
    return uploaded, claimed


def burst(server, archive):
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=BURST) as pool:
        tasks = list(pool.map(lambda _: submit(server, None, archive=archive), range(BURST)))
    statuses = [wait_final(server, *task, timeout=600).headers["X-Task-Status"] for task in tasks]
    assert statuses == ["FINISHED_SUCCESS"] * BURST, statuses
    return time.monotonic() - started


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main():
    with Workspace("cluster") as ws:
        root = ws.root("cluster-server")
        rpms, archive = ws.fixture_release(root)
        cluster = Cluster(ws.work)
        ws.callback(cluster.close)
        cluster.start_broker()
        server = ws.server(root, Dispatcher="celery", BrokerURL=cluster.broker_url, MaxQueuedTasks="100",
                           MaxUploadsPerClient="100")
        user = pwd.getpwnam(SERVICE_USER)
        configs = {}
        for name in ("w1", "w2"):
            cache = root / f"cache-{name}"
            cache.mkdir()
            os.chown(cache, user.pw_uid, user.pw_gid)
            configs[name] = write_config(root, name=f"{name}.conf", CacheDir=cache, Dispatcher="celery",
                                         BrokerURL=cluster.broker_url)
        cluster.add_host("w1", configs["w1"])
        time.sleep(3)
        dispatch_latency(server, archive)  # warms w1's package cache
        latencies = [dispatch_latency(server, archive) for _ in range(LATENCY_TASKS)]
        one_host = burst(server, archive)
        cluster.add_host("w2", configs["w2"])
        time.sleep(3)
        dispatch_latency(server, archive)
        two_hosts = burst(server, archive)
        uploads, claims = [u for u, _ in latencies], [c for _, c in latencies]
        print(f"dispatch, {LATENCY_TASKS} tasks one after another: upload request (incl. publish with confirm) "
              f"p50 {statistics.median(uploads) * 1000:.0f} ms; upload start -> claimed by a worker host "
              f"p50 {statistics.median(claims) * 1000:.0f} ms, p99 {percentile(claims, 0.99) * 1000:.0f} ms, "
              f"max {max(claims) * 1000:.0f} ms")
        print(f"throughput, {BURST} crashes at once: one host {one_host:.1f} s = {BURST / one_host * 60:.0f} "
              f"retraces/min; two hosts {two_hosts:.1f} s = {BURST / two_hosts * 60:.0f} retraces/min "
              f"(ratio {one_host / two_hosts:.2f}; all hosts share this machine's 2 cores)")


if __name__ == "__main__":
    main()
