"""Benchmark of the task manager's list with 10,000 tasks in SaveDir, through the real Apache over HTTPS.

Run as root after `make setup`:  .venv/bin/python -m bench.manager

The spool is the only truth (no index), so a listing reads every task
directory.  Baseline, same run, same spool: ``GET /settings``, which also
reads every task's status (it counts the running and queued ones) and
renders almost nothing.  Measured: the first page of the list, a case
number filter, a text search, the last page, and one task's page; median
of 7 requests each, after one warm-up.
"""

import random
import statistics
import subprocess
import time

import requests

from bench.workspace import Workspace

TASKS = 10_000
RUNS = 7
USER, PASSWORD = "bench", "bench-password"


def fill_spool(save_dir, count):
    """``count`` finished tasks shaped as real ones: upstream's files, a crash/ of three files, case data on
    a tenth of them (readable by the service user; a listing writes nothing)."""
    rng = random.Random(7)
    now = time.time()
    ids = rng.sample(range(10 ** 8, 10 ** 9), count)
    for number, task_id in enumerate(ids):
        task = save_dir / str(task_id)
        (task / "crash").mkdir(parents=True)
        (task / "results").mkdir()
        files = {"password": "x" * 32, "type": str(rng.choice((0, 2, 3, 4))), "status": str(rng.choice((6, 6, 6, 7))),
                 "queued_time": repr(now - number * 60), "started_time": str(int(now - number * 60)),
                 "finished_time": str(int(now - number * 60 + 5)), "retrace_log": "[I] done\n" * 20,
                 "crash/package": f"package{number % 300}-1.0-1.fc41", "crash/executable": "/usr/bin/program",
                 "crash/coredump": "\0" * 4096}
        if number % 10 == 0:
            files["caseno"] = str(1000 + number // 10)
        for name, text in files.items():
            (task / name).write_text(text)
    return [str(task_id) for task_id in ids]


def timed(session, url, cert, runs=RUNS):
    """``(the first request's seconds, the median of the next runs)``."""
    started = time.perf_counter()
    session.get(url, verify=cert).raise_for_status()
    first = time.perf_counter() - started
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        answer = session.get(url, verify=cert)
        times.append(time.perf_counter() - started)
        answer.raise_for_status()
    return first, statistics.median(times)


def main():
    with Workspace("manager") as space:
        root = space.root("manager")
        users = space.work / "users"
        subprocess.run(["htpasswd", "-cbB", str(users), USER, PASSWORD], check=True, capture_output=True)
        users.chmod(0o644)
        started = time.monotonic()
        ids = fill_spool(root / "spool", TASKS)
        print(f"spool of {TASKS} tasks made in {time.monotonic() - started:.1f} s")
        server = space.server(root, AllowTaskManager="1", ManagerUserFile=str(users), MaxQueuedTasks="100000")
        session = requests.Session()
        session.auth = (USER, PASSWORD)
        # Apache's daemons start with empty row caches: the first listing each one serves reads every task.
        server_processes = 2
        _, baseline = timed(session, server.url + "/settings", str(server.cert))
        cases = [
            ("list, first page (50 rows)", "/manager"),
            ("list, filtered by a case number", "/manager?case=1500"),
            ("list, text search", "/manager?q=package42-"),
            ("list, failed only, last page", "/manager?status=failed&page=1000"),
            ("one task's page", f"/manager/{ids[5000]}"),
        ]
        print(f"{'GET':42} {'first':>9} {'median':>9} {'ratio to /settings':>20}")
        print(f"{'/settings (baseline: reads every status)':42} {'':>9} {baseline * 1000:6.0f} ms {1.0:>20.2f}")
        for label, path in cases:
            first, seconds = timed(session, server.url + path, str(server.cert), RUNS * server_processes)
            print(f"{label:42} {first * 1000:6.0f} ms {seconds * 1000:6.0f} ms {seconds / baseline:>20.2f}")


if __name__ == "__main__":
    main()
