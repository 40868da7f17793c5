"""retrace-client as a person runs it, against the real HTTPS server."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.helpers import package_lock_held
from testkit.journal import coredump_entry, stored_core, with_journal, write_journal

CLIENT = Path(sys.executable).with_name("retrace-client")
README = Path(__file__).resolve().parents[2] / "README.md"
UPSTREAM_PROGRESS = [
    "Querying server settings", "Preparing an archive to upload", "Uploading ", "Upload successful",
    "Retrace job #", "Retrace job finished successfully",
]


def run_client(server, *arguments, env=None, cafile=True, wrap=None):
    """``wrap``: a function of the argv that returns the argv to run (a namespace around the client)."""
    argv = [str(CLIENT), arguments[0], "--uri", server.url, "--status-delay", "0.1", *arguments[1:]]
    if cafile:
        argv += ["--cafile", str(server.cert)]
    argv = wrap(argv) if wrap else argv
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)


@pytest.fixture
def crash_dir(problem_dir, tmp_path):
    """A private copy of the problem directory (the client writes the backtrace into it)."""
    return Path(shutil.copytree(problem_dir, tmp_path / "problem"))


def assert_in_order(text, fragments):
    position = 0
    for fragment in fragments:
        found = text.find(fragment, position)
        assert found >= 0, f"{fragment!r} missing (in order) from:\n{text}"
        position = found + len(fragment)


def test_batch_dir_prints_upstream_progress_and_saves_the_backtrace(server, crash_dir):
    result = run_client(server, "batch", "--dir", str(crash_dir))
    assert result.returncode == 0, result.stderr
    assert_in_order(result.stderr, UPSTREAM_PROGRESS)
    assert re.search(r"^Retrace job #\d{9} started$", result.stderr, re.M)
    assert "crash_in_library (depth=0" in (crash_dir / "backtrace").read_text()
    assert "Exploitable rating (0-8 scale): 3" in result.stderr
    assert not (crash_dir / "exploitable").exists(), "saved only from rating 4 up, as ABRT did"


def test_the_client_long_polls_so_a_long_status_delay_does_not_hold_it_back(server, crash_dir):
    """ABRT_STATUS_DELAY (here 600 s) is only the pause after a poll the server did not hold: ours holds each
    until the stage changes, so the batch ends well within the two minutes run_client allows."""
    result = run_client(server, "batch", "--dir", str(crash_dir), "--status-delay", "600")
    assert result.returncode == 0, result.stderr
    assert_in_order(result.stderr, UPSTREAM_PROGRESS)


def test_batch_core_and_executable_prints_the_backtrace(server, problem_dir):
    result = run_client(
        server, "batch", "--core", str(problem_dir / "coredump"), "--executable", "/usr/bin/crasher",
        "--package", "crasher-1.0-1.fc41", "--os-release", "Fedora release 41 (Forty One)",
    )
    assert result.returncode == 0, result.stderr
    assert "crash_in_library (depth=0" in result.stdout


def test_core_of_a_program_no_rpm_package_owns_is_a_local_error(server, problem_dir):
    result = run_client(server, "batch", "--core", str(problem_dir / "coredump"), "--executable", "/usr/bin/crasher",
                        "--os-release", "Fedora release 41 (Forty One)")
    assert result.returncode == 2
    assert "/usr/bin/crasher is not owned by any package" in result.stderr and "--package" in result.stderr


@pytest.fixture
def kept_crashes(problem_dir, tmp_path):
    """The machine's journal as systemd-coredump leaves it: an older crash of another program, then the
    crasher's (its core stored as zstd beside the journal), then one of ``sleep`` whose core is gone."""
    cores = tmp_path / "coredump"
    cores.mkdir()
    crasher = stored_core(problem_dir / "coredump", cores, "/usr/bin/crasher", 4242)
    removed = stored_core(problem_dir / "coredump", cores, "/usr/bin/sleep", 4343)
    removed.unlink()
    other = stored_core(problem_dir / "coredump", cores, "/usr/bin/other", 4141)
    return write_journal(tmp_path / "journal", [coredump_entry(other, "/usr/bin/other", 4141),
                                                coredump_entry(crasher, "/usr/bin/crasher", 4242),
                                                coredump_entry(removed, "/usr/bin/sleep", 4343)])


def test_batch_coredumpctl_uploads_the_crash_systemd_coredump_kept(server, kept_crashes):
    result = run_client(server, "batch", "--coredumpctl", "crasher", "--package", "crasher-1.0-1.fc41",
                        "--os-release", "Fedora release 41 (Forty One)", wrap=lambda argv: with_journal(kept_crashes, argv))
    assert result.returncode == 0, result.stderr
    assert "crash_in_library (depth=0" in result.stdout


@pytest.mark.parametrize("match, said", [
    ("sleep", "the newest crash matching 'sleep' (/usr/bin/sleep, pid 4343) cannot be sent: its core was removed"),
    ("nothing-crashed-here", "coredumpctl has no crash matching 'nothing-crashed-here': No match found"),
])
def test_batch_coredumpctl_says_why_a_crash_cannot_be_sent(server, kept_crashes, match, said):
    result = run_client(server, "batch", "--coredumpctl", match, "--package", "crasher-1.0-1.fc41",
                        wrap=lambda argv: with_journal(kept_crashes, argv))
    assert result.returncode == 2 and said in result.stderr, result.stderr


def test_create_then_each_task_operation(server, crash_dir):
    created = run_client(server, "create", "--dir", str(crash_dir), "--json")
    assert created.returncode == 0, created.stderr
    task = json.loads(created.stdout)
    credentials = ["--task", task["task_id"], "--password", task["password"]]
    for _ in range(600):
        status = run_client(server, "status", *credentials)
        if "FINISHED" in status.stdout:
            break
    assert status.stdout.startswith("Task Status: FINISHED_SUCCESS\nRetrace job finished successfully")
    assert "crash_in_library" in run_client(server, "backtrace", *credentials).stdout
    assert "[I] Analyzing crash data" in run_client(server, "log", *credentials).stdout
    exploitable = json.loads(run_client(server, "exploitable", *credentials, "--json").stdout)
    assert exploitable["exploitable"].rstrip().endswith("Exploitable rating (0-8 scale): 3")


def test_settings_operation_prints_the_server_limits(server):
    result = run_client(server, "settings", "--json")
    assert result.returncode == 0
    assert "fedora-41-x86_64" in json.loads(result.stdout)["supported_releases"]


def test_failed_retrace_prints_the_log_and_exits_1(server, crash_dir):
    core = (crash_dir / "coredump").read_bytes()
    (crash_dir / "coredump").write_bytes(core[: len(core) // 2])
    result = run_client(server, "batch", "--dir", str(crash_dir))
    assert result.returncode == 1
    assert "Retrace failed. Try again later" in result.stderr
    assert "[E] Task failed: The coredump is truncated" in result.stdout


def test_fully_occupied_server_is_refused_before_upload(start_server, fixture_rpms, problem_dir, crash_dir):
    busy = start_server(MaxParallelTasks="1", MaxQueuedTasks="0")
    crasher = next(rpm for rpm in fixture_rpms if rpm.name.startswith("crasher-1.0"))
    with package_lock_held(busy, crasher):
        first = run_client(busy, "create", "--dir", str(crash_dir))
        assert first.returncode == 0, first.stderr
        refused = run_client(busy, "batch", "--dir", str(crash_dir))
    assert refused.returncode == 3
    assert "The server is fully occupied. Try again later." in refused.stderr
    assert "Uploading" not in refused.stderr


def test_unsupported_release_is_refused_with_the_supported_ones(server, crash_dir):
    (crash_dir / "os_release").write_text("Fedora release 40 (Forty)\n")
    result = run_client(server, "batch", "--dir", str(crash_dir))
    assert result.returncode == 3
    assert "The release 'fedora-40-x86_64' is not supported by the Retrace server (it supports: fedora-41-x86_64)" \
        in result.stderr


def test_a_refusal_with_json_prints_the_sentence_as_json_on_stdout(server, crash_dir):
    (crash_dir / "os_release").write_text("Fedora release 40 (Forty)\n")
    result = run_client(server, "batch", "--dir", str(crash_dir), "--json")
    assert result.returncode == 3
    answer = json.loads(result.stdout)
    assert answer["exit_status"] == 3 and "The release 'fedora-40-x86_64' is not supported" in answer["error"]


@pytest.mark.parametrize("uri, reason", [
    ("https://127.0.0.1:{closed_port}", "the connection was refused (is the server running, on that port?)"),
    ("https://retrace.invalid", "its host name cannot be resolved"),
])
def test_an_unreachable_server_is_explained_without_library_reprs(uri, reason):
    with socket.socket() as probe:  # a port nothing listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        uri = uri.format(closed_port=probe.getsockname()[1])
        result = subprocess.run([str(CLIENT), "settings", "--uri", uri, "--json"], capture_output=True, text=True,
                                timeout=120)
    assert result.returncode == 3
    assert f"Cannot reach the retrace server at {uri}: {reason}" in result.stderr
    assert "ConnectionPool" not in result.stderr and "object at 0x" not in result.stderr
    assert json.loads(result.stdout) == {"error": f"Cannot reach the retrace server at {uri}: {reason}",
                                         "exit_status": 3}


def test_unknown_package_is_refused(server, crash_dir):
    (crash_dir / "package").write_text("crasher-9.9-1.fc41")
    result = run_client(server, "batch", "--dir", str(crash_dir))
    assert result.returncode == 3
    assert "unable to process package 'crasher-9.9-1.fc41.x86_64'" in result.stderr


def test_server_without_storage_answers_507_and_the_client_says_so(start_server, crash_dir):
    full = start_server(MinStorageLeft=str(1024 * 1024 * 1024))
    result = run_client(full, "batch", "--dir", str(crash_dir), "--no-pkgcheck")
    assert result.returncode == 3
    assert "Unexpected HTTP response from server: 507" in result.stderr


def test_server_403_is_shown_as_a_corrupted_problem_directory(server, crash_dir):
    (crash_dir / "os_release.real").write_text("Fedora release 41 (Forty One)\n")
    (crash_dir / "os_release").unlink()
    (crash_dir / "os_release").symlink_to("os_release.real")
    result = run_client(server, "batch", "--dir", str(crash_dir))
    assert result.returncode == 3
    assert "Your problem directory is corrupted and can not be processed by the Retrace server" in result.stderr


def test_server_certificate_is_verified_by_default(server):
    result = run_client(server, "settings", cafile=False)
    assert result.returncode == 3
    assert "certificate cannot be verified" in result.stderr and "--cafile" in result.stderr


@pytest.mark.parametrize("arguments, message", [
    (["batch"], "exactly one of --dir DIR"),
    (["batch", "--dir", "/nonexistent"], "/nonexistent is not a directory"),
    (["batch", "--core", "/etc/hostname"], "--core needs --executable"),
    (["status"], "status needs --task ID and --password PASSWORD"),
])
def test_usage_errors_exit_2_with_a_sentence(server, arguments, message):
    result = run_client(server, *arguments)
    assert result.returncode == 2
    assert message in result.stderr


def test_missing_required_file_is_a_local_error(server, crash_dir):
    (crash_dir / "package").unlink()
    result = run_client(server, "batch", "--dir", str(crash_dir))
    assert result.returncode == 2
    assert "'package' must be a regular file in order to use Retrace server" in result.stderr


def readme_curl_block():
    text = README.read_text()
    section = text[text.index("By hand with curl"):]
    return section[section.index("```sh\n") + 6:section.index("\n```", section.index("```sh\n"))]


def test_readme_curl_recipe_retraces_a_crash(server, problem_dir, tmp_path):
    env = {**os.environ, "PROBLEM_DIR": str(problem_dir), "RETRACE_SERVER_URI": server.url}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_curl_block()], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Retrace job finished successfully\n")
    assert "crash_in_library (depth=0" in result.stdout
