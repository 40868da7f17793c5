"""The protocol exactly as abrt-retrace-client drives it, against the real Apache over HTTPS."""

import re

from tests.integration.conftest import CRASH_PACKAGE, RELEASE_ID
from tests.integration.helpers import XZ_TAR, abrt_archive, parse_settings, password_header


def create_task(server, problem_dir):
    response = server.post(
        "/create", data=abrt_archive(problem_dir), headers={"Content-Type": XZ_TAR, "X-Task-Type": "0"}
    )
    assert response.status_code == 201, response.text
    return response


def test_settings_are_upstream_key_value_lines_without_trailing_newline(server):
    response = server.get("/settings")
    assert response.status_code == 200
    keys = [line.split(" ", 1)[0] for line in response.text.split("\n")]
    assert keys == [
        "running_tasks", "max_running_tasks", "max_packed_size", "max_unpacked_size",
        "supported_formats", "supported_releases",
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


def test_new_task_is_pending_and_says_it_waits_in_the_queue(server, problem_dir):
    created = create_task(server, problem_dir)
    response = server.get(f"/{created.headers['X-Task-Id']}", headers=password_header(created))
    assert response.status_code == 200
    assert response.headers["X-Task-Status"] == "PENDING"
    assert response.text.startswith("Waiting in the queue for a free worker (position ")


def test_task_spool_keeps_upstream_layout(server, problem_dir):
    created = create_task(server, problem_dir)
    task_dir = server.save_dir / created.headers["X-Task-Id"]
    assert (task_dir / "password").read_text() == created.headers["X-Task-Password"]
    assert (task_dir / "type").read_text() == "0"
    assert (task_dir / "results").is_dir()
    assert sorted(p.name for p in (task_dir / "crash").iterdir()) == sorted(
        ["coredump", "executable", "package", "os_release"]
    )
    assert (task_dir / "crash" / "coredump").read_bytes() == (problem_dir / "coredump").read_bytes()
    assert not (task_dir / "status").exists()


def test_results_of_an_unfinished_task_are_404_with_a_sentence(server, problem_dir):
    created = create_task(server, problem_dir)
    task_id = created.headers["X-Task-Id"]
    expected = {
        "backtrace": "There is no backtrace for the specified task",
        "log": "There is no log for the specified task",
        "exploitable": "There is no exploitability data for the specified task",
    }
    for name, sentence in expected.items():
        response = server.get(f"/{task_id}/{name}", headers=password_header(created))
        assert (response.status_code, response.text) == (404, sentence)


def test_settings_count_the_new_tasks_as_taken_slots(start_server, problem_dir):
    server = start_server(MaxParallelTasks="1", MaxQueuedTasks="3")
    create_task(server, problem_dir)
    create_task(server, problem_dir)
    settings = parse_settings(server.get("/settings").text)
    assert (settings["running_tasks"], settings["max_running_tasks"]) == ("2", "4")


def test_index_page_shows_releases_and_retention(server):
    response = server.get("/")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert RELEASE_ID in response.text
    assert "120 hours" in response.text
