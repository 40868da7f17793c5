"""Benchmark of the HTTP API through the real Apache + mod_wsgi over HTTPS.

Run as root after `make setup`:  .venv/bin/python -m bench.api

Measures, in one run on one machine:
  1. upload throughput of a ~200 MB archive (plain tar and xz -2), against
     the disk-write speed of the same bytes into the same file system;
  2. GET /<id> latency p50/p99 with 20 concurrent clients (ApacheBench, -k);
  3. GET /settings requests per second (ApacheBench, 20 concurrent, -k).
The client runs on the same 2 cores as the server, so 2. and 3. are a
lower bound of what the server alone could do.
"""

import os
import re
import statistics
import subprocess
import time
from pathlib import Path

from bench.workspace import Workspace
from testkit.cores import crash_installed
from testkit.distro import build_rpms

MIB = 1024 * 1024
ARCHIVE_MIB = 200
STATUS_REQUESTS = 4000
SETTINGS_REQUESTS = 4000
CONCURRENCY = 20


def core_like_payload(path, core, size):
    """A real core's bytes, padded to ``size`` with half zero pages and half random ones.

    Real cores are a mix of empty and dense pages; this keeps xz honest.
    """
    with open(path, "wb") as out:
        out.write(core.read_bytes())
        zero_page = bytes(MIB)
        while out.tell() < size:
            out.write(os.urandom(MIB) if (out.tell() // MIB) % 2 else zero_page)
    return path


def build_archives(work, core):
    payload_dir = work / "payload"
    payload_dir.mkdir()
    core_like_payload(payload_dir / "coredump", core, ARCHIVE_MIB * MIB)
    (payload_dir / "executable").write_text("/usr/bin/crasher")
    (payload_dir / "package").write_text("crasher-1.0-1.fc41")
    names = ["coredump", "executable", "package"]
    tar_path = work / "crash.tar"
    subprocess.run(["tar", "cf", str(tar_path), f"--directory={payload_dir}", *names], check=True)
    xz_path = work / "crash.tar.xz"
    with open(xz_path, "wb") as out:
        subprocess.run(["xz", "-2", "-T1", "-c", str(tar_path)], stdout=out, check=True)
    return tar_path, xz_path, payload_dir / "coredump"


_DISCARD_APP = """
def application(environ, start_response):
    body, left = environ["wsgi.input"], int(environ.get("CONTENT_LENGTH") or 0)
    while left > 0:
        chunk = body.read(min(left, 1048576))
        if not chunk:
            break
        left -= len(chunk)
    start_response("201 Created", [("Content-Type", "text/plain"), ("X-Task-Id", "0"), ("X-Task-Password", "-")])
    return [b""]
"""


def start_discard_server(ws):
    """The same Apache + mod_wsgi daemon set-up serving an app that only reads the body.

    Its upload speed is the transport floor (TLS, Apache, the relay to the
    daemon process) that no application code can beat on this machine.
    """
    script = ws.work / "discard.wsgi"
    script.write_text(_DISCARD_APP)
    retrace_conf = Path(__file__).resolve().parent.parent / "httpd" / "retrace.conf"
    include = ws.work / "discard.conf"
    include.write_text(retrace_conf.read_text().replace("WSGIScriptAlias / ${RETRACE_WSGI_SCRIPT}",
                                                        f"WSGIScriptAlias / {script}"))
    return ws.server(ws.root("discard"), launcher_args=("--httpd-conf", str(include)), MaxPackedSize="400")


def disk_write_seconds(directory, size, fsync):
    block = os.urandom(MIB)
    path = Path(directory) / "disk-baseline"
    start = time.perf_counter()
    with open(path, "wb") as out:
        for _ in range(size // MIB):
            out.write(block)
        if fsync:
            out.flush()
            os.fsync(out.fileno())
    elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed


def timed_upload(server, archive, content_type):
    """POST with curl (C, streaming from the file) so the client is not the bottleneck.

    Returns ``(seconds, headers)``.
    """
    argv = [
        "curl", "--silent", "--show-error", "--cacert", str(server.cert), "-X", "POST", "-T", str(archive),
        "-H", f"Content-Type: {content_type}", "-H", "Expect:", "-D", "-", "-o", "/dev/null",
        f"{server.url}/create",
    ]
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    head = dict(line.split(": ", 1) for line in result.stdout.splitlines()[1:] if ": " in line)
    if " 201 " not in result.stdout.splitlines()[0]:
        raise RuntimeError(f"upload failed: {result.stdout}")
    return elapsed, head


def apachebench(url, cert_headers, requests, concurrency):
    argv = ["ab", "-q", "-k", "-n", str(requests), "-c", str(concurrency)]
    for header in cert_headers:
        argv += ["-H", header]
    output = subprocess.run(argv + [url], capture_output=True, text=True, check=True).stdout
    failed = int(re.search(r"Failed requests:\s+(\d+)", output).group(1))
    # ab counts a body whose length differs from the first one as failed; a
    # task's status body changes while its worker runs, so those are answers.
    length = re.search(r"\(Connect: \d+, Receive: \d+, Length: (\d+)", output)
    failed -= int(length.group(1)) if length else 0
    non_2xx = re.search(r"Non-2xx responses:\s+(\d+)", output)
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", output).group(1))
    percentiles = {int(p): int(ms) for p, ms in re.findall(r"^\s+(\d+)%\s+(\d+)", output, re.M)}
    return {"failed": failed, "non_2xx": int(non_2xx.group(1)) if non_2xx else 0, "rps": rps, "ms": percentiles}


def main():
    with Workspace("api") as ws:
        core = crash_installed(build_rpms(ws.work / "build"), ws.work)
        tar_path, xz_path, payload = build_archives(ws.work, core)
        server = ws.server(ws.root("server"), MaxPackedSize="400", MaxUnpackedSize="400", MaxQueuedTasks="1000",
                           MaxUploadsPerClient="1000")

        unpacked = payload.stat().st_size
        page_cache = statistics.median(disk_write_seconds(server.save_dir, unpacked, fsync=False) for _ in range(3))
        synced = statistics.median(disk_write_seconds(server.save_dir, unpacked, fsync=True) for _ in range(3))
        with Workspace("discard") as discarding:
            discard = start_discard_server(discarding)
            floor_times = [timed_upload(discard, tar_path, "application/x-tar")[0] for _ in range(3)]
        tar_times = [timed_upload(server, tar_path, "application/x-tar")[0] for _ in range(3)]
        xz_times = [timed_upload(server, xz_path, "application/x-xz-compressed-tar")[0] for _ in range(3)]
        _, created = timed_upload(server, xz_path, "application/x-xz-compressed-tar")

        tar_mib, xz_mib, unpacked_mib = (tar_path.stat().st_size / MIB, xz_path.stat().st_size / MIB, unpacked / MIB)
        tar_s, xz_s = statistics.median(tar_times), statistics.median(xz_times)
        floor_s = statistics.median(floor_times)
        print(f"archive: plain tar {tar_mib:.0f} MiB, xz -2 {xz_mib:.0f} MiB, unpacked {unpacked_mib:.0f} MiB")
        print(f"disk write, same file system: {unpacked_mib / page_cache:.0f} MiB/s (page cache), "
              f"{unpacked_mib / synced:.0f} MiB/s (with fsync)")
        print(f"transport floor (same Apache/mod_wsgi/TLS, app discards the body): {floor_s:.2f} s = "
              f"{tar_mib / floor_s:.0f} MiB/s")
        print(f"upload tar:  {tar_s:.2f} s = {tar_mib / tar_s:.0f} MiB/s  "
              f"ratio {page_cache / tar_s:.2f} of page-cache write, {synced / tar_s:.2f} of fsync'd write, "
              f"{floor_s / tar_s:.2f} of the transport floor")
        print(f"upload xz:   {xz_s:.2f} s = {xz_mib / xz_s:.0f} MiB/s packed, {unpacked_mib / xz_s:.0f} MiB/s unpacked  "
              f"ratio {page_cache / xz_s:.2f} of page-cache write, {synced / xz_s:.2f} of fsync'd write")

        password = f"X-Task-Password: {created['X-Task-Password']}"
        status = apachebench(f"{server.url}/{created['X-Task-Id']}", [password], STATUS_REQUESTS, CONCURRENCY)
        print(f"GET /<id>, {CONCURRENCY} clients, {STATUS_REQUESTS} requests: p50 {status['ms'][50]} ms, "
              f"p99 {status['ms'][99]} ms, {status['rps']:.0f} req/s, failed {status['failed'] + status['non_2xx']}")
        settings = apachebench(f"{server.url}/settings", [], SETTINGS_REQUESTS, CONCURRENCY)
        print(f"GET /settings, {CONCURRENCY} clients: {settings['rps']:.0f} req/s, p50 {settings['ms'][50]} ms, "
              f"p99 {settings['ms'][99]} ms, failed {settings['failed'] + settings['non_2xx']} "
              f"(spool holds {len(server.task_dirs())} tasks)")


if __name__ == "__main__":
    main()
