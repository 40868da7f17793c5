"""Benchmark: crash buckets at FAF's scale, 1,000,000 reports in 50,000 buckets, against an empty database.

Run as root after `make setup`:  .venv/bin/python -m bench.problems [--reports N] [--buckets M]

One real server (Apache, mod_wsgi, HTTPS; ProblemsPublic = all) with the
fixture release.  Timed, p50 of RUNS requests each: the /problems first
page (HTML and JSON), the triage views (top crashers of a release this
week, growth over 30 days, a component's version range), a bucket page
(HTML and JSON: its days, versions and probable fix), and a new report (a
Python exception, one bucket per run, and the same exception again).
Baseline: the same requests in the same run on a problems.db holding only
what the baseline itself posted.  Then problems.db is filled beside the
running server with N reports (every bucket at least one, the rest
Zipf-distributed over the buckets, spread over a year, 3 releases, 2
architectures, 2,000 components of 5 versions) and everything is timed
again.
"""

import argparse
import json
import random
import statistics
import time

import requests

from bench.workspace import RELEASE_ID, Workspace
from retrace_server.reports.buckets import DB_NAME, BucketDB
from retrace_server.reports.rules import Rules
from retrace_server.reports.stacks import Stack
from testkit.distro import build_rpms, publish_release

RUNS = 15
COMPONENTS = 2000
RELEASES = (RELEASE_ID, "fedora-40-x86_64", "fedora-41-aarch64")
DAY = 86400


def python_report(exception, function):
    return {"ureport_version": 2, "os": {"name": "fedora", "version": "41", "architecture": "x86_64"},
            "problem": {"type": "python", "component": "crasher", "exception_name": exception, "stacktrace": [
                {"file_name": "/usr/lib/python3.13/site-packages/app/core.py", "file_line": 10,
                 "function_name": function},
                {"file_name": "/usr/bin/app", "file_line": 3, "function_name": "<module>"}]}}


def timed(call, runs=RUNS):
    times = []
    for run in range(runs):
        started = time.perf_counter()
        call(run)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(server, bthash, label):
    session = requests.Session()
    verify = str(server.cert)  # per request: a session's own setting loses to REQUESTS_CA_BUNDLE

    def get(path):
        def call(_):
            answer = session.get(server.url + path, verify=verify, timeout=60)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
        return call

    def post(kind):
        def call(run):
            function = f"{label}_{kind}_{run}" if kind == "new" else "known_function"
            document = python_report("ValueError", function)
            answer = session.post(server.url + "/reports/new/", verify=verify, timeout=60,
                                  files={"file": ("ureport.json", json.dumps(document))})
            assert answer.status_code == 202, answer.text
        return call

    requests_timed = {
        "/problems (HTML, first page)": get("/problems"),
        "/problems?format=json": get("/problems?format=json"),
        f"top crashers of {RELEASE_ID} this week": get(f"/problems?format=json&release={RELEASE_ID}&sort=window"),
        "growth over 30 days": get("/problems?format=json&sort=growth&days=30"),
        "a component's version range": get("/problems?format=json&component=app7&version_from=1.1&version_to=1.3"),
        "a bucket page (HTML)": get(f"/problems/{bthash}"),
        "a bucket page (JSON)": get(f"/problems/{bthash}?format=json"),
        "a new report, new bucket": post("new"),
        "a new report, known bucket": post("known"),
    }
    return {name: timed(call) for name, call in requests_timed.items()}


def fill(path, reports, buckets, seed=7):
    """``reports`` reports in ``buckets`` buckets written straight into problems.db (one transaction per 50,000);
    returns the busiest bucket's bthash and the seconds taken."""
    chooser = random.Random(seed)
    now = time.time()
    rules = Rules()
    started = time.perf_counter()
    busiest = None
    with BucketDB(path) as db:
        for start in range(0, reports, 50_000):
            db.db.execute("BEGIN IMMEDIATE")
            for number in range(start, min(reports, start + 50_000)):
                bucket = number if number < buckets else int(chooser.paretovariate(0.8)) % buckets
                component = f"app{bucket % COMPONENTS}"
                version = f"1.{chooser.randrange(5)}-1.fc41"
                release = RELEASES[bucket % len(RELEASES)]
                # the bench's own bulk load: record() without a transaction per report
                recorded = db._record(
                    Stack.core(f"/usr/bin/{component}", [f"crash_{bucket}", f"caller_{bucket % 97}", "main"]), rules,
                    f"Thread 1 (crashed):\n#0  crash_{bucket} () at app.c:{bucket % 500}\n#1  main () at app.c:9\n",
                    "report", f"{component}-{version}", version, release, release.rsplit("-", 1)[1], None,
                    now - chooser.random() * 365 * DAY, component)
                busiest = busiest or recorded.bthash
            db.db.execute("COMMIT")
    return busiest, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=1_000_000)
    parser.add_argument("--buckets", type=int, default=50_000)
    args = parser.parse_args()
    with Workspace("problems") as ws:
        root = ws.root("problems")
        publish_release(root / "repos", RELEASE_ID, build_rpms(ws.work / "build"))
        server = ws.server(root, ProblemsPublic="all")
        first = requests.post(server.url + "/reports/new/", verify=str(server.cert), timeout=60, files={
            "file": ("ureport.json", json.dumps(python_report("ValueError", "known_function")))})
        assert first.status_code == 202, first.text
        empty = measure(server, first.json()["bthash"], "empty")
        busiest, seconds = fill(root / "spool" / DB_NAME, args.reports, args.buckets)
        size = sum(path.stat().st_size for path in (root / "spool").glob(f"{DB_NAME}*"))
        print(f"filled: {args.reports:,} reports in {args.buckets:,} buckets in {seconds:.0f} s; problems.db "
              f"{size / 1048576:.0f} MiB")
        full = measure(server, busiest, "full")
        print(f"{'request (p50 of ' + str(RUNS) + ')':44} {'empty':>9} {f'{args.reports:,} reports':>17} {'ratio':>6}")
        for name, baseline in empty.items():
            print(f"{name:44} {baseline * 1000:7.1f} ms {full[name] * 1000:14.1f} ms {full[name] / baseline:6.2f}")


if __name__ == "__main__":
    main()
