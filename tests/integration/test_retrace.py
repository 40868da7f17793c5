"""Coredump in, symbolized backtrace out: the worker through the real HTTPS server."""

import re
import time

import pytest

from tests.integration.helpers import XZ_TAR, abrt_archive, password_header

FINAL = ("FINISHED_SUCCESS", "FINISHED_FAILURE")


def submit(server, problem_dir, **headers):
    response = server.post(
        "/create", data=abrt_archive(problem_dir), headers={"Content-Type": XZ_TAR, "X-Task-Type": "0", **headers}
    )
    assert response.status_code == 201, response.text
    return response.headers["X-Task-Id"], password_header(response)


def wait_final(server, task_id, auth, timeout=60):
    """Poll like abrt-retrace-client until the task ends; returns the last status response."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = server.get(f"/{task_id}", headers=auth)
        assert response.status_code == 200, response.text
        if response.headers["X-Task-Status"] in FINAL:
            return response
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not finish: {response.text}")


def retrace(server, problem_dir):
    task_id, auth = submit(server, problem_dir)
    status = wait_final(server, task_id, auth)
    return task_id, auth, status


def test_library_crash_gives_function_file_line_and_locals(server, problem_dir):
    task_id, auth, status = retrace(server, problem_dir)
    log = server.get(f"/{task_id}/log", headers=auth).text
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    backtrace = server.get(f"/{task_id}/backtrace", headers=auth).text
    assert re.search(r"^#0  0x[0-9a-f]+ in crash_in_library \(depth=0, label=0x[0-9a-f]+ \"simple\"\) at libcrash\.c:13$", backtrace, re.M), backtrace
    assert "local_counter = 7" in backtrace
    assert re.search(r"in main \(argc=2, argv=0x[0-9a-f]+\) at crasher\.c:\d+", backtrace), backtrace
