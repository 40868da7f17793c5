"""Coredump in, symbolized backtrace out: the worker behind the real HTTPS server.

Crashes are real cores of the fixture programs from the fixture RPMs; the
repository is a real createrepo_c repository; gdb is the host's gdb under
bubblewrap.  Tests that need two things to happen at once hold a package's
cache lock, as a task that is unpacking it would.
"""

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import time

from testkit.distro import RELEASE_ID, publish_release
from testkit.helpers import outcome, package_lock_held, submit, wait_final, wait_for_log_line
from testkit.server import SERVICE_USER


def retrace(server, problem_dir):
    task_id, auth = submit(server, problem_dir)
    status = wait_final(server, task_id, auth)
    return task_id, auth, status


def result(server, task_id, auth, name):
    response = server.get(f"/{task_id}/{name}", headers=auth)
    assert response.status_code == 200, response.text
    return response.text


def successful_backtrace(server, problem_dir):
    task_id, auth, status = retrace(server, problem_dir)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", result(server, task_id, auth, "log")
    return result(server, task_id, auth, "backtrace")


def failure(server, problem_dir):
    """The status body and log of a task expected to fail."""
    task_id, auth, status = retrace(server, problem_dir)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE", outcome(status)
    return outcome(status), result(server, task_id, auth, "log")


def rpm_named(rpms, prefix):
    return next(rpm for rpm in rpms if rpm.name.startswith(prefix))


def edited_problem_dir(problem_dir, tmp_path, **files):
    copy = tmp_path / "problem"
    shutil.copytree(problem_dir, copy)
    for name, content in files.items():
        (copy / name).write_bytes(content)
    return copy


def test_library_crash_gives_function_file_line_and_locals(server, problem_dir):
    backtrace = successful_backtrace(server, problem_dir)
    assert re.search(
        r'^#0  0x[0-9a-f]+ in crash_in_library \(depth=0, label=0x[0-9a-f]+ "simple"\) at libcrash\.c:13$', backtrace, re.M
    ), backtrace
    assert "local_counter = 21" in backtrace
    assert re.search(r"^13\t    \*target = local_counter;", backtrace, re.M), "source line from the debuginfo's sources"
    assert re.search(r"in main \(argc=2, argv=0x[0-9a-f]+\) at crasher\.c:\d+", backtrace), backtrace


def test_backtrace_is_in_gdb_format_that_abrt_parses(server, problem_dir):
    backtrace = successful_backtrace(server, problem_dir)
    assert re.search(r"^Thread 1 \(LWP \d+\):$", backtrace, re.M)
    assert re.search(r"^From\s+To\s+Syms Read\s+Shared Object Library$", backtrace, re.M)
    assert re.search(r"^=> 0x[0-9a-f]+ <\+\d+>:\tmov", backtrace, re.M), "disassembly around the crash"


def test_backtrace_and_log_reveal_no_server_paths(server, problem_dir):
    task_id, auth, _ = retrace(server, problem_dir)
    for name in ("backtrace", "log"):
        text = result(server, task_id, auth, name)
        assert str(server.root) not in text
    assert re.search(r"^0x[0-9a-f]+\s+0x[0-9a-f]+\s+Yes\s+/usr/lib64/libcrash\.so\.1$",
                     result(server, task_id, auth, "backtrace"), re.M)


def test_multithreaded_crash_shows_every_thread_with_the_crashing_one_first(server, threads_problem_dir):
    backtrace = successful_backtrace(server, threads_problem_dir)
    threads = re.split(r"^(?=Thread \d+ )", backtrace, flags=re.M)[1:]
    assert len(threads) == 3, backtrace
    assert threads[0].startswith("Thread 1 ")
    assert "crash_in_library" in threads[0] and "crashing_thread (arg=" in threads[0]
    assert any("idle_thread" in thread for thread in threads[1:])


def test_exploitable_rates_a_null_write_and_ends_with_the_rating_line(server, problem_dir):
    task_id, auth, _ = retrace(server, problem_dir)
    exploitable = result(server, task_id, auth, "exploitable")
    assert "Signal: SIGSEGV" in exploitable
    assert "Faulting instruction: mov %edx,(%rax)" in exploitable
    assert exploitable.rstrip().splitlines()[-1] == "Exploitable rating (0-8 scale): 3"


def test_log_has_upstream_line_format_and_times_every_stage(server, problem_dir):
    task_id, auth, _ = retrace(server, problem_dir)
    log = result(server, task_id, auth, "log")
    for line in log.splitlines():
        assert re.fullmatch(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] \[[IWED]\] .+", line), line
    for stage in ("Analyzing crash data", "Preparing environment for backtrace generation", "Generating backtrace",
                  "Cleaning environment after backtrace generation", "Saving crash statistics"):
        assert re.search(rf"\] {stage}: done in \d+\.\d{{3}} s$", log, re.M), stage


def test_finished_task_keeps_results_and_deletes_the_coredump(server, problem_dir):
    task_id, _, _ = retrace(server, problem_dir)
    task_dir = server.save_dir / task_id
    assert not (task_dir / "crash").exists()
    assert not (task_dir / "sysroot").exists()
    assert (task_dir / "retrace_backtrace").is_file() and (task_dir / "results" / "exploitable").is_file()


def test_debug_task_keeps_its_crash_data(server, problem_dir):
    task_id, auth = submit(server, problem_dir, **{"X-Task-Type": "1"})
    assert wait_final(server, task_id, auth).headers["X-Task-Status"] == "FINISHED_SUCCESS"
    assert (server.save_dir / task_id / "crash" / "coredump").is_file()


def test_missing_debuginfo_still_gives_a_backtrace_and_names_the_build_id(start_server, work_dir, fixture_rpms, problem_dir):
    without = [rpm for rpm in fixture_rpms if not rpm.name.startswith("libcrash-debuginfo-")]
    repository = publish_release(work_dir / "repos-without-libcrash-debuginfo", RELEASE_ID, without)
    backtrace = successful_backtrace(start_server(repository=repository), problem_dir)
    missing = re.search(
        r"^  /usr/lib64/libcrash\.so\.1 \(build-id ([0-9a-f]{40})\): no debuginfo package \(the file is in "
        r"libcrash-1\.0-1\.fc41\.x86_64\)$", backtrace, re.M,
    )
    assert missing, backtrace
    assert backtrace.index(missing[0]) < backtrace.index("Thread 1 ")
    assert re.search(r"in main \(argc=2, argv=0x[0-9a-f]+\) at crasher\.c:\d+", backtrace)


def test_unsupported_release_fails_and_lists_the_supported_ones(server, problem_dir, tmp_path):
    crash = edited_problem_dir(problem_dir, tmp_path, os_release=b"Fedora release 40 (Forty)\n")
    status, log = failure(server, crash)
    assert status.startswith("Retrace job failed: release fedora-40-x86_64")
    assert f"it supports: {RELEASE_ID}" in status
    assert "release fedora-40-x86_64" in log and "[E] Task failed" in log


def test_truncated_core_fails_and_says_it_is_truncated(server, problem_dir, tmp_path):
    core = (problem_dir / "coredump").read_bytes()
    status, log = failure(server, edited_problem_dir(problem_dir, tmp_path, coredump=core[: len(core) // 2]))
    assert "coredump is truncated" in status
    assert "coredump is truncated" in log


def test_an_executable_no_package_has_gives_a_partial_backtrace_with_the_libraries_frames(
        start_server, work_dir, fixture_rpms, problem_dir):
    without = [rpm for rpm in fixture_rpms if not rpm.name.startswith("crasher-")]
    repository = publish_release(work_dir / "repos-without-crasher", RELEASE_ID, without)
    backtrace = successful_backtrace(start_server(repository=repository), problem_dir)
    assert re.search(r"^Partial backtrace: no source has the crashed executable /usr/bin/crasher "
                     r"\(crasher-1\.0-1\.fc41, build-id [0-9a-f]{40}\)", backtrace), backtrace[:2000]
    assert re.search(r"/usr/bin/crasher \(crasher-1\.0-1\.fc41, build-id [0-9a-f]{40}\): no package in the "
                     r"repository", backtrace)
    assert re.search(r"#0 .*crash_in_library \(depth=0, .* at \S*libcrash\.c:\d+", backtrace), backtrace[1500:5000]


def test_a_crash_nothing_of_which_is_in_the_repository_fails_naming_the_executables_build(
        start_server, work_dir, fixture_rpms, problem_dir):
    unrelated = [rpm for rpm in fixture_rpms if rpm.name.startswith("libcrash-debuginfo")]
    repository = publish_release(work_dir / "repos-unrelated", RELEASE_ID, unrelated)
    status, _ = failure(start_server(repository=repository), problem_dir)
    assert re.search(r"no package of fedora-41-x86_64 provides the crashing executable /usr/bin/crasher "
                     r"\(build-id [0-9a-f]{40}: no package in the repository\)", status), status


def test_gdb_timeout_fails_with_the_limit(start_server, problem_dir):
    status, log = failure(start_server(GdbTimeout="0.01"), problem_dir)
    assert "gdb did not finish within 0.01 s (GdbTimeout)" in status
    assert "gdb did not finish within 0.01 s" in log


@contextlib.contextmanager
def tiny_file_system_at(path, size="8k"):
    """A real tmpfs of ``size`` over ``path``, writable by the service user: writes past it fail with ENOSPC."""
    user = pwd.getpwnam(SERVICE_USER)
    options = f"size={size},uid={user.pw_uid},gid={user.pw_gid},mode=0755"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def test_full_cache_disk_fails_the_task_saying_the_disk_is_full(start_server, problem_dir):
    server = start_server()
    with tiny_file_system_at(server.cache_dir):
        status, log = failure(server, problem_dir)
    assert "The server ran out of disk space at '" in status and "internal error" not in status, status
    assert "The server ran out of disk space at '" in log
    assert str(server.cache_dir) not in status + log


def test_two_tasks_needing_the_same_packages_both_succeed_and_unpack_each_once(start_server, fixture_rpms, problem_dir):
    server = start_server()
    with package_lock_held(server, rpm_named(fixture_rpms, "crasher-1.0")):
        tasks = [submit(server, problem_dir) for _ in range(2)]
        for task_id, auth in tasks:
            wait_for_log_line(server, task_id, auth, "Waiting for another task that is unpacking crasher-1.0")
    statuses = [wait_final(server, task_id, auth) for task_id, auth in tasks]
    logs = [result(server, task_id, auth, "log") for task_id, auth in tasks]
    assert [s.headers["X-Task-Status"] for s in statuses] == ["FINISHED_SUCCESS"] * 2, logs
    for rpm in fixture_rpms:
        nevra = rpm.name.removesuffix(".rpm")
        assert sum(log.count(f"Unpacked {nevra} in") for log in logs) == 1, (nevra, logs)


def test_killed_worker_ends_its_task_failed_and_frees_the_slot(start_server, fixture_rpms, problem_dir):
    server = start_server(MaxParallelTasks="1")
    with package_lock_held(server, rpm_named(fixture_rpms, "crasher-1.0")):
        task_id, auth = submit(server, problem_dir)
        wait_for_log_line(server, task_id, auth, "Waiting for another task")
        worker_pid = int((server.save_dir / task_id / ".worker.lock").read_text())
        os.kill(worker_pid, signal.SIGKILL)
        status = wait_final(server, task_id, auth)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert "worker stopped unexpectedly" in outcome(status) and "Preparing environment" in outcome(status)
    assert "worker stopped unexpectedly" in result(server, task_id, auth, "log")
    assert successful_backtrace(server, problem_dir)


def test_task_waits_in_the_queue_while_all_workers_are_busy_then_runs(start_server, fixture_rpms, problem_dir):
    server = start_server(MaxParallelTasks="1")
    with package_lock_held(server, rpm_named(fixture_rpms, "crasher-1.0")):
        first = submit(server, problem_dir)
        wait_for_log_line(server, *first, "Waiting for another task")
        second = submit(server, problem_dir)
        queued = server.get(f"/{second[0]}", headers=second[1])
        assert queued.headers["X-Task-Status"] == "PENDING"
        assert queued.text == "Waiting in the queue for a free worker (position 1)"
    for task_id, auth in (first, second):
        assert wait_final(server, task_id, auth).headers["X-Task-Status"] == "FINISHED_SUCCESS"


def without_thread_notes(core):
    """The core with its NT_PRSTATUS notes renamed: gdb then has no registers, so no stack."""
    data = bytearray(core)
    phoff, phentsize, phnum = int.from_bytes(data[32:40], "little"), 56, int.from_bytes(data[56:58], "little")
    for index in range(phnum):
        header = phoff + index * phentsize
        if int.from_bytes(data[header:header + 4], "little") != 4:  # PT_NOTE
            continue
        position = int.from_bytes(data[header + 8:header + 16], "little")
        end = position + int.from_bytes(data[header + 32:header + 40], "little")
        while position + 12 <= end:
            namesz, descsz, note_type = (int.from_bytes(data[position + i:position + i + 4], "little") for i in (0, 4, 8))
            if note_type == 1:  # NT_PRSTATUS
                data[position + 8:position + 12] = (0x7FFF).to_bytes(4, "little")
            position += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return bytes(data)


def test_core_without_threads_is_refused_before_gdb_runs(server, problem_dir, tmp_path):
    """Before the core reader counted thread registers, gdb ran and said "Couldn't find general-purpose
    registers in core file", which the user saw as "gdb output is unusable"."""
    damaged = without_thread_notes((problem_dir / "coredump").read_bytes())
    status, log = failure(server, edited_problem_dir(problem_dir, tmp_path, coredump=damaged))
    assert "The coredump holds no thread registers (it is truncated, or was not written by the Linux kernel)" \
        in status
    assert "Generating backtrace" not in log


def test_worker_survives_an_apache_stop_and_finishes_its_task(start_server, fixture_rpms, problem_dir):
    server = start_server()
    with package_lock_held(server, rpm_named(fixture_rpms, "crasher-1.0")):
        task_id, auth = submit(server, problem_dir)
        wait_for_log_line(server, task_id, auth, "Waiting for another task")
        server.stop()
    task_dir = server.save_dir / task_id
    for _ in range(600):
        if (task_dir / "status").read_text() in ("6", "7"):
            break
        time.sleep(0.05)
    assert (task_dir / "status").read_text() == "6", (task_dir / "retrace_log").read_text()
    assert "crash_in_library" in (task_dir / "retrace_backtrace").read_text()
