"""debuginfod as a file source, with real elfutils debuginfod servers on loopback."""

import http.server
import re
import threading
import time

import pytest

from retrace_server.elf import read_core
from testkit.cores import unpack
from testkit.debuginfod import Debuginfod, SilentServer, free_port, libc_debs
from testkit.distro import RELEASE_ID, publish_release
from testkit.helpers import crashing_thread, submit, wait_final


def build_id_of(problem_dir, suffix):
    core = read_core(problem_dir / "coredump")
    return next(module.build_id for module in core.modules if module.path.endswith(suffix))


@pytest.fixture(scope="module")
def rpm_debuginfod(release_dir, problem_dir):
    """debuginfod over the fixture's RPMs."""
    server = Debuginfod([release_dir / "Packages"], build_id_of(problem_dir, "/crasher"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def full_debuginfod(release_dir, problem_dir):
    """debuginfod over the fixture's RPMs and this host's libc6 + libc6-dbg .debs."""
    debs = libc_debs()
    server = Debuginfod([release_dir / "Packages", debs[0].parent], build_id_of(problem_dir, "/crasher"),
                        build_id_of(problem_dir, "/libc.so.6"))
    yield server
    server.stop()


def retrace(server, problem_dir):
    task_id, auth = submit(server, problem_dir)
    status = wait_final(server, task_id, auth)
    log = server.get(f"/{task_id}/log", headers=auth).text
    backtrace = server.get(f"/{task_id}/backtrace", headers=auth).text
    return status, backtrace, log


def test_release_without_a_mirror_retraces_from_debuginfod_alone(start_server, server, rpm_debuginfod, problem_dir):
    only_debuginfod = start_server(repository=False, DebuginfodURLs=rpm_debuginfod.url, DebuginfodReleases=RELEASE_ID)
    assert RELEASE_ID in only_debuginfod.get("/settings").text
    status, backtrace, log = retrace(only_debuginfod, problem_dir)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    _, mirrored, _ = retrace(server, problem_dir)
    assert crashing_thread(backtrace) == crashing_thread(mirrored)
    assert f"  /usr/bin/crasher: debuginfod {rpm_debuginfod.url}; debuginfod {rpm_debuginfod.url}" in backtrace
    assert "fedora-41-x86_64 has no mirror here; every file comes from debuginfod" in log


def test_a_release_with_its_own_debuginfod_section_is_served_by_it(start_server, rpm_debuginfod, problem_dir):
    own = start_server(repository=False, extra_ini=f"[debuginfod]\n{RELEASE_ID} = {rpm_debuginfod.url}\n")
    assert RELEASE_ID in own.get("/settings").text
    status, backtrace, log = retrace(own, problem_dir)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert f"  /usr/lib64/libcrash.so.1: debuginfod {rpm_debuginfod.url}; debuginfod {rpm_debuginfod.url}" in backtrace


def test_checkpackage_for_a_debuginfod_release_says_it_will_try(start_server, rpm_debuginfod):
    only_debuginfod = start_server(repository=False, DebuginfodURLs=rpm_debuginfod.url, DebuginfodReleases=RELEASE_ID)
    response = only_debuginfod.get("/checkpackage", allow_redirects=False, headers={
        "X-Package-NVR": "anything-1-1.fc41", "X-Package-Arch": "x86_64", "X-OS-Release": RELEASE_ID})
    assert response.status_code == 302 and response.headers["X-Retrace-Package-Check"] == "debuginfod"


def test_crash_inside_libc_gets_libc_names_and_lines_from_debuginfod(start_server, full_debuginfod, libc_problem_dir):
    only_debuginfod = start_server(repository=False, DebuginfodURLs=full_debuginfod.url, DebuginfodReleases=RELEASE_ID)
    status, backtrace, log = retrace(only_debuginfod, libc_problem_dir)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert re.search(r"in msort_with_tmp \(.*\) at \S*msort\.c:\d+", backtrace), backtrace
    assert re.search(r"in compare_names \(.*\) at crasher\.c:\d+", backtrace)
    assert re.search(r"^#\d+  (0x\w+ in )?\w*qsort\w* \(.*\) at \S*msort\.c:\d+$", backtrace, re.M), backtrace
    assert re.search(r"^#0  (0x\w+ in )?__strcmp\w* \(.*\) at \S+strcmp\S*\.S:\d+$", backtrace, re.M)
    assert re.search(r"^0x\w+\s+0x\w+\s+Yes\s+/lib64/ld-linux-x86-64\.so\.2$", backtrace, re.M), "loader by its PT_INTERP name"


def test_debug_files_from_debuginfod_get_their_gdb_indexes_too(start_server, full_debuginfod, libc_problem_dir):
    """libc6-dbg's debug file comes from debuginfod without an index: the first task indexes it after its
    answer, the second reads it."""
    only_debuginfod = start_server(repository=False, DebuginfodURLs=full_debuginfod.url, DebuginfodReleases=RELEASE_ID)
    status, first, log = retrace(only_debuginfod, libc_problem_dir)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    built = re.search(r"Built the gdb indexes of (\d+) of (\d+) debug files", log)
    assert built and int(built[1]) >= 1, log
    assert len(list((only_debuginfod.cache_dir / "gdb-index").glob("*.gdb-index"))) == int(built[1])
    status, second, log = retrace(only_debuginfod, libc_problem_dir)
    assert f"gdb reads the prebuilt indexes of the {built[2]} debug files" in log, log
    assert re.search(r"in msort_with_tmp \(.*\) at \S*msort\.c:\d+", second), second


def test_mirror_gap_is_filled_from_debuginfod_and_the_header_names_each_source(start_server, work_dir, fixture_rpms,
                                                                               rpm_debuginfod, problem_dir):
    without = [rpm for rpm in fixture_rpms if not rpm.name.startswith("libcrash-debuginfo-")]
    repository = publish_release(work_dir / "repos-gap", RELEASE_ID, without)
    mixed = start_server(repository=repository, DebuginfodURLs=rpm_debuginfod.url)
    status, backtrace, log = retrace(mixed, problem_dir)
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert f"  /usr/lib64/libcrash.so.1: libcrash-1.0-1.fc41.x86_64; debuginfod {rpm_debuginfod.url}" in backtrace
    assert "  /usr/bin/crasher: crasher-1.0-1.fc41.x86_64; crasher-debuginfo-1.0-1.fc41.x86_64" in backtrace
    assert "local_counter = 21" in backtrace and "/usr/lib64/libcrash.so.1 (build-id" not in backtrace


def test_dead_hung_and_404_servers_cannot_stall_a_task(start_server, problem_dir, rpm_debuginfod):
    """libc is on none of them: one never answers, one is down, one (the fixture's) answers 404."""
    silent = SilentServer()
    try:
        urls = f"{silent.url} http://127.0.0.1:{free_port()} {rpm_debuginfod.url}"
        bounded = start_server(DebuginfodURLs=urls, DebuginfodDeadline="4", DebuginfodTimeout="1", DebuginfodRetries="0")
        started = time.monotonic()
        status, backtrace, log = retrace(bounded, problem_dir)
        seconds = time.monotonic() - started
    finally:
        silent.stop()
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert seconds < 20
    libc = build_id_of(problem_dir, "/libc.so.6")
    assert re.search(rf"^  \S+/libc\.so\.6 \(build-id {libc}\): .*debuginfod has no executable or debuginfo", backtrace, re.M)
    assert "ReadTimeout" in log or "deadline" in log


class _WrongFileHandler(http.server.BaseHTTPRequestHandler):
    """A debuginfod that answers every build-id with the same, wrong, ELF file."""

    payload = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args):
        pass


def test_file_whose_build_id_differs_is_rejected(start_server, problem_dir, release_dir, tmp_path):
    rpm = next((release_dir / "Packages").glob("libcrash-1.0-*.x86_64.rpm"))
    unpack([rpm], tmp_path)
    _WrongFileHandler.payload = (tmp_path / "usr/lib64/libcrash.so.1").read_bytes()
    liar = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WrongFileHandler)
    threading.Thread(target=liar.serve_forever, daemon=True).start()
    try:
        server = start_server(DebuginfodURLs=f"http://127.0.0.1:{liar.server_address[1]}")
        status, backtrace, log = retrace(server, problem_dir)
    finally:
        liar.shutdown()
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert re.search(r"^  \S+/libc\.so\.6 \(build-id \w+\): .*its build-id is not the one asked for", backtrace, re.M)
    assert "debuginfod http" not in backtrace, "nothing from the lying server was used"
