"""Cores made to attack the worker: names that leave the task's tree, output without end.

Each goes through the real server and a real worker; the cores are real
cores written by the kernel, altered where an attacker would alter them.
"""

import os
import secrets

import pytest

from retrace_server.elf import read_core
from testkit.debuginfod import Debuginfod, libc_debs
from testkit.helpers import outcome, problem_members, submit, tar_bytes, wait_final, xz

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"


@pytest.fixture(scope="module")
def libc_debuginfod(problem_dir):
    """A real debuginfod serving this host's libc6 and libc6-dbg: the source that places files by core paths."""
    libc = next(module for module in read_core(problem_dir / "coredump").modules if module.path == LIBC)
    server = Debuginfod([libc_debs()[0].parent], libc.build_id)
    yield server
    server.stop()


def escaping_name():
    """A path of libc's length that climbs out of any task directory into /tmp."""
    name = f"/tmp/{secrets.token_hex(3)}"
    climb = "/.." * ((len(LIBC) - len(name)) // 3)
    path = climb + name
    return path + "x" * (len(LIBC) - len(path))


def test_core_mapping_a_file_outside_the_tree_fails_and_nothing_is_written_there(start_server, problem_dir,
                                                                                   libc_debuginfod):
    server = start_server(DebuginfodURLs=libc_debuginfod.url)
    path = escaping_name()
    assert len(path) == len(LIBC) and not os.path.lexists(path)
    core = (problem_dir / "coredump").read_bytes()
    assert core.count(LIBC.encode() + b"\0") >= 1  # NT_FILE names libc once per mapping
    forged = core.replace(LIBC.encode() + b"\0", path.encode() + b"\0")
    task_id, auth = submit(server, None, archive=xz(tar_bytes(problem_members(problem_dir, coredump=forged))))
    status = wait_final(server, task_id, auth)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert f"maps a file named '{path}', which is not a plain absolute path" in outcome(status)
    assert not os.path.lexists(os.path.normpath(path)), "the worker wrote outside the task"


# The deep core is larger than the test server's default upload caps.
DEEP_CAPS = {"MaxPackedSize": "64", "MaxUnpackedSize": "512"}


def test_gdb_printing_past_the_output_cap_is_stopped_and_the_task_says_so(start_server, deep_problem_dir):
    server = start_server(DebuggerOutputLimit="1", **DEEP_CAPS)
    task_id, auth = submit(server, deep_problem_dir)
    status = wait_final(server, task_id, auth, timeout=120)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert "gdb printed more than 1 MiB (DebuggerOutputLimit) and was stopped" in outcome(status)
    log = server.get(f"/{task_id}/log", headers=auth).text
    assert "gdb printed more than 1 MiB" in log


def test_the_same_deep_core_retraces_under_the_default_cap(start_server, deep_problem_dir):
    server = start_server(**DEEP_CAPS)
    task_id, auth = submit(server, deep_problem_dir)
    status = wait_final(server, task_id, auth, timeout=120)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", outcome(status)
    backtrace = server.get(f"/{task_id}/backtrace", headers=auth).text
    assert backtrace.count("wait_deep") > 16 * 1000
