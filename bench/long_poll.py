"""Benchmark: how soon a client learns that its task finished — long polls (X-Wait) against plain polls.

Run as root after `make setup`:  .venv/bin/python -m bench.long_poll

On the fixture crash (bench/retrace.py's), warm package cache, through the
real server, in one run and alternating:
  1. retrace-client batch (long polls: each status query held until the stage changes);
  2. a client polling as ABRT does, every 0.2 s (ABRT's default is 10 s), with plain queries.
For each: the time from the task's final status (the ``status`` file's
mtime, written when the worker marks it) to the client having seen it (the
plain poller) or having printed the backtrace (retrace-client); medians of
RUNS; and the status queries each sent.
"""

import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.retrace import fixture_crash
from bench.workspace import Workspace
from testkit.helpers import submit

RUNS = 10
PLAIN_POLL = 0.2
CLIENT = Path(sys.executable).with_name("retrace-client")


def task_dir(server, task_id):
    return server.save_dir / task_id


def long_polled(server, problem):
    """``(seconds from FINISHED to the batch's end, status queries)`` for retrace-client batch."""
    ran = subprocess.run([str(CLIENT), "batch", "--uri", server.url, "--cafile", str(server.cert), "--dir",
                          str(problem), "--status-delay", "0.2", "--verbose"], capture_output=True, text=True,
                         check=True)
    ended = time.time()
    task_id = next(line.split("#")[1].split()[0] for line in ran.stderr.splitlines() if "Retrace job #" in line)
    finished = (task_dir(server, task_id) / "status").stat().st_mtime
    return ended - finished, sum(1 for line in ran.stderr.splitlines() if not line.startswith(("Retrace job #",
                                                                                              "Querying", "Prepar",
                                                                                              "Upload")))


def plain_polled(server, problem):
    """The same for a client polling every PLAIN_POLL seconds without X-Wait, as ABRT's does."""
    task_id, auth = submit(server, problem)
    queries = 0
    while True:
        time.sleep(PLAIN_POLL)
        queries += 1
        answer = server.get(f"/{task_id}", headers=auth)
        if answer.headers["X-Task-Status"].startswith("FINISHED"):
            seen = time.time()
            break
    server.get(f"/{task_id}/backtrace", headers=auth)
    return seen - (task_dir(server, task_id) / "status").stat().st_mtime, queries


def main():
    with Workspace("long-poll") as ws:
        _, _, root, problem = fixture_crash(ws)
        server = ws.server(root, MaxUploadsPerClient="100")
        plain_polled(server, problem)  # warm the package cache
        long, plain = [], []
        for _ in range(RUNS):
            long.append(long_polled(server, problem))
            plain.append(plain_polled(server, problem))
        long_ms = statistics.median(seconds for seconds, _ in long) * 1000
        plain_ms = statistics.median(seconds for seconds, _ in plain) * 1000
        print(f"from FINISHED to the client knowing it, median of {RUNS}: long polls (retrace-client batch, until "
              f"the backtrace is printed) {long_ms:.0f} ms; plain polls every {PLAIN_POLL} s {plain_ms:.0f} ms "
              f"(ABRT's default 10 s: 5 s on average); ratio {long_ms / plain_ms:.2f}")
        print(f"status answers shown per task, median: long polls {statistics.median(q for _, q in long):.0f} "
              f"(--verbose: one line per answer); plain queries {statistics.median(q for _, q in plain):.0f}")


if __name__ == "__main__":
    main()
