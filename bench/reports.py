"""Benchmark: a coreless report of a large crash against the full warm retrace of the same crash.

Run as root after `make setup`:  .venv/bin/python -m bench.reports

The crash: ``bigcrash threads`` (testkit/biglib): eight threads
parked 1,500 frames deep in eight libraries, the main thread crashing 2,500
frames deep in a ninth; ten modules with a few MB of debuginfo each, from
signed RPMs in the fixture release, through the real Apache over HTTPS.
Measured in one run:
  1. the full retrace, warm (packages unpacked), median of 3: the baseline;
  2. the client's side of a report: eu-stack over the core, the uReport;
  3. the server's side: POST /reports/new/ end to end, median of 10, first
     with the symbol cache empty (every frame through eu-addr2line, the
     debuginfo unpacked), then warm;
  4. bytes: the report as the client sends it (gzip-compressed JSON) against
     the xz-compressed core a retrace uploads (the threads fill a few MiB
     of heap each with data, as a real program's core holds data);
  5. throughput: 8 clients posting reports at once for 30 s;
  6. the other kinds (a Python exception, a kernel oops, documents of FAF's
     format): their requests, median of 10, and throughput likewise, against
     the core report's.
"""

import concurrent.futures
import json
import statistics
import sys
import threading
import time

import requests

from bench.workspace import RELEASE_ID, Workspace
from retrace_server.client import unwind
from testkit.cores import crash_installed, installed_tree, make_problem_dir, run_installed
from testkit.distro import BIGCRASH_PACKAGE, build_bigcrash, publish_release
from testkit.helpers import abrt_archive, timed_retrace

RUNS = 10
CLIENTS = 8
THROUGHPUT_SECONDS = 30
UREPORT = ("import json, sys; from retrace_server.client import crash, unwind; "
           "c = crash.from_problem_dir(sys.argv[1]); sys.stdout.write(json.dumps(unwind.ureport(c, sys.argv[2], 'b')))")


def post(server, document):
    started = time.perf_counter()
    answer = requests.post(server.url + "/reports/new/", files={"file": ("ureport.json", document)},
                           verify=str(server.cert), timeout=300)
    seconds = time.perf_counter() - started
    assert answer.status_code == 202, answer.text
    return seconds, answer.json()


def symbolic_reports():
    """A Python exception and a kernel oops of the fixture release, as reporter-ureport sends them."""
    os_info = {"name": "fedora", "version": "41", "architecture": "x86_64"}
    python = {"ureport_version": 2, "os": os_info, "problem": {
        "type": "python", "component": "bigcrash", "exception_name": "ZeroDivisionError", "stacktrace": [
            {"file_name": f"/usr/lib/python3.13/site-packages/big/level{depth}.py", "file_line": depth + 3,
             "function_name": f"level_{depth}"} for depth in range(40)]}}
    oops = {"ureport_version": 2, "os": os_info, "problem": {"type": "kerneloops", "component": "kernel", "frames": [
        {"address": 0, "reliable": depth % 5 != 0, "function_name": f"kfunc_{depth}", "function_offset": 16,
         "function_length": 64, "module_name": "ext4" if depth < 4 else None} for depth in range(40)]}}
    return {"python": json.dumps(python).encode(), "kerneloops": json.dumps(oops).encode()}


def throughput(server, document):
    stop = time.monotonic() + THROUGHPUT_SECONDS
    done = []
    lock = threading.Lock()

    def client():
        session = requests.Session()
        while time.monotonic() < stop:
            answer = session.post(server.url + "/reports/new/", files={"file": ("ureport.json", document)},
                                  verify=str(server.cert), timeout=300)
            assert answer.status_code == 202, answer.text
            with lock:
                done.append(1)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        for future in [pool.submit(client) for _ in range(CLIENTS)]:
            future.result()
    return len(done) * 60 / (time.monotonic() - started)


def main():
    with Workspace("reports") as ws:
        root = ws.root("reports")
        rpms = build_bigcrash(ws.work)
        publish_release(root / "repos", RELEASE_ID, rpms)
        server = ws.server(root, MaxPackedSize="200", MaxUnpackedSize="1024")
        staged = installed_tree(rpms, ws.work)
        core = crash_installed(rpms, ws.work, "threads", program="/usr/bin/bigcrash", staged=staged)
        problem = make_problem_dir(ws.work / "problem-threads", core, "/usr/bin/bigcrash", BIGCRASH_PACKAGE)
        archive = abrt_archive(problem)
        debuginfo = sum(rpm.stat().st_size for rpm in rpms if "debuginfo" in rpm.name)
        print(f"crash: core {core.stat().st_size / 1048576:.1f} MiB ({len(archive) / 1048576:.2f} MiB xz), "
              f"debuginfo RPMs {debuginfo / 1048576:.1f} MiB")

        timed_retrace(server, archive)  # cold: unpacks the packages
        full = statistics.median(timed_retrace(server, archive)[0] for _ in range(3))

        started = time.perf_counter()
        ran = run_installed(staged, sys.executable, "-c", UREPORT, str(problem), "/usr/bin/bigcrash", timeout=300)
        client_seconds = time.perf_counter() - started
        assert ran.returncode == 0, ran.stderr
        plain = ran.stdout.encode()
        document = unwind.encode(json.loads(plain))
        threads = json.loads(plain)["problem"]["stacktrace"]
        frames = sum(len(thread["frames"]) for thread in threads)

        cold = []
        for _ in range(RUNS):
            (root / "spool" / "problems.db").unlink(missing_ok=True)
            for suffix in ("-wal", "-shm"):
                (root / "spool" / f"problems.db{suffix}").unlink(missing_ok=True)
            cold.append(post(server, document))
        warm = [post(server, document) for _ in range(RUNS)]
        per_minute = throughput(server, document)

        print(f"report: {len(threads)} threads, {frames} frames, {len(plain)} bytes of JSON, {len(document)} bytes "
              f"sent gzip-compressed ({100 * len(document) / len(archive):.3f} % of the compressed core); eu-stack "
              f"and uReport on the client {client_seconds:.2f} s")
        print(f"full warm retrace, median of 3 (baseline): {full:.2f} s")
        for label, runs in (("symbol cache empty", cold), ("warm", warm)):
            request = statistics.median(seconds for seconds, _ in runs)
            server_side = statistics.median(answer["seconds"] for _, answer in runs)
            print(f"report, {label}, median of {RUNS}: {request * 1000:.0f} ms request, {server_side * 1000:.0f} ms "
                  f"symbolizing and bucketing (ratio to the retrace {request / full:.4f})")
        print(f"throughput, {CLIENTS} clients for {THROUGHPUT_SECONDS} s: {per_minute:.0f} reports a minute")
        core_request = statistics.median(seconds for seconds, _ in warm)
        for kind, other in symbolic_reports().items():
            runs = [post(server, other) for _ in range(RUNS)]
            request = statistics.median(seconds for seconds, _ in runs)
            print(f"{kind} report (40 frames), median of {RUNS}: {request * 1000:.0f} ms request (ratio to the warm "
                  f"core report {request / core_request:.2f}); throughput {throughput(server, other):.0f} a minute "
                  f"({CLIENTS} clients, {THROUGHPUT_SECONDS} s)")


if __name__ == "__main__":
    main()
