"""Benchmark: how soon a queued task starts once a worker slot frees.

Run as root after `make setup`:  .venv/bin/python -m bench.dispatch

With MaxParallelTasks 1, HANDOFFS + 1 tasks are queued behind one that waits
for a held package lock; the lock is released and the tasks run one after
another.  The hand-off is the time from one task's status turning final (its
worker pokes the dispatcher as it ends) to the next task's first status
(written by the worker the dispatcher launched), read by polling the status
files every millisecond.

Baseline, measured in the same run on the same server with its dispatcher
stopped: launching `retrace-server-worker TASK_ID` by hand, from the exec to
the task's first status.  That launch is the floor of any hand-off, so the
ratio says what the dispatcher adds to it.
"""

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.workspace import Workspace
from testkit.helpers import package_lock_held, submit, wait_final

HANDOFFS = 20
LAUNCHES = 10
POLL = 0.001
FINAL = ("6", "7")


def status_of(server, task_id):
    try:
        return (server.save_dir / task_id / "status").read_text()
    except FileNotFoundError:
        return None


class StatusWatch(threading.Thread):
    """Records, per task, when its status first appeared and when it became final."""

    def __init__(self, server, task_ids):
        super().__init__(daemon=True)
        self.server, self.task_ids = server, task_ids
        self.started, self.ended = {}, {}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            now = time.monotonic()
            for task_id in self.task_ids:
                if task_id in self.ended:
                    continue
                status = status_of(self.server, task_id)
                if status is not None:
                    self.started.setdefault(task_id, now)
                if status in FINAL:
                    self.ended[task_id] = now
            time.sleep(POLL)


def handoffs(server, archive, crasher_rpm):
    """Seconds from each task's end to the next one's start, in queue order."""
    with package_lock_held(server, crasher_rpm):
        first = submit(server, None, archive=archive)
        queued = [submit(server, None, archive=archive) for _ in range(HANDOFFS)]
        watch = StatusWatch(server, [first[0], *(task_id for task_id, _ in queued)])
        watch.start()
    for task in [first, *queued]:
        assert wait_final(server, *task, timeout=600).headers["X-Task-Status"] == "FINISHED_SUCCESS"
    time.sleep(0.05)
    watch.stop.set()
    watch.join()
    order = [first[0], *(task_id for task_id, _ in queued)]
    return [watch.started[after] - watch.ended[before] for before, after in zip(order, order[1:])]


def direct_launches(server, archive):
    """Seconds from exec of retrace-server-worker to its task's first status, with no dispatcher."""
    os.kill(server.dispatcher_pid(), signal.SIGKILL)
    worker = Path(sys.executable).with_name("retrace-server-worker")
    seconds = []
    for _ in range(LAUNCHES):
        task_id, auth = submit(server, None, archive=archive)
        started = time.monotonic()
        process = subprocess.Popen([str(worker), "--config", str(server.config_path), task_id])
        while status_of(server, task_id) is None:
            time.sleep(POLL)
        seconds.append(time.monotonic() - started)
        process.wait()
        assert wait_final(server, task_id, auth).headers["X-Task-Status"] == "FINISHED_SUCCESS"
    return seconds


def describe(values):
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"p50 {1000 * statistics.median(ordered):.1f} ms, p99 {1000 * p99:.1f} ms, max {1000 * ordered[-1]:.1f} ms"


def main():
    with Workspace("dispatch") as ws:
        root = ws.root("dispatch")
        rpms, archive = ws.fixture_release(root)
        server = ws.server(root, MaxParallelTasks="1", MaxQueuedTasks="50", MaxUploadsPerClient="100")
        warm = submit(server, None, archive=archive)
        assert wait_final(server, *warm).headers["X-Task-Status"] == "FINISHED_SUCCESS"
        crasher = next(rpm for rpm in rpms if rpm.name.startswith("crasher-1.0"))
        handoff = handoffs(server, archive, crasher)
        launch = direct_launches(server, archive)
    print(f"hand-off, a task's end to the next task's start ({len(handoff)}): {describe(handoff)}")
    print(f"baseline, launching the worker by hand ({len(launch)}): {describe(launch)}")
    print(f"ratio hand-off / launch (p50): {statistics.median(handoff) / statistics.median(launch):.2f}")


if __name__ == "__main__":
    main()
