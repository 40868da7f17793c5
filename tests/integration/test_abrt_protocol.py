"""The protocol exactly as abrt-retrace-client drives it, against the real Apache over HTTPS."""

import gzip
import re

import pytest

from testkit.cores import CRASH_PACKAGE
from testkit.distro import RELEASE_ID
from testkit.helpers import (
    XZ_TAR,
    abrt_archive,
    package_lock_held,
    parse_settings,
    password_header,
    problem_members,
    submit,
    tar_bytes,
    wait_final,
    wait_for_log_line,
    xz,
)


def create_task(server, problem_dir, task_type="0"):
    response = server.post(
        "/create", data=abrt_archive(problem_dir), headers={"Content-Type": XZ_TAR, "X-Task-Type": task_type}
    )
    assert response.status_code == 201, response.text
    return response


def test_settings_are_upstream_key_value_lines_without_trailing_newline(server):
    response = server.get("/settings")
    assert response.status_code == 200
    keys = [line.split(" ", 1)[0] for line in response.text.split("\n")]
    assert keys == [
        "running_tasks", "max_running_tasks", "max_packed_size", "max_unpacked_size",
        "supported_formats", "supported_releases", "supported_architectures",
    ]
    assert not response.text.endswith("\n")


def test_settings_list_xz_tar_and_the_fixture_release(server):
    settings = parse_settings(server.get("/settings").text)
    assert "application/x-xz-compressed-tar" in settings["supported_formats"].split(" ")
    assert RELEASE_ID in settings["supported_releases"].split(" ")
    assert settings["max_packed_size"] == "8"
    assert settings["max_unpacked_size"] == "32"


def test_checkpackage_known_package_is_302_without_location(server):
    response = server.get(
        "/checkpackage",
        headers={"X-Package-NVR": CRASH_PACKAGE, "X-Package-Arch": "x86_64", "X-OS-Release": RELEASE_ID},
        allow_redirects=False,
    )
    assert response.status_code == 302
    assert "Location" not in response.headers
    assert response.content == b""


def test_checkpackage_unknown_package_is_404(server):
    response = server.get(
        "/checkpackage",
        headers={"X-Package-NVR": "crasher-9.9-1.fc41", "X-Package-Arch": "x86_64", "X-OS-Release": RELEASE_ID},
        allow_redirects=False,
    )
    assert response.status_code == 404


def test_checkpackage_package_of_another_release_is_404(server):
    response = server.get(
        "/checkpackage",
        headers={"X-Package-NVR": CRASH_PACKAGE, "X-Package-Arch": "x86_64", "X-OS-Release": "fedora-40-x86_64"},
        allow_redirects=False,
    )
    assert response.status_code == 404


def test_create_with_abrt_archive_answers_201_with_id_and_password(server, problem_dir):
    response = create_task(server, problem_dir)
    assert re.fullmatch(r"[1-9][0-9]{8}", response.headers["X-Task-Id"])
    assert re.fullmatch(r"[0-9A-Za-z]{32}", response.headers["X-Task-Password"])
    assert response.content == b""


def test_task_spool_keeps_upstream_layout(server, problem_dir):
    created = create_task(server, problem_dir, task_type="1")
    task_id = created.headers["X-Task-Id"]
    assert wait_final(server, task_id, password_header(created)).headers["X-Task-Status"] == "FINISHED_SUCCESS"
    task_dir = server.save_dir / task_id
    assert (task_dir / "password").read_text() == created.headers["X-Task-Password"]
    assert (task_dir / "type").read_text() == "1"
    assert (task_dir / "status").read_text() == "6"
    assert (task_dir / "started_time").read_text().isdigit() and (task_dir / "finished_time").read_text().isdigit()
    assert (task_dir / "retrace_log").is_file() and (task_dir / "retrace_backtrace").is_file()
    assert (task_dir / "results" / "exploitable").is_file()
    assert sorted(p.name for p in (task_dir / "crash").iterdir()) == sorted(
        ["coredump", "executable", "package", "os_release"]
    )
    assert (task_dir / "crash" / "coredump").read_bytes() == (problem_dir / "coredump").read_bytes()


@pytest.fixture
def busy_server(start_server, fixture_rpms, problem_dir):
    """A server whose only worker is busy (waiting on a package lock): new tasks queue."""
    server = start_server(MaxParallelTasks="1", MaxQueuedTasks="3")
    crasher = next(rpm for rpm in fixture_rpms if rpm.name.startswith("crasher-1.0"))
    with package_lock_held(server, crasher):
        created = create_task(server, problem_dir)
        wait_for_log_line(server, created.headers["X-Task-Id"], password_header(created), "Waiting for another task")
        yield server


def test_queued_task_is_pending_and_says_where_it_waits(busy_server, problem_dir):
    created = create_task(busy_server, problem_dir)
    response = busy_server.get(f"/{created.headers['X-Task-Id']}", headers=password_header(created))
    assert response.status_code == 200
    assert response.headers["X-Task-Status"] == "PENDING"
    assert response.text == "Waiting in the queue for a free worker (position 1)"
    assert not (busy_server.save_dir / created.headers["X-Task-Id"] / "status").exists()


def test_results_of_an_unfinished_task_are_404_with_a_sentence(busy_server, problem_dir):
    created = create_task(busy_server, problem_dir)
    task_id = created.headers["X-Task-Id"]
    expected = {
        "backtrace": "There is no backtrace for the specified task",
        "log": "There is no log for the specified task",
        "exploitable": "There is no exploitability data for the specified task",
    }
    for name, sentence in expected.items():
        response = busy_server.get(f"/{task_id}/{name}", headers=password_header(created))
        assert (response.status_code, response.text) == (404, sentence)


def test_settings_count_running_and_queued_tasks_as_taken_slots(busy_server, problem_dir):
    create_task(busy_server, problem_dir)
    settings = parse_settings(busy_server.get("/settings").text)
    assert (settings["running_tasks"], settings["max_running_tasks"]) == ("2", "4")


def test_index_page_shows_releases_and_retention(server):
    response = server.get("/")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert RELEASE_ID in response.text
    assert "120 hours" in response.text


def test_a_failed_tasks_body_is_upstreams_exact_sentence_and_the_reason_travels_beside_it(server, problem_dir):
    """Upstream's retrace-server-task waits for the body to equal "Retrace job failed"; our client and the
    task log still tell why."""
    archive = xz(tar_bytes(problem_members(problem_dir, os_release=b"Fedora release 40 (Forty)\n")))
    task_id, auth = submit(server, problem_dir, archive=archive)
    status = wait_final(server, task_id, auth)
    assert (status.headers["X-Task-Status"], status.text) == ("FINISHED_FAILURE", "Retrace job failed")
    assert status.headers["X-Task-Failure-Reason"].startswith("release fedora-40-x86_64 ")
    assert "[E] Task failed" in server.get(f"/{task_id}/log", headers=auth).text


def test_upstream_clis_gzip_tar_sent_as_a_plain_tar_is_read_and_retraced(server, problem_dir):
    """``retrace-server-task create -t`` writes ``archive.tar.gz`` with Python's tarfile and posts it as
    application/x-tar (upstream unpacked with GNU tar, which finds the compression itself)."""
    body = gzip.compress(tar_bytes(problem_members(problem_dir, ("os_release", "package", "executable", "coredump"))))
    response = server.post("/create", data=body, headers={"Content-Type": "application/x-tar", "X-Task-Type": "0"})
    assert response.status_code == 201, response.text
    status = wait_final(server, response.headers["X-Task-Id"], password_header(response))
    assert (status.headers["X-Task-Status"], status.text) == ("FINISHED_SUCCESS", "Retrace job finished successfully")
