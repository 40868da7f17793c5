"""Benchmark: a busy server's spool, requests at 0, 10,000 and 100,000 kept task directories.

Run as root after `make setup`:  .venv/bin/python -m bench.scale [--tasks 10000,100000]

One real server (Apache, mod_wsgi, HTTPS, the dispatcher; the task manager
on) with the fixture release.  A real ABRT batch makes one finished task;
the spool is then filled with hard-linked clones of it (what a server
keeps for DeleteTaskAfter = 120 hours at 20,000 crashes a day).  At each
size, p50 of RUNS requests: /settings (every ABRT batch starts with it), a
status poll, /, /stats, /metrics, the manager's first list page, two
searches (one task's id; the case number every clone has), and the p50 of 3
whole ABRT batches of the small crash.  Baseline: the same on the spool
holding only the baseline's own tasks, in the same run.  Last, one cleanup pass that expires 10,000 of the clones, with
/settings timed meanwhile.  The clones are made behind the server's back,
so ``retrace-server-cleanup --reindex`` builds the task index after each
fill (timed too), as an admin would after copying tasks into a spool.
"""

import argparse
import errno
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from bench.workspace import Workspace
from testkit.helpers import submit, timed_retrace, wait_final

RUNS = 7
USER, PASSWORD = "bench", "bench-password"
CLEANUP = Path(sys.executable).with_name("retrace-server-cleanup")


def clone_tasks(save_dir, template, count, old=False):
    """``count`` copies of the task directory ``template`` (files hard-linked), under fresh ids; with ``old``
    their directories are dated 200 hours back (past DeleteTaskAfter)."""
    files = [(root, names) for root, _, names in os.walk(template)]
    owner = template.stat()  # the service user, who expires them
    sources: dict[Path, Path] = {}
    made = 0
    while made < count:
        target = save_dir / str(secrets.randbelow(9 * 10 ** 8) + 10 ** 8)
        try:
            target.mkdir()
        except FileExistsError:
            continue
        for root, names in files:
            relative = Path(root).relative_to(template)
            (target / relative).mkdir(exist_ok=True)
            os.chown(target / relative, owner.st_uid, owner.st_gid)
            for name in names:
                source = sources.setdefault(relative / name, Path(root) / name)
                try:
                    os.link(source, target / relative / name)
                except OSError as err:  # ext4 links one inode at most 65,000 times: a copy is the next source
                    if err.errno != errno.EMLINK:
                        raise
                    shutil.copy2(source, target / relative / name)
                    os.chown(target / relative / name, owner.st_uid, owner.st_gid)
                    sources[relative / name] = target / relative / name
        if old:
            past = time.time() - 200 * 3600
            os.utime(target, (past, past))
        made += 1


def p50(call, runs=RUNS):
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(server, archive, task):
    session = requests.Session()
    verify = str(server.cert)

    def get(path, auth=None, headers=None):
        def call():
            answer = session.get(server.url + path, verify=verify, auth=auth, headers=headers, timeout=300)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
        return call

    task_id, headers = task
    timed = {
        "/settings": get("/settings"),
        "a status poll": get(f"/{task_id}", headers=headers),
        "/": get("/"),
        "/stats": get("/stats"),
        "/metrics": get("/metrics"),
        "manager: first list page": get("/manager", auth=(USER, PASSWORD)),
        "manager: search, one task's id": get(f"/manager?q={task_id}", auth=(USER, PASSWORD)),
        "manager: search, every task's case": get("/manager?q=424242", auth=(USER, PASSWORD)),
    }
    results = {name: p50(call) for name, call in timed.items()}
    results["a whole ABRT batch"] = statistics.median(timed_retrace(server, archive)[0] for _ in range(3))
    return results


def cleanup_pass(server, save_dir, count):
    """One cleanup pass expiring ``count`` old clones; ``(seconds, /settings p50 and max meanwhile)``."""
    template = next(path for path in save_dir.iterdir() if path.name.isdigit())
    clone_tasks(save_dir, template, count, old=True)
    latencies, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            started = time.perf_counter()
            requests.get(server.url + "/settings", verify=str(server.cert), timeout=300)
            latencies.append(time.perf_counter() - started)
            time.sleep(0.1)

    poller = threading.Thread(target=poll)
    poller.start()
    started = time.perf_counter()
    ran = subprocess.run([str(CLEANUP), "--config", str(server.config_path)], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    stop.set()
    poller.join()
    assert ran.returncode == 0, ran.stderr
    return seconds, statistics.median(latencies), max(latencies)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="10000,100000", help="spool sizes to measure, comma-separated")
    args = parser.parse_args()
    sizes = [int(size) for size in args.tasks.split(",")]
    with Workspace("scale") as ws:
        root = ws.root("scale")
        _, archive = ws.fixture_release(root)
        users = ws.work / "users"
        subprocess.run(["htpasswd", "-cbB", str(users), USER, PASSWORD], check=True, capture_output=True)
        users.chmod(0o644)
        server = ws.server(root, AllowTaskManager="1", ManagerUserFile=str(users), AllowMetrics="1",
                           DeleteTaskAfter="120")
        save_dir = root / "spool"
        task = submit(server, None, archive=archive)
        wait_final(server, *task, timeout=120)
        template = save_dir / task[0]
        (template / "caseno").write_text("424242\n")  # every clone's case: the broadest search
        subprocess.run([str(CLEANUP), "--config", str(server.config_path), "--reindex"], check=True,
                       capture_output=True)
        results = {0: measure(server, archive, task)}
        made = 0
        for size in sizes:
            started = time.perf_counter()
            clone_tasks(save_dir, template, size - made)
            made = size
            filled = time.perf_counter() - started
            started = time.perf_counter()
            reindex = subprocess.run([str(CLEANUP), "--config", str(server.config_path), "--reindex"],
                                     capture_output=True, text=True)
            assert reindex.returncode == 0, reindex.stderr
            print(f"spool filled to {size:,} task directories in {filled:.0f} s; retrace-server-cleanup --reindex "
                  f"(the clones are made behind the server's back) {time.perf_counter() - started:.1f} s", flush=True)
            results[size] = measure(server, archive, task)
        print(f"{'p50 of ' + str(RUNS) + ' (batch: of 3)':28}" + "".join(f"{size:>12,}" for size in results)
              + "".join(f"{'ratio ' + format(size, ','):>16}" for size in sizes))
        for name in results[0]:
            base = results[0][name]
            print(f"{name:28}" + "".join(f"{results[size][name] * 1000:10.0f}ms" for size in results)
                  + "".join(f"{results[size][name] / base:16.2f}" for size in sizes))
        seconds, median, worst = cleanup_pass(server, save_dir, 10_000)
        print(f"cleanup pass expiring 10,000 of {made + 10_000:,} tasks: {seconds:.1f} s; /settings meanwhile p50 "
              f"{median * 1000:.0f} ms, max {worst * 1000:.0f} ms")


if __name__ == "__main__":
    main()
