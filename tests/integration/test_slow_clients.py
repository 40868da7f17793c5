"""Clients that send their bodies slowly, from many addresses, through the real server.

Every loopback address (127.0.0.0/8) is this machine's, so each slow client
here comes from an address of its own, as a crowd of hosts would, and the
per-address limits do not stop them: only the daemon groups, the upload
pool and MinUploadRate do.
"""

import concurrent.futures
import contextlib
import socket
import ssl
import tarfile
import threading
import time

import requests

from testkit.helpers import XZ_TAR, submit, wait_final

MIB = 1024 * 1024


@contextlib.contextmanager
def raw_post(server, path, length, source, headers=()):
    """A TLS connection from ``source`` (an address in 127/8) that has sent a POST's headers; yields its socket."""
    context = ssl.create_default_context(cafile=str(server.cert))
    with socket.create_connection(("127.0.0.1", server.port), timeout=90, source_address=(source, 0)) as plain:
        with context.wrap_socket(plain, server_hostname="127.0.0.1") as tls:
            lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {length}", *headers]
            tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            yield tls


def trickle(tls, stop, rate, seconds=120.0):
    """Send ``rate`` bytes a second until ``stop`` is set or the server answers; ``(status, body)`` of the
    answer, (0, "") when none came."""
    deadline, received = time.monotonic() + seconds, b""
    tls.settimeout(1.0)
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            received = tls.recv(65536)  # waits a second for an answer (TLS records that carry none end in a timeout)
            break
        except (socket.timeout, ssl.SSLWantReadError):
            pass
        except OSError:
            break
        try:
            tls.sendall(bytes(rate))
        except OSError:
            break
    return answer(tls, received) if received else (0, "")


def answer(tls, received):
    """``(status, body)`` of the answer whose first bytes are ``received``."""
    tls.settimeout(5)
    while True:
        head, _, body = received.partition(b"\r\n\r\n")
        lengths = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
        if lengths and len(body) >= lengths[0]:
            break
        try:
            more = tls.recv(65536)
        except OSError:
            break
        if not more:
            break
        received += more
    return int(head.split(b" ", 2)[1]), body.decode(errors="replace")


def test_a_body_below_min_upload_rate_from_the_start_is_cut_with_408(start_server):
    """Apache cuts a body whose average falls below the floor (after its 20 s of grace)."""
    server = start_server()
    with raw_post(server, "/create", 8 * MIB, "127.0.1.1", [f"Content-Type: {XZ_TAR}"]) as tls:
        status, text = trickle(tls, threading.Event(), 600)
    assert status == 408 and text.startswith("The upload stalled, came more slowly than the server's minimum rate "
                                             "(MinUploadRate)"), (status, text)
    deadline = time.monotonic() + 10  # the daemon learns of the cut as the client does, and then cleans up
    while server.incoming():
        assert time.monotonic() < deadline, "the cut upload left its directory"
        time.sleep(0.1)
    assert server.task_dirs() == []


def test_a_body_that_slows_after_a_fast_start_loses_its_thread_and_slot_within_its_window(start_server, problem_dir):
    """Its average stays above the floor for minutes (Apache keeps relaying it), but its last 30 s do not: the
    application drops it and frees the upload thread and the queue slot it held, while the client still sends."""
    server = start_server()
    stop = threading.Event()
    with raw_post(server, "/create", 8 * MIB, "127.0.1.2", ["Content-Type: application/x-tar"]) as tls, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        tls.sendall(_tar_head(problem_dir, 8 * MIB) + bytes(MIB))
        sending = pool.submit(trickle, tls, stop, 2048)
        deadline = time.monotonic() + 10
        while not server.incoming():
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.1)
        deadline = time.monotonic() + 100
        while server.incoming():
            assert time.monotonic() < deadline, "the slowed upload still holds its place"
            time.sleep(1)
        assert not sending.done(), "the client was still sending"
        stop.set()
    assert server.task_dirs() == []
    assert "The upload is too slow: " not in server.error_log(), "a refusal is no error for the admin's log"


def _tar_head(problem_dir, size):
    """A tar header for a coredump of ``size`` bytes and the real core's first bytes."""
    info = tarfile.TarInfo("coredump")
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT) + (problem_dir / "coredump").read_bytes()[:4096]


def test_thirty_slow_uploads_from_thirty_addresses_leave_room_for_a_normal_one(start_server, problem_dir):
    """Before: they held the 20 upload threads, and a 16 KiB upload from elsewhere waited 37 s."""
    server = start_server(MaxQueuedTasks="60")
    stop = threading.Event()
    with contextlib.ExitStack() as stack, concurrent.futures.ThreadPoolExecutor(30) as pool:
        uploads = [stack.enter_context(raw_post(server, "/create", 8 * MIB, f"127.0.2.{number}",
                                                [f"Content-Type: {XZ_TAR}"])) for number in range(1, 31)]
        futures = [pool.submit(trickle, tls, stop, 600) for tls in uploads]
        deadline = time.monotonic() + 10
        while len(server.incoming()) < 30:
            assert time.monotonic() < deadline, f"only {len(server.incoming())} of the slow uploads started"
            time.sleep(0.1)
        task_id, auth = submit(server, problem_dir)
        assert wait_final(server, task_id, auth).headers["X-Task-Status"] == "FINISHED_SUCCESS"
        stop.set()
        for future in futures:
            future.result()


def test_slow_reports_cannot_take_the_threads_that_answer_settings_and_status_polls(start_server, problem_dir):
    """Before: 50 slow report bodies made /settings time out after 40 s (reports shared its threads)."""
    server = start_server()
    task_id, auth = submit(server, problem_dir)
    wait_final(server, task_id, auth)
    stop = threading.Event()
    with contextlib.ExitStack() as stack, concurrent.futures.ThreadPoolExecutor(40) as pool:
        reports = [stack.enter_context(raw_post(server, "/reports/new/", 200_000, f"127.0.3.{number}",
                                                ["Content-Type: multipart/form-data; boundary=b0undary"]))
                   for number in range(1, 41)]
        futures = [pool.submit(trickle, tls, stop, 600) for tls in reports]
        time.sleep(2)
        for path, headers in (("/settings", {}), (f"/{task_id}", auth), ("/", {})):
            answer = requests.get(server.url + path, headers=headers, verify=str(server.cert), timeout=10)
            assert answer.status_code == 200
        stop.set()
        for future in futures:
            future.result()
