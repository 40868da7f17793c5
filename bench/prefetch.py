"""Benchmark: a large core's retrace with its packages unpacked while it uploads, against after it.

Run as root after `make setup`:  .venv/bin/python -m bench.prefetch

The corpus's python3.11 (the archive's python3.11-minimal and -dbg, this
host's other libraries) crashed with 64 MiB of random bytes on its heap, so
the core is as large as a real server's cores and does not compress; sent as
abrt-retrace-client sends it (xz, the core first, the release last) over
HTTPS to two real servers on one apt release, one with PrefetchPackages = 1
and one with 0, the body paced at each of RATES.  Per rate and server, RUNS
cold retraces (package cache, trees and gdb indexes removed before each):
the upload's seconds, then the wait from the last byte sent to
FINISHED_SUCCESS (what the user waits once the upload is done), beside the
same wait warm (every package cached) as the floor; medians.
"""

import http.client
import shutil
import ssl
import statistics
import time

from bench.debian import DEBIAN_FILES
from bench.workspace import Workspace
from testkit.corpus import PROGRAMS, crash
from testkit.debian import DEBIAN_RELEASE, PYTHON, PYTHON_SCRIPT, apt_release, debian_problem_dir
from testkit.helpers import FINAL_STATUSES, abrt_archive, timed_retrace

RUNS = 3
HEAP_MIB = 64
RATES = (12.5, 50.0)  # MiB/s: a 100 Mbit/s link and a 400 Mbit/s one
CHUNK = 256 * 1024
BIG_PYTHON = f"import os\nheap = os.urandom({HEAP_MIB} << 20)\n" + PYTHON_SCRIPT


def paced_retrace(server, archive, rate):
    """``(upload seconds, seconds from the last byte to FINISHED_SUCCESS)`` of one retrace of ``archive``
    whose body is sent at ``rate`` MiB/s."""
    context = ssl.create_default_context(cafile=str(server.cert))
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=120)
    connection.putrequest("POST", "/create")
    for name, value in (("Content-Type", "application/x-xz-compressed-tar"), ("X-Task-Type", "0"),
                        ("Content-Length", str(len(archive)))):
        connection.putheader(name, value)
    connection.endheaders()
    started = time.monotonic()
    for offset in range(0, len(archive), CHUNK):
        due = started + offset / (rate * 1024 * 1024)
        time.sleep(max(0.0, due - time.monotonic()))
        connection.send(archive[offset:offset + CHUNK])
    sent = time.monotonic()
    response = connection.getresponse()
    response.read()
    assert response.status == 201, response.status
    task_id, auth = response.getheader("X-Task-Id"), {"X-Task-Password": response.getheader("X-Task-Password")}
    connection.close()
    while (status := server.get(f"/{task_id}", headers=auth)).headers["X-Task-Status"] not in FINAL_STATUSES:
        time.sleep(0.01)
    ended = time.monotonic()
    log = server.get(f"/{task_id}/log", headers=auth).text
    if status.headers["X-Task-Status"] != "FINISHED_SUCCESS":
        raise RuntimeError(f"task {task_id} failed:\n{log}")
    return sent - started, ended - sent


def cold(server):
    for directory in ("rpms", "sysroots", "gdb-index"):
        shutil.rmtree(server.cache_dir / directory, ignore_errors=True)


def main():
    with Workspace("prefetch") as ws:
        python = next(program for program in PROGRAMS if program.name == "python")
        crashed = crash(python, ws.work, BIG_PYTHON)
        archive = abrt_archive(debian_problem_dir(ws.work / "problem", crashed.core, PYTHON, crashed.package),
                               DEBIAN_FILES)
        servers = {}
        for mode, enabled in (("prefetch", "1"), ("after upload", "0")):
            root = ws.root(f"prefetch-{enabled}")
            apt_release(root / "repos" / DEBIAN_RELEASE, crashed.debs)
            servers[mode] = ws.server(root, PrefetchPackages=enabled, MaxPackedSize="256", MaxUnpackedSize="512")
            timed_retrace(servers[mode], archive)  # the release index is built once
        print(f"core {crashed.core.stat().st_size / 1048576:.1f} MiB, archive {len(archive) / 1048576:.1f} MiB, "
              f"{len(crashed.debs)} packages")
        rows = []
        for rate in RATES:
            waits = {mode: [] for mode in servers}
            uploads = []
            for _ in range(RUNS):
                for mode, server in servers.items():
                    cold(server)
                    upload, wait = paced_retrace(server, archive, rate)
                    waits[mode].append(wait)
                    uploads.append(upload)
            warm = statistics.median(paced_retrace(servers["after upload"], archive, rate)[1] for _ in range(RUNS))
            rows.append((rate, statistics.median(uploads), statistics.median(waits["after upload"]),
                         statistics.median(waits["prefetch"]), warm))
        print(f"{'rate MiB/s':>10} {'upload':>7} {'cold, after':>11} {'cold, prefetch':>14} {'warm':>6} "
              f"{'prefetch/after':>14} {'prefetch/warm':>13}")
        for rate, upload, after, during, warm in rows:
            print(f"{rate:10.1f} {upload:6.2f}s {after:10.2f}s {during:13.2f}s {warm:5.2f}s "
                  f"{during / after:14.2f} {during / warm:13.2f}")
        said = (servers["prefetch"].log_dir / "dispatcher.log").read_text().splitlines()
        print("the dispatcher's prefetches (the first before the benchmark, then by rate):",
              *(line.split("INFO: ", 1)[-1] for line in said if "-byte core)" in line), sep="\n")


if __name__ == "__main__":
    main()
