"""Benchmark: what 80 slow clients from 80 addresses do to everyone else, through the real Apache + mod_wsgi.

Run as root after `make setup`:  .venv/bin/python -m bench.slow_clients

In one run, on one server with the fixture release:
  1. calm: GET /settings every 0.2 s (p50, max) and a normal ABRT batch (upload, poll every 0.2 s
     until FINISHED) from 127.0.9.9;
  2. loaded: the same, while 40 /create and 40 /reports/new/ bodies trickle at 600 B/s, each from an
     address of its own (127.0.1.N and 127.0.2.N); a client that is cut reconnects at once, so the load
     holds for the whole measurement.
Prints each figure and its ratio to the calm one.  The issue's targets: /settings p50 <= 50 ms and
max <= 1 s under load.
"""

import concurrent.futures
import contextlib
import functools
import socket
import ssl
import statistics
import sys
import threading
import time

import requests
from requests.adapters import HTTPAdapter

from bench.workspace import Workspace
from testkit.helpers import XZ_TAR

SLOW_CLIENTS = 40
RATE = 600
LOADED_SECONDS = 60
POLL = 0.2


class _Bound(HTTPAdapter):
    """Connections from one loopback address of our choosing."""

    def __init__(self, source):
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def session_from(source, cert):
    session = requests.Session()
    session.mount("https://", _Bound(source))
    # Not session.verify: a CURL_CA_BUNDLE in the environment wins over it, not over a request's own.
    session.request = functools.partial(session.request, verify=str(cert))
    return session


def settings_latencies(server, session, seconds):
    """Seconds each ``/settings`` took, an answer other than 200 included (counted in ``failed``)."""
    times, failed = [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        answer = session.get(server.url + "/settings", timeout=120)
        times.append(time.monotonic() - started)
        if answer.status_code != 200:
            failed.append(answer.status_code)
        time.sleep(POLL)
    if failed:
        progress(f"/settings failed {len(failed)} of {len(times)} times: {sorted(set(failed))}")
    return times


def batch_seconds(server, source, cert, archive):
    """An ABRT batch as the client makes it: a connection of its own, upload, then polls."""
    session = session_from(source, cert)
    started = time.monotonic()
    created = session.post(server.url + "/create", data=archive, headers={"Content-Type": XZ_TAR}, timeout=300)
    if created.status_code != 201:
        progress(f"a normal batch was refused after {time.monotonic() - started:.1f} s: {created.status_code}")
        return None
    auth = {"X-Task-Password": created.headers["X-Task-Password"]}
    while True:
        status = session.get(f"{server.url}/{created.headers['X-Task-Id']}", headers=auth, timeout=300)
        if status.headers["X-Task-Status"].startswith("FINISHED"):
            assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", status.text
            return time.monotonic() - started
        time.sleep(POLL)


def slow_client(server, path, headers, source, stop, cuts):
    """Trickle a body from ``source`` until ``stop``; reconnect whenever the server cuts it."""
    context = ssl.create_default_context(cafile=str(server.cert))
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=30,
                                          source_address=(source, 0)) as plain, \
                    context.wrap_socket(plain, server_hostname="127.0.0.1") as tls:
                lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Length: 1000000", *headers]
                tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
                tls.settimeout(1.0)
                while not stop.is_set():
                    tls.sendall(bytes(RATE))
                    with contextlib.suppress(socket.timeout, ssl.SSLError):
                        tls.recv(4096)  # an answer, or the end of the connection: the server cut the body
                        cuts.append(path)
                        break
        except OSError:
            time.sleep(0.2)


def progress(what):
    print(f"{time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


def summary(times):
    return statistics.median(times), max(times)


def main():
    with Workspace("slow-clients") as ws:
        root = ws.root("slow-clients")
        _rpms, archive = ws.fixture_release(root)
        server = ws.server(root, MaxQueuedTasks="100", MaxParallelTasks="2")
        progress("warming up")
        batch_seconds(server, "127.0.9.9", ws.cert, archive)  # warm: packages unpacked once
        progress("calm")
        calm_settings = summary(settings_latencies(server, session_from("127.0.9.8", ws.cert), 10))
        calm_batch = statistics.median(batch_seconds(server, "127.0.9.9", ws.cert, archive) for _ in range(3))
        stop, cuts = threading.Event(), []

        clients = [(server, "/create", [f"Content-Type: {XZ_TAR}"], f"127.0.1.{number}", stop, cuts)
                   for number in range(1, SLOW_CLIENTS + 1)]
        clients += [(server, "/reports/new/", ["Content-Type: multipart/form-data; boundary=b0undary"],
                     f"127.0.2.{number}", stop, cuts) for number in range(1, SLOW_CLIENTS + 1)]
        threads = [threading.Thread(target=slow_client, args=client) for client in clients]
        try:
            for thread in threads:
                thread.start()
            time.sleep(5)
            progress(f"loaded: {len(clients)} slow clients")
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                loaded = pool.submit(settings_latencies, server, session_from("127.0.9.8", ws.cert), LOADED_SECONDS)
                loaded_batches = [batch_seconds(server, "127.0.9.9", ws.cert, archive) for _ in range(3)]
                loaded_settings = summary(loaded.result())
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        succeeded = [seconds for seconds in loaded_batches if seconds is not None]
        loaded_batch = statistics.median(succeeded) if succeeded else float("nan")

    print(f"slow clients: {SLOW_CLIENTS} /create + {SLOW_CLIENTS} /reports/new/ at {RATE} B/s from "
          f"{2 * SLOW_CLIENTS} addresses, {LOADED_SECONDS} s; the server cut them {len(cuts)} times "
          f"({cuts.count('/create')} uploads, {cuts.count('/reports/new/')} reports)")
    print(f"/settings calm:   p50 {calm_settings[0] * 1000:.0f} ms, max {calm_settings[1] * 1000:.0f} ms")
    print(f"/settings loaded: p50 {loaded_settings[0] * 1000:.0f} ms, max {loaded_settings[1] * 1000:.0f} ms "
          f"(ratio p50 {loaded_settings[0] / calm_settings[0]:.2f}, max {loaded_settings[1] / calm_settings[1]:.2f}; "
          f"target p50 <= 50 ms, max <= 1000 ms)")
    print(f"normal ABRT batch from another address: calm {calm_batch:.2f} s, loaded {loaded_batch:.2f} s "
          f"(ratio {loaded_batch / calm_batch:.2f}; {len(loaded_batches) - len(succeeded)} of {len(loaded_batches)} "
          "refused)")


if __name__ == "__main__":
    main()
