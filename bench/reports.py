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
     debuginfo unpacked: each run's offsets moved by a few bytes), then warm;
  4. bytes: the report as the client sends it (gzip-compressed JSON) against
     the xz-compressed core a retrace uploads (the threads fill a few MiB
     of heap each with data, as a real program's core holds data);
  5. throughput: 8 client processes posting reports at once for 30 s, each over
     a keep-alive connection, with the median and 99th percentile of a request:
     the same report, then the same frames in 288 combinations of the same size
     (symbols known, each one's rendering not);
  6. the other kinds (a Python exception, a kernel oops, documents of FAF's
     format): their requests, median of 10, and throughput likewise, against
     the core report's;
  7. the core report again while problems.db holds 1,000 buckets, then 100,000.
"""

import concurrent.futures
import http.client
import json
import multiprocessing
import ssl
import statistics
import sys
import time
import urllib.parse

import requests

from bench.problems import fill
from bench.workspace import RELEASE_ID, Workspace
from retrace_server.client import unwind
from testkit.cores import crash_installed, installed_tree, make_problem_dir, run_installed
from testkit.distro import BIGCRASH_PACKAGE, build_bigcrash, publish_release
from testkit.helpers import abrt_archive, timed_retrace

RUNS = 10
CLIENTS = 8
BUCKET_SCALES = (1_000, 100_000)
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


def shifted(report, by):
    """``report`` with every frame ``by`` bytes further into its function."""
    for thread in report["problem"]["stacktrace"]:
        for frame in thread["frames"]:
            frame["build_id_offset"] += by
    return report


def same_frames_anew(report):
    """Reports of ``report``'s frames, each of them already symbolized and as many, in combinations the server
    has not rendered: the other threads' frames rotated (16 ways) and reversed or not, the threads in another
    order (9 ways); the crash thread as it is. 288 of them, more than a process keeps rendered, posted in turn."""
    variants = []
    for turn in range(9):
        for rotation in range(16):
            for backwards in (False, True):
                document = json.loads(json.dumps(report))
                threads = document["problem"]["stacktrace"]
                for thread in threads:
                    if not thread.get("crash_thread"):
                        frames = thread["frames"][rotation:] + thread["frames"][:rotation]
                        thread["frames"] = frames[::-1] if backwards else frames
                document["problem"]["stacktrace"] = threads[turn:] + threads[:turn]
                variants.append(unwind.encode(document))
    return variants


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


def _client(url, cert, bodies, content_type, stop_at, ready):
    """One client process: posts ``bodies`` in turn over one keep-alive HTTPS connection until ``stop_at``; the
    seconds each request took."""
    parts = urllib.parse.urlsplit(url)
    context = ssl.create_default_context(cafile=cert)
    connection = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, timeout=300)
    ready.wait()
    times = []
    while time.time() < stop_at:
        begun = time.perf_counter()
        connection.request("POST", "/reports/new/", bodies[len(times) % len(bodies)], {"Content-Type": content_type})
        answer = connection.getresponse()
        text = answer.read()
        assert answer.status == 202, text
        times.append(time.perf_counter() - begun)
    connection.close()
    return times


def throughput(server, *documents, seconds=THROUGHPUT_SECONDS):
    """``CLIENTS`` processes posting ``documents`` as reporter-ureport does (each client in turn, from its own
    place in the list), each over a keep-alive connection, for ``seconds``: ``(reports a minute, p50 seconds,
    p99 seconds)``. Processes, not threads: 8 threads of one Python client share one core and measured the
    client."""
    boundary = "retrace-bench-boundary"
    bodies = [(f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ureport.json\"\r\n"
               "Content-Type: application/json\r\n\r\n").encode() + document + f"\r\n--{boundary}--\r\n".encode()
              for document in documents]
    context = multiprocessing.get_context("fork")
    with context.Manager() as manager:
        ready = manager.Event()
        with concurrent.futures.ProcessPoolExecutor(CLIENTS, mp_context=context) as pool:
            stop_at = time.time() + seconds + 1
            step = max(1, len(bodies) // CLIENTS)
            futures = [pool.submit(_client, server.url, str(server.cert), bodies[number * step:] + bodies[:number * step],
                                   f"multipart/form-data; boundary={boundary}", stop_at, ready)
                       for number in range(CLIENTS)]
            time.sleep(1)
            ready.set()
            begun = time.monotonic()
            times = [seconds for future in futures for seconds in future.result()]
            elapsed = time.monotonic() - begun
    times.sort()
    return len(times) * 60 / elapsed, times[len(times) // 2], times[int(len(times) * 0.99)]


def shown(result):
    per_minute, p50, p99 = result
    return f"{per_minute:,.0f} a minute, p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"


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

        # Symbol cache empty: each run's frames moved by a few bytes are offsets this server has not seen.
        cold = [post(server, unwind.encode(shifted(json.loads(plain), run))) for run in range(1, RUNS + 1)]
        warm = [post(server, document) for _ in range(RUNS)]
        core_load = throughput(server, document)

        print(f"report: {len(threads)} threads, {frames} frames, {len(plain)} bytes of JSON, {len(document)} bytes "
              f"sent gzip-compressed ({100 * len(document) / len(archive):.3f} % of the compressed core); eu-stack "
              f"and uReport on the client {client_seconds:.2f} s")
        print(f"full warm retrace, median of 3 (baseline): {full:.2f} s")
        for label, runs in (("symbol cache empty", cold), ("warm", warm)):
            request = statistics.median(seconds for seconds, _ in runs)
            server_side = statistics.median(answer["seconds"] for _, answer in runs)
            print(f"report, {label}, median of {RUNS}: {request * 1000:.0f} ms request, {server_side * 1000:.0f} ms "
                  f"symbolizing and bucketing (ratio to the retrace {request / full:.4f})")
        print(f"throughput, {CLIENTS} client processes for {THROUGHPUT_SECONDS} s: {shown(core_load)}")
        anew = same_frames_anew(json.loads(plain))
        print(f"the same frames in {len(anew)} combinations (symbols cached, rendering not), {CLIENTS} clients: "
              f"{shown(throughput(server, *anew))}")
        core_request = statistics.median(seconds for seconds, _ in warm)
        for kind, other in symbolic_reports().items():
            runs = [post(server, other) for _ in range(RUNS)]
            request = statistics.median(seconds for seconds, _ in runs)
            print(f"{kind} report (40 frames), median of {RUNS}: {request * 1000:.0f} ms request (ratio to the warm "
                  f"core report {request / core_request:.2f}); {CLIENTS} clients for {THROUGHPUT_SECONDS} s: "
                  f"{shown(throughput(server, other))}")
        # The same known crash while the database holds 1,000 buckets, then 100,000 (written beside the server).
        database = root / "spool" / "problems.db"
        for buckets in BUCKET_SCALES:
            fill(database, buckets, buckets)
            print(f"core report with {buckets:,} other buckets: {shown(throughput(server, document))}")


if __name__ == "__main__":
    main()
