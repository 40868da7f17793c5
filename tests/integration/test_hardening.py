"""What a slow client, a crowd of uploads, a power loss and a full disk can still do, through the real server."""

import contextlib
import io
import os
import shutil
import signal
import socket
import ssl
import struct
import tarfile
import time
from pathlib import Path

import pytest
import requests

from testkit.helpers import (
    XZ_TAR,
    abrt_archive,
    kill_worker,
    outcome,
    package_lock_held,
    submit,
    wait_final,
    wait_for_log_line,
)
from testkit.server import Server, free_port
from tests.integration.test_retrace import rpm_named, tiny_file_system_at

MIB = 1024 * 1024


@contextlib.contextmanager
def open_upload(server, length, content_type="application/x-tar", **headers):
    """A TLS connection that has sent a /create request's headers; yields the socket to send body bytes on."""
    context = ssl.create_default_context(cafile=str(server.cert))
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as plain:
        with context.wrap_socket(plain, server_hostname="127.0.0.1") as tls:
            lines = ["POST /create HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}",
                     f"Content-Length: {length}", *(f"{name}: {value}" for name, value in headers.items())]
            tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            yield tls


def read_response(tls, timeout):
    """``(status, body)`` of the answer on ``tls``, waiting at most ``timeout`` seconds."""
    status, _headers, body = read_answer(tls, timeout)
    return status, body


def read_answer(tls, timeout):
    """``(status, {lower-case header: value}, body)`` of the answer on ``tls``, waiting at most ``timeout`` s."""
    tls.settimeout(timeout)
    chunks = []
    try:
        while chunk := tls.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
    except (ssl.SSLError, ConnectionResetError, socket.timeout):
        pass
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return (int(lines[0].split(" ", 2)[1]) if head else 0), headers, body.decode(errors="replace")


def _complete(data):
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def tar_header(name, size):
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def core_member(problem_dir, size):
    """The bytes of a plain tar whose only member is a coredump of ``size`` bytes starting like the real core."""
    head = (problem_dir / "coredump").read_bytes()[:4096]
    data = head + bytes(size - len(head))
    return tar_header("coredump", size) + data + bytes(-size % 512) + bytes(1024)


def test_an_upload_declaring_more_than_its_cap_gets_413_at_once_not_after_its_body(start_server):
    """Before: with the vmcore cap above 2 GiB Apache had no limit, and the answer was a 408 after 20-51 s."""
    server = start_server(MaxPackedSize="1")
    with open_upload(server, MIB + 1) as upload:
        upload.sendall(bytes(16 * 1024))
        status, body = read_response(upload, timeout=10)
    assert status == 413
    assert body == f"Specified archive is too large: {MIB + 1} bytes, the server accepts at most {MIB} bytes"


def test_a_vmcore_upload_has_its_own_cap_at_apache_too(start_server):
    server = start_server(MaxPackedSize="1", MaxVmcorePackedSize="3")
    with open_upload(server, 3 * MIB + 1, **{"X-Task-Type": "2"}) as upload:
        status, body = read_response(upload, timeout=10)
    assert status == 413 and body.endswith(f"the server accepts at most {3 * MIB} bytes")


def test_slow_uploads_cannot_starve_status_polls_and_settings(start_server, problem_dir):
    """40 uploads that send nothing after their headers hold every upload thread; polls still answer."""
    server = start_server(MaxUploadsPerClient="100", MaxQueuedTasks="100")
    task_id, auth = submit(server, problem_dir)
    with contextlib.ExitStack() as uploads:
        for _ in range(40):
            uploads.enter_context(open_upload(server, 4 * MIB))
        time.sleep(1)
        for path, headers in (("/settings", {}), (f"/{task_id}", auth)):
            answer = requests.get(server.url + path, headers=headers, verify=str(server.cert), timeout=10)
            assert answer.status_code == 200


def test_an_xz_upload_is_decompressed_and_written_while_its_body_still_streams(start_server, problem_dir, tmp_path):
    """The core is on disk as its bytes arrive, so a task's wait after the last byte is the archive's tail, not
    the decompression of the whole core."""
    server = start_server()
    larger = tmp_path / "problem"
    shutil.copytree(problem_dir, larger)
    with open(larger / "coredump", "ab") as core:
        core.write(os.urandom(4 * MIB))  # does not compress: the body is as long as the core
    body = abrt_archive(larger)
    with open_upload(server, len(body), XZ_TAR) as upload:
        upload.sendall(body[:len(body) // 2])
        deadline = time.monotonic() + 30
        while (written := sum(path.stat().st_size for path in (server.save_dir / ".incoming").glob("*/crash/coredump"))
               ) < MIB:
            assert time.monotonic() < deadline, f"half the body sent, {written} bytes of the core written"
            time.sleep(0.05)
        upload.sendall(body[len(body) // 2:])
        status, text = read_response(upload, timeout=60)
    assert status == 201, text


def test_one_address_cannot_hold_more_than_its_share_of_uploads(start_server, problem_dir):
    server = start_server(MaxUploadsPerClient="2")
    with open_upload(server, 4 * MIB) as first, open_upload(server, 4 * MIB) as second:
        for upload in (first, second):
            upload.sendall(tar_header("coredump", 3 * MIB))
        deadline = time.monotonic() + 10
        while len(server.incoming()) < 2:
            assert time.monotonic() < deadline, "the two uploads never started"
            time.sleep(0.05)
        third = server.post("/create", data=abrt_archive(problem_dir), headers={"Content-Type": XZ_TAR})
    assert third.status_code == 429
    assert third.text == ("You have 2 uploads in progress; this server takes at most 2 at once from one address, "
                          "try again when one ends")


def test_concurrent_uploads_cannot_together_overcommit_the_disk(start_server, problem_dir):
    """Each alone fits; together they do not.  Before, both were accepted and one hit ENOSPC half-written."""
    server = start_server(MinStorageLeft="0", MaxPackedSize="8", MaxUnpackedSize="8")
    first_body, second_body = core_member(problem_dir, 3 * MIB), core_member(problem_dir, 3 * MIB)
    with tiny_file_system_at(server.save_dir, size="5m"), open_upload(server, len(first_body)) as first:
        first.sendall(first_body[:2 * MIB])
        deadline = time.monotonic() + 10
        while not any((server.save_dir / ".incoming" / name / ".reserved").exists() for name in server.incoming()):
            assert time.monotonic() < deadline, "the first upload never reserved its coredump"
            time.sleep(0.05)
        with open_upload(server, len(second_body)) as second:
            second.sendall(second_body)
            second_status, second_text = read_response(second, timeout=30)
        first.sendall(first_body[2 * MIB:])
        first_status, first_text = read_response(first, timeout=30)
    assert second_status == 507 and "not enough storage space" in second_text
    # The first upload lacks the other crash files: refused for that, not for space.
    assert first_status == 403 and "Required file 'executable' is missing" in first_text


def test_after_a_power_loss_the_restarted_server_admits_uploads_and_ends_the_dead_tasks(start_server, certificate,
                                                                                          fixture_rpms, problem_dir):
    settings = {"MaxParallelTasks": "1", "MaxQueuedTasks": "0"}
    server = start_server(**settings)
    with package_lock_held(server, rpm_named(fixture_rpms, "crasher-1.0")):
        task_id, auth = submit(server, problem_dir)
        wait_for_log_line(server, task_id, auth, "Waiting for another task")
        os.kill(server.dispatcher_pid(), signal.SIGKILL)
        kill_worker(server, task_id)
        server.stop()
    assert (server.save_dir / task_id / "status").read_text() == "1", "nobody recorded the end: a power loss"
    restarted = Server(server.root, *certificate, **settings)
    try:
        deadline = time.monotonic() + 10
        while (server.save_dir / task_id / "status").read_text() != "7":
            assert time.monotonic() < deadline, "the restarted dispatcher did not end the dead task"
            time.sleep(0.05)
        status = restarted.get(f"/{task_id}", headers=auth)
        assert outcome(status) == ("Retrace job failed: the retrace worker stopped unexpectedly (it was killed or "
                               "crashed) while: Preparing environment for backtrace generation")
        new_task = submit(restarted, problem_dir)
        assert wait_final(restarted, *new_task).headers["X-Task-Status"] == "FINISHED_SUCCESS"
    finally:
        restarted.stop()


def test_statistics_on_a_full_disk_are_503_with_a_sentence_not_500(start_server):
    server = start_server()
    with tiny_file_system_at(server.save_dir, size="8k"):
        response = server.get("/stats")
        settings = server.get("/settings")
    assert response.status_code == 503, response.text
    assert response.text == "The statistics cannot be read right now (the server's disk may be full); try again later"
    assert settings.status_code == 200


def test_a_task_whose_password_file_is_empty_accepts_no_password(server, problem_dir):
    task_id, auth = submit(server, problem_dir)
    wait_final(server, task_id, auth)
    (server.save_dir / task_id / "password").write_text("")
    for given in ("", "x"):
        assert server.get(f"/{task_id}", headers={"X-Task-Password": given}).status_code == 403


@pytest.mark.parametrize("path", ["/settings", "/stats", "/nothing-here"])
def test_every_answer_carries_the_security_headers(server, path):
    headers = server.get(path).headers
    assert headers["Strict-Transport-Security"] == "max-age=31536000"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert "default-src 'none'" in headers["Content-Security-Policy"]


def tls_handshake(server, cipher):
    context = ssl.create_default_context(cafile=str(server.cert))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(f"{cipher}@SECLEVEL=1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as plain:
        context.wrap_socket(plain, server_hostname="127.0.0.1").close()


def test_tls_1_2_offers_only_forward_secret_aead_ciphers(server):
    tls_handshake(server, "ECDHE-ECDSA-AES128-GCM-SHA256")
    with pytest.raises(ssl.SSLError):
        tls_handshake(server, "ECDHE-ECDSA-AES128-SHA")  # CBC with SHA-1: Debian's default accepts it


def test_a_tool_s_complaint_about_a_damaged_dump_names_no_server_path(server):
    """makedumpfile names the file it writes; the user must read that as the task's file, not our spool."""
    flattened = (b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1)).ljust(4096, b"\0")
    flattened += struct.pack(">qq", 1 << 62, 100) + b"x" * 100
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w") as tar:
        info = tarfile.TarInfo("vmcore")
        info.size = len(flattened)
        tar.addfile(info, io.BytesIO(flattened))
    created = server.post("/create", data=body.getvalue(),
                          headers={"Content-Type": "application/x-tar", "X-Task-Type": "2"})
    assert created.status_code == 201, created.text
    auth = {"X-Task-Password": created.headers["X-Task-Password"]}
    status = wait_final(server, created.headers["X-Task-Id"], auth)
    assert "the flattened vmcore cannot be reassembled: makedumpfile said:" in outcome(status)
    assert "vmcore.reassembled" in outcome(status), outcome(status)
    assert str(server.root) not in outcome(status) and "/spool" not in outcome(status), outcome(status)


@pytest.fixture(scope="module")
def plain_vhost_server(start_server, tmp_path_factory):
    """retrace.conf as a system Apache includes it, with a plain-HTTP virtual host beside the HTTPS server."""
    port = free_port()
    include = tmp_path_factory.mktemp("vhost") / "retrace-with-vhost.conf"
    retrace_conf = Path(__file__).resolve().parents[2] / "httpd" / "retrace.conf"
    include.write_text(retrace_conf.read_text() + f"\nListen 127.0.0.1:{port}\n"
                       f"<VirtualHost 127.0.0.1:{port}>\n    SSLEngine off\n</VirtualHost>\n")
    server = start_server(launcher_args=("--httpd-conf", str(include)), MaxPackedSize="1")
    return server, f"http://127.0.0.1:{port}"


def test_a_plain_http_virtual_host_sends_everyone_to_https(plain_vhost_server):
    _, plain = plain_vhost_server
    answer = requests.get(f"{plain}/settings", allow_redirects=False, timeout=10)
    assert answer.status_code == 308 and answer.headers["Location"].startswith("https://")
    assert answer.headers["Location"].endswith("/settings")


def test_upload_caps_hold_in_virtual_hosts_too(plain_vhost_server):
    """Server-level rewrite rules do not reach virtual hosts; ours live in <Location> sections."""
    _, plain = plain_vhost_server
    with socket.create_connection(("127.0.0.1", int(plain.rsplit(":", 1)[1])), timeout=10) as connection:
        connection.sendall(f"POST /create HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-tar\r\n"
                           f"Content-Length: {MIB + 1}\r\n\r\n".encode())
        status, body = read_response(connection, timeout=10)
    assert status == 413 and body.endswith(f"the server accepts at most {MIB} bytes")
