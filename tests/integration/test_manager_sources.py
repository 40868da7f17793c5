"""Sources that misbehave on purpose: slow, redirecting, lying web servers, endless downloads, crafted streams.

The task manager fetches what an engineer points it at; the far end is
untrusted.  Each web server here is a real HTTP server on loopback whose
answers the test writes by hand (``ScriptedServer``).
"""

import shutil
import threading
import time

import pytest

from testkit.loopback import ScriptedServer
from tests.integration.manager_client import (
    ENGINEER,
    ENGINEER_PASSWORD,
    Engineer,
    created,
    manager_settings,
    page_status,
    refused,
)
from tests.integration.test_decoder_memory import REFUSAL, crash_tar, xz_declaring

MIB = 1024 * 1024


def whole(body, content_type="application/octet-stream"):
    def answer(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    return answer


def redirect(location):
    def answer(handler):
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return answer


def trickle(head_first):
    """Headers at once then a byte every two seconds, or the status line and then the headers that slowly."""
    def answer(handler):
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        if head_first:
            handler.wfile.write(b"Content-Length: 100000\r\n\r\n")
        for _ in range(60):
            handler.wfile.write(b"X-Slow: 1\r\n"[:1] if not head_first else b"\0")
            handler.wfile.flush()
            time.sleep(2)
    return answer


def reason(handler):
    handler.wfile.write(b"HTTP/1.1 403 SECRET-INTERNAL-REASON\r\nContent-Length: 0\r\n\r\n")


def endless(head):
    """A dump that never announces its size (chunked) and never ends: ``head``, then zeros, 1 GiB at most."""
    def answer(handler):
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = head + bytes(MIB - len(head))
        for _ in range(1024):
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            chunk = bytes(MIB)
        handler.wfile.write(b"0\r\n\r\n")
    return answer


@pytest.fixture(scope="module")
def scripted(exports, problem_dir):
    archive = (exports.http / "problem.tar.xz").read_bytes()
    servers = {}
    other = ScriptedServer({"/problem.tar.xz": whole(archive)})
    routes = {
        "/problem.tar.xz": whole(archive),
        "/moved-here": redirect("/problem.tar.xz"),
        "/moved-away": redirect(f"{other.url}/problem.tar.xz"),
        "/moved-to-https": redirect("https://127.0.0.1:1/problem.tar.xz"),
        "/slow-body": trickle(head_first=True),
        "/slow-headers": trickle(head_first=False),
        "/secret": reason,
        "/id_ed25519": whole(b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
                             b"-----END OPENSSH PRIVATE KEY-----\n", "text/plain"),
        "/endless-vmcore": endless((problem_dir / "coredump").read_bytes()[:4096]),
    }
    servers["main"] = ScriptedServer(routes)
    servers["other"] = other
    yield servers["main"]
    for server in servers.values():
        server.close()


def test_a_redirect_on_the_same_server_is_followed_and_one_to_another_server_refused(engineer, manager, scripted):
    task_id = created(engineer.create(f"{scripted.url}/moved-here"))
    assert engineer.wait_final(task_id) == "Retrace job finished successfully"
    before = manager.task_dirs()
    for path in ("/moved-away", "/moved-to-https"):
        refused(engineer.create(f"{scripted.url}{path}"), 400,
                f"{scripted.url}{path} redirects to another server; give the file's final URL instead")
    assert manager.task_dirs() == before


def test_a_source_that_answers_slowly_is_refused_at_the_check_deadline_not_after_every_byte(engineer, scripted):
    """Before: the check read each byte with a 120 s timeout and held a WSGI thread for minutes."""
    answers = {}

    def ask(path):
        started = time.monotonic()
        answers[path] = engineer.create(f"{scripted.url}{path}"), time.monotonic() - started

    threads = [threading.Thread(target=ask, args=(path,)) for path in ("/slow-body", "/slow-headers")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    port = scripted.url.rsplit(":", 1)[1]
    for answer, _seconds in answers.values():
        refused(answer, 400, f"127.0.0.1:{port} did not answer within 20 s; check the URL, or import the file from "
                             "a faster server")
    assert engineer.get("/manager").status_code == 200


def test_an_error_is_told_by_its_code_never_by_the_remote_s_words(engineer, scripted):
    refused(engineer.create(f"{scripted.url}/secret"), 400, f"{scripted.url}/secret answered HTTP 403; check the URL")


def test_a_file_that_is_no_dump_is_refused_without_saying_what_it_looks_like(engineer, scripted):
    answer = engineer.create(f"{scripted.url}/id_ed25519")
    refused(answer, 400, "The file is empty, or not a coredump, nor a tar archive or a compressed coredump this server "
                         "reads")
    assert "OpenSSH" not in answer.text and "key" not in answer.text


def test_a_download_that_never_says_its_size_stops_at_min_storage_left(start_server, users, exports, loopback,
                                                                        scripted):
    """Before: a source without Content-Length filled the spool's volume to its last byte."""
    spool_free = shutil.disk_usage("/var/tmp").free // MIB
    server = start_server(**manager_settings(users, exports, loopback, MinStorageLeft=str(spool_free - 200),
                                             MaxVmcoreUnpackedSize="4096"))
    engineer = Engineer(server, ENGINEER, ENGINEER_PASSWORD)
    lowest, done = [spool_free * MIB], threading.Event()

    def watch():
        while not done.is_set():
            lowest[0] = min(lowest[0], shutil.disk_usage("/var/tmp").free)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        task_id = created(engineer.create(f"{scripted.url}/endless-vmcore", task_type="vmcore"))
        assert engineer.wait_final(task_id) == "Retrace job failed"
    finally:
        done.set()
        watcher.join()
    log = engineer.get(f"/manager/{task_id}/log").text
    assert "Task failed: There is not enough storage space on the server" in log, log
    # Before, the whole 1 GiB was written first and the floor checked after: the disk went 800 MiB below it.
    assert lowest[0] // MIB >= spool_free - 200 - 16, (lowest[0] // MIB, spool_free - 200)
    assert not (server.save_dir / task_id / "download.part").exists()


def test_an_imported_vmcore_declaring_a_4_gib_dictionary_fails_its_task_with_the_sentence(engineer, exports,
                                                                                        problem_dir):
    path = exports.import_ / "vmcore-huge-window.tar.xz"
    path.write_bytes(xz_declaring(crash_tar(problem_dir, 64 * MIB, name="vmcore")))
    path.chmod(0o644)
    task_id = created(engineer.create(str(path), task_type="vmcore"))
    assert engineer.wait_final(task_id) == "Retrace job failed"
    assert f"Task failed: {REFUSAL}" in engineer.get(f"/manager/{task_id}/log").text


def test_a_browser_following_a_link_to_start_gets_a_page_to_confirm_and_no_task(engineer, manager):
    """A page elsewhere can make a signed-in browser GET any URL: only a script's GET starts a task."""
    before = manager.task_dirs()
    browser_headers = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "none", "Sec-Fetch-Dest": "document"}
    page = engineer.get("/manager/problem.tar.xz/start", params={"task_type": "coredump", "caseno": "7"},
                        headers=browser_headers)
    assert page.status_code == 200 and 'id="confirm-start"' in page.text
    assert 'name="caseno" value="7"' in page.text
    assert manager.task_dirs() == before
    confirmed = engineer.post("/manager/problem.tar.xz/start", data={"task_type": "coredump", "caseno": "7"})
    task_id = created(confirmed)
    assert page_status(engineer.page(task_id)) != "unknown"
    assert created(engineer.start_from_drop("problem.tar.xz")).isdigit()  # upstream's CLI: a plain GET starts
