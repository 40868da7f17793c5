"""Hostile and broken uploads against the real Apache + mod_wsgi over HTTPS.

Each rejection must be a 4xx with a sentence, leave no task and no upload
directory behind, write nothing outside SaveDir, leak no server path, and
leave the server answering.
"""

import io
import lzma
import os
import secrets
import signal
import socket
import ssl
import subprocess
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from testkit.helpers import (
    XZ_TAR,
    abrt_archive,
    package_lock_held,
    problem_members,
    regular,
    tar_bytes,
    xz,
)

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def hostile_server(start_server):
    return start_server()


def _tree(root, skip):
    found = {}
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(directory, d) not in skip]
        for name in files:
            path = os.path.join(directory, name)
            if path not in skip:
                stat = os.lstat(path)
                found[path] = (stat.st_size, stat.st_mtime_ns)
    return found


def expect_rejection(server, send, status, fragment):
    """Run ``send`` and check everything a rejection must (and must not) do."""
    # SaveDir, LogDir and CacheDir change under the workers of earlier tasks.
    skip = {str(server.save_dir), str(server.log_dir), str(server.cache_dir), str(server.root / "launcher.out")}
    tasks_before = server.task_dirs()
    tree_before = _tree(server.root, skip)
    response = send()
    assert response.status_code == status, response.text
    assert fragment in response.text
    assert str(server.root) not in response.text and ".incoming" not in response.text
    assert server.get("/settings").status_code == 200
    assert server.task_dirs() == tasks_before
    assert server.incoming() == []
    assert _tree(server.root, skip) == tree_before
    return response


def post_archive(server, body, content_type=XZ_TAR, **headers):
    return lambda: server.post("/create", data=body, headers={"Content-Type": content_type, **headers})


def post_members(server, members):
    return post_archive(server, xz(tar_bytes(members)))


# --- member types and paths -------------------------------------------------


def _special(name, kind, **attributes):
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attributes.items():
        setattr(info, key, value)
    return info, None


@pytest.mark.parametrize(
    "member, fragment",
    [
        (_special("coredump", tarfile.SYMTYPE, linkname="/etc/shadow"), "Symlinks are not allowed"),
        (_special("coredump", tarfile.LNKTYPE, linkname="/etc/shadow"), "Hard links are not allowed"),
        (_special("coredump", tarfile.CHRTYPE, devmajor=1, devminor=3), "Device files are not allowed"),
        (_special("coredump", tarfile.BLKTYPE, devmajor=7, devminor=0), "Device files are not allowed"),
        (_special("coredump", tarfile.FIFOTYPE), "FIFOs are not allowed"),
        (_special("crashdir", tarfile.DIRTYPE), "Directories are not allowed"),
        (regular("crashdir/coredump", b"x"), "Files must be at the top level"),
        (regular("evil.sh", b"#!/bin/sh\n"), "File 'evil.sh' is not allowed to be in the archive"),
    ],
    ids=["symlink", "hardlink", "char-device", "block-device", "fifo", "directory", "subdirectory", "unknown-name"],
)
def test_member_that_is_not_a_plain_known_file_is_403(hostile_server, problem_dir, member, fragment):
    members = [member, *problem_members(problem_dir)]
    expect_rejection(hostile_server, post_members(hostile_server, members), 403, fragment)


def test_member_with_dot_dot_path_is_403_and_writes_nothing(hostile_server, problem_dir):
    target = f"/tmp/retrace-escape-{secrets.token_hex(6)}"
    members = [regular("../../../../../../../.." + target, b"pwned"), *problem_members(problem_dir)]
    expect_rejection(hostile_server, post_members(hostile_server, members), 403, "Paths with '..' are not allowed")
    assert not os.path.exists(target)


def test_member_with_absolute_path_is_403_and_writes_nothing(hostile_server, problem_dir):
    target = f"/tmp/retrace-escape-{secrets.token_hex(6)}"
    members = [regular(target, b"pwned"), *problem_members(problem_dir)]
    expect_rejection(hostile_server, post_members(hostile_server, members), 403, "Absolute paths are not allowed")
    assert not os.path.exists(target)


def test_member_given_twice_is_403(hostile_server, problem_dir):
    members = [*problem_members(problem_dir), regular("executable", b"/usr/bin/other")]
    expect_rejection(hostile_server, post_members(hostile_server, members), 403, "holds 'executable' more than once")


def test_oversized_pax_header_is_403(hostile_server, problem_dir):
    info = tarfile.TarInfo("coredump")
    info.pax_headers = {"comment": "x" * 200_000}
    data = (problem_dir / "coredump").read_bytes()
    info.size = len(data)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))
    expect_rejection(hostile_server, post_archive(hostile_server, xz(buffer.getvalue())), 403, "extended header")


def test_missing_coredump_is_403_naming_it(hostile_server, problem_dir):
    members = problem_members(problem_dir, names=("executable", "package", "os_release"))
    expect_rejection(hostile_server, post_members(hostile_server, members), 403, "Required file 'coredump' is missing")


# --- sizes and storage ------------------------------------------------------


def test_body_over_max_packed_size_is_413_before_upload(hostile_server):
    body = b"\xfd7zXZ\x00" + bytes(9 * MIB)
    expect_rejection(hostile_server, post_archive(hostile_server, body), 413, "too large")


def _zero_bomb(size):
    """An xz tar whose coredump member is ``size`` zero bytes: tiny packed, huge unpacked."""
    header = tarfile.TarInfo("coredump")
    header.size = size
    compressor = lzma.LZMACompressor(preset=0)
    parts = [compressor.compress(header.tobuf(format=tarfile.GNU_FORMAT))]
    zeros = bytes(MIB)
    for _ in range(size // MIB):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.compress(bytes(1024)))
    parts.append(compressor.flush())
    return b"".join(parts)


def test_decompression_bomb_is_413_and_fills_no_disk(hostile_server):
    bomb = _zero_bomb(200 * MIB)
    assert len(bomb) < MIB
    free_before = os.statvfs(hostile_server.save_dir).f_bavail
    expect_rejection(hostile_server, post_archive(hostile_server, bomb), 413, "content is too large")
    block = os.statvfs(hostile_server.save_dir).f_frsize
    assert (free_before - os.statvfs(hostile_server.save_dir).f_bavail) * block < 16 * MIB


def test_small_file_over_its_cap_is_400(hostile_server, problem_dir):
    members = problem_members(problem_dir, executable=b"/usr/bin/" + b"a" * 600)
    expect_rejection(hostile_server, post_members(hostile_server, members), 400, "'executable' file is larger than expected")


def test_upload_that_would_eat_min_storage_left_is_507(start_server, problem_dir):
    server = start_server(MinStorageLeft=str(10 ** 9))
    expect_rejection(server, post_archive(server, abrt_archive(problem_dir)), 507, "not enough storage space")


# --- content of the crash files --------------------------------------------


@pytest.mark.parametrize(
    "name, data, fragment",
    [
        ("coredump", b"just some text, not a core\n" * 4, "is not an ELF core file"),
        ("executable", b"/usr/bin/$(reboot)", "'executable' file must hold an absolute path"),
        ("executable", b"/usr/bin/../../etc/shadow", "'executable' file must hold an absolute path"),
        ("executable", "/usr/bin/cr\u00e4sher".encode(), "must be plain ASCII text"),
        ("package", b"crasher; rm -rf /", "'package' file must hold a package name-version-release"),
        ("os_release", b"Fedora\nrelease 41", "'os_release' file must hold a release line"),
    ],
    ids=["coredump-text", "executable-shell", "executable-dotdot", "executable-non-ascii", "package-shell", "os-release-newline"],
)
def test_crash_file_with_bad_content_is_400(hostile_server, problem_dir, name, data, fragment):
    members = problem_members(problem_dir, **{name: data})
    expect_rejection(hostile_server, post_members(hostile_server, members), 400, fragment)


def test_coredump_that_is_a_program_not_a_core_is_400(hostile_server, problem_dir):
    with open("/bin/true", "rb") as program:
        members = problem_members(problem_dir, coredump=program.read())
    expect_rejection(hostile_server, post_members(hostile_server, members), 400, "not a core file")


# --- headers and framing ----------------------------------------------------


def test_unsupported_content_type_is_415(hostile_server, problem_dir):
    send = post_archive(hostile_server, abrt_archive(problem_dir), content_type="application/zip")
    expect_rejection(hostile_server, send, 415, "Specified archive format is not supported")


def test_a_raw_core_sent_as_an_archive_is_415_with_what_to_send(hostile_server, problem_dir):
    body = (problem_dir / "coredump").read_bytes()[:1 << 20]
    expect_rejection(hostile_server, post_archive(hostile_server, body, content_type="application/x-tar"), 415,
                     "is not an archive this server reads (it looks like application/x-coredump); send a tar")


def test_corrupt_xz_stream_is_400(hostile_server, problem_dir):
    good = abrt_archive(problem_dir)
    corrupt = good[:64] + bytes(b ^ 0x5A for b in good[64:4096]) + good[4096:]
    expect_rejection(hostile_server, post_archive(hostile_server, corrupt), 400, "corrupt or truncated")


def test_xz_of_something_that_is_not_tar_is_400(hostile_server):
    expect_rejection(hostile_server, post_archive(hostile_server, xz(b"hello " * 1000)), 400, "corrupt or truncated")


def test_empty_body_is_400(hostile_server):
    expect_rejection(hostile_server, post_archive(hostile_server, b""), 400, "The upload is empty")


def test_chunked_upload_without_content_length_is_411(hostile_server, problem_dir):
    archive = abrt_archive(problem_dir)
    send = post_archive(hostile_server, iter([archive[:1000], archive[1000:]]))
    expect_rejection(hostile_server, send, 411, "Content-Length")


def _raw_request(server, request_bytes):
    """Send raw bytes over TLS (requests would fix them up); return ``(status, body)``."""
    context = ssl.create_default_context(cafile=str(server.cert))
    with socket.create_connection(("127.0.0.1", server.port), timeout=90) as plain:
        with context.wrap_socket(plain, server_hostname="127.0.0.1") as tls:
            tls.sendall(request_bytes)
            chunks = []
            try:
                while chunk := tls.recv(65536):
                    chunks.append(chunk)
            except (ssl.SSLError, ConnectionResetError):
                pass
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, body.decode(errors="replace")


@pytest.mark.parametrize("request_line, header, status, sentence", [
    ("GET /%2e%2e/etc/passwd HTTP/1.1", "", 400, "The request is malformed"),
    ("GET /settings HTTP/1.1", "X-OS-Release: Fedora\x01 41\r\n", 400, "The request is malformed"),
    ("GET /" + "a" * 5000 + " HTTP/1.1", "", 404, "Invalid URL"),
])
def test_requests_apache_refuses_itself_get_a_sentence_not_a_page(hostile_server, request_line, header, status,
                                                                   sentence):
    raw = f"{request_line}\r\nHost: 127.0.0.1\r\n{header}Connection: close\r\n\r\n".encode()
    got_status, body = _raw_request(hostile_server, raw)
    assert got_status == status
    assert body.startswith(sentence) and "<html" not in body.lower()
    assert hostile_server.get("/settings").status_code == 200


class _Raw:
    def __init__(self, status, text):
        self.status_code, self.text = status, text


def test_upload_that_stalls_before_content_length_is_408(hostile_server, problem_dir):
    archive = abrt_archive(problem_dir)
    request = (
        f"POST /create HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {XZ_TAR}\r\n"
        f"Content-Length: {len(archive) + 5000}\r\nConnection: close\r\n\r\n"
    ).encode() + archive

    def send():
        return _Raw(*_raw_request(hostile_server, request))

    expect_rejection(hostile_server, send, 408, "The upload stalled")


@pytest.mark.parametrize(
    "header, value, status, fragment",
    [
        ("X-Task-Type", "zero", 400, "X-Task-Type must be a whole number"),
        ("X-Task-Type", "3", 409, "Interactive tasks were disabled"),
        ("X-Task-Type", "4", 409, "Interactive tasks were disabled"),
        ("X-Task-Type", "2", 403, "Required file 'vmcore' is missing"),
        ("X-CoreFileDirectory", "/etc", 403, "X-CoreFileDirectory header has been disabled"),
    ],
    ids=["non-integer-task-type", "interactive-task-type", "interactive-vmcore-task-type",
         "vmcore-task-without-vmcore", "core-file-directory"],
)
def test_refused_create_header(hostile_server, problem_dir, header, value, status, fragment):
    send = post_archive(hostile_server, abrt_archive(problem_dir), **{header: value})
    expect_rejection(hostile_server, send, status, fragment)


def test_get_on_create_is_405_with_allow(hostile_server):
    response = expect_rejection(hostile_server, lambda: hostile_server.get("/create"), 405, "You must use POST method")
    assert response.headers["Allow"] == "POST"


# --- task access ------------------------------------------------------------


@pytest.fixture(scope="module")
def task(hostile_server, problem_dir):
    response = hostile_server.post("/create", data=abrt_archive(problem_dir), headers={"Content-Type": XZ_TAR})
    assert response.status_code == 201
    return response.headers["X-Task-Id"], response.headers["X-Task-Password"]


def test_unknown_task_is_404(hostile_server, task):
    task_id, password = task
    unknown = "1" + task_id[1:] if task_id[0] != "1" else "2" + task_id[1:]
    def send():
        return hostile_server.get(f"/{unknown}", headers={"X-Task-Password": password})
    expect_rejection(hostile_server, send, 404, "There is no such task")


def test_wrong_password_is_403(hostile_server, task):
    task_id, password = task
    def send():
        return hostile_server.get(f"/{task_id}", headers={"X-Task-Password": password[:-1] + "!"})
    expect_rejection(hostile_server, send, 403, "Invalid password")


def test_missing_password_is_403(hostile_server, task):
    task_id, _ = task
    expect_rejection(hostile_server, lambda: hostile_server.get(f"/{task_id}/log"), 403, "X-Task-Password")


def test_encoded_path_traversal_in_url_is_404(hostile_server, task):
    _, password = task
    request = (
        "GET /..%2F..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"X-Task-Password: {password}\r\nConnection: close\r\n\r\n"
    ).encode()
    status, body = _raw_request(hostile_server, request)
    assert status == 404
    assert "root:" not in body


def test_delete_is_403_when_disabled(hostile_server, task):
    task_id, password = task
    def send():
        return hostile_server.get(f"/{task_id}/delete", headers={"X-Task-Password": password})
    expect_rejection(hostile_server, send, 403, "Manual deleting is disabled")
    assert task_id in hostile_server.task_dirs()


# --- capacity ---------------------------------------------------------------


def _crasher_rpm(fixture_rpms):
    return next(rpm for rpm in fixture_rpms if rpm.name.startswith("crasher-1.0"))


def test_full_queue_is_503_and_settings_make_abrt_refuse(start_server, problem_dir, fixture_rpms):
    server = start_server(MaxParallelTasks="1", MaxQueuedTasks="1")
    # Workers wait on the held package lock, so accepted tasks keep their slots.
    with package_lock_held(server, _crasher_rpm(fixture_rpms)):
        for _ in range(2):
            response = server.post("/create", data=abrt_archive(problem_dir), headers={"Content-Type": XZ_TAR})
            assert response.status_code == 201
        expect_rejection(server, post_archive(server, abrt_archive(problem_dir)), 503, "fully loaded")
        settings = dict(line.split(" ", 1) for line in server.get("/settings").text.split("\n"))
        assert int(settings["running_tasks"]) >= int(settings["max_running_tasks"])



def test_concurrent_uploads_never_take_more_slots_than_exist(start_server, problem_dir, fixture_rpms):
    server = start_server(MaxParallelTasks="2", MaxQueuedTasks="3", MaxUploadsPerClient="100")
    body = abrt_archive(problem_dir)
    with package_lock_held(server, _crasher_rpm(fixture_rpms)), ThreadPoolExecutor(max_workers=12) as pool:
        responses = pool.map(lambda _: server.post("/create", data=body, headers={"Content-Type": XZ_TAR}), range(12))
        codes = [response.status_code for response in responses]
    assert sorted(codes) == [201] * 5 + [503] * 7
    assert len(server.task_dirs()) == 5
    assert server.incoming() == []


def test_uploads_while_clients_poll_the_server_are_all_accepted(start_server, problem_dir, fixture_rpms):
    """Polls count uploads in flight by probing their locks; a probe must never sweep or block an upload."""
    server = start_server(MaxParallelTasks="2", MaxQueuedTasks="40", MaxUploadsPerClient="100")
    body = abrt_archive(problem_dir)
    polling = threading.Event()

    def poll():
        while not polling.is_set():
            server.get("/settings")

    with package_lock_held(server, _crasher_rpm(fixture_rpms)), ThreadPoolExecutor(max_workers=24) as pool:
        pollers = [pool.submit(poll) for _ in range(4)]
        responses = list(pool.map(lambda _: server.post("/create", data=body, headers={"Content-Type": XZ_TAR}),
                                  range(20)))
        polling.set()
        for poller in pollers:
            poller.result()
    assert [response.status_code for response in responses] == [201] * 20, [r.text for r in responses]
    assert server.incoming() == []


def test_sparse_coredump_is_403_before_it_is_written(hostile_server, problem_dir, tmp_path):
    """GNU tar's --sparse: a few KiB of archive that unpack to 256 MiB of zeros."""
    core = tmp_path / "coredump"
    core.write_bytes((problem_dir / "coredump").read_bytes()[:4096])
    os.truncate(core, 256 * MIB)
    for name in ("executable", "package", "os_release"):
        (tmp_path / name).write_bytes((problem_dir / name).read_bytes())
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", "--format=posix", "-cf", str(archive), "-C", str(tmp_path),
                    "coredump", "executable", "package", "os_release"], check=True)
    assert archive.stat().st_size < 64 * 1024
    expect_rejection(hostile_server, post_archive(hostile_server, xz(archive.read_bytes())), 403,
                     "Sparse files are not allowed in the archive ('coredump')")


def test_thousands_of_chained_extended_headers_are_403_not_500(hostile_server, problem_dir):
    pax = tarfile.TarInfo("PaxHeader")
    pax.type = tarfile.XHDTYPE
    members = [(pax, b"19 comment=abcdefg\n")] * 5000 + problem_members(problem_dir)
    expect_rejection(hostile_server, post_members(hostile_server, members), 403, "more than 8 extended headers in a row")


def test_truncated_chains_of_extended_headers_leave_no_count_to_the_next_archives(start_server, problem_dir):
    """Before: the count of headers in a row was the thread's, and survived an archive cut inside a chain:
    after 60 such archives, 4 of 40 valid ones with a pax header were refused."""
    server = start_server(MaxUploadsPerClient="100", MaxQueuedTasks="60")
    pax = tarfile.TarInfo("PaxHeader")
    pax.type = tarfile.XHDTYPE
    truncated = tar_bytes([(pax, b"19 comment=abcdefg\n")] * 6)[:6 * 1024]
    # Accepted, then over in a moment: a release no server has (no gdb runs for 40 tasks).
    members = problem_members(problem_dir, os_release=b"Plan 9 from Bell Labs release 4\n")
    with_pax = xz(tar_bytes([(pax, b"19 comment=abcdefg\n")] * 3 + members))
    with ThreadPoolExecutor(max_workers=8) as pool:
        cut = list(pool.map(lambda _: server.post("/create", data=xz(truncated), headers={"Content-Type": XZ_TAR}),
                            range(60)))
        valid = list(pool.map(lambda _: server.post("/create", data=with_pax, headers={"Content-Type": XZ_TAR}),
                              range(40)))
    assert {answer.status_code for answer in cut} == {400}
    assert [answer.status_code for answer in valid] == [201] * 40, {answer.text for answer in valid}


def test_one_address_may_queue_max_queued_per_client_tasks_then_429_with_retry_after(start_server, problem_dir):
    server = start_server(MaxQueuedPerClient="3", MaxQueuedTasks="20")
    os.kill(server.dispatcher_pid(), signal.SIGSTOP)  # nothing starts: every accepted task waits in the queue
    try:
        body = abrt_archive(problem_dir)
        accepted = [server.post("/create", data=body, headers={"Content-Type": XZ_TAR}) for _ in range(3)]
        assert [answer.status_code for answer in accepted] == [201] * 3
        answer = expect_rejection(server, post_archive(server, body), 429,
                                  "You have 3 tasks waiting for a worker; this server queues at most 3 from one "
                                  "address, try again when one has started")
        assert answer.headers["Retry-After"] == "30"
    finally:
        os.kill(server.dispatcher_pid(), signal.SIGCONT)
