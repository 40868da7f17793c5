"""Our mirrors served by debuginfod through Apache: a local gdb retraces without uploading its core."""

import os
import pwd
import socket
import subprocess
import time
from pathlib import Path

import pytest

from testkit.debuginfod import free_port
from testkit.server import SERVICE_USER
from tests.integration.test_debuginfod import build_id_of

DEBUGINFOD_PORT = free_port()
DEBUGINFOD_USER = "retrace-debuginfod"


@pytest.fixture(scope="module")
def serving(start_server, problem_dir):
    server = start_server(DebuginfodServe="1", DebuginfodPort=str(DEBUGINFOD_PORT))
    crasher = build_id_of(problem_dir, "/crasher")
    deadline = time.monotonic() + 60
    while server.get(f"/buildid/{crasher}/debuginfo").status_code != 200:
        assert time.monotonic() < deadline, "debuginfod never served the fixture through Apache"
        time.sleep(0.3)
    return server


def test_buildid_files_come_compressed_through_apache(serving, problem_dir, release_dir):
    library = build_id_of(problem_dir, "/libcrash.so.1")
    response = serving.get(f"/buildid/{library}/executable", headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200 and response.headers.get("Content-Encoding") == "gzip"
    assert response.content.startswith(b"\x7fELF")


def test_unknown_build_id_is_404_and_the_api_still_answers(serving):
    assert serving.get("/buildid/" + "0" * 40 + "/debuginfo").status_code == 404
    assert serving.get("/settings").status_code == 200


def listening_ports():
    """Ports with a listening TCP socket in this network namespace (the host's), IPv4 and IPv6."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_debuginfod_listens_on_no_host_interface(serving):
    """debuginfod 0.188 binds every interface it sees; it sees only its own namespace's loopback."""
    assert DEBUGINFOD_PORT not in listening_ports()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", DEBUGINFOD_PORT), timeout=2).close()
    assert serving.get("/debuginfod/metrics").status_code == 200


def test_debuginfod_metrics_are_next_to_ours(serving):
    response = serving.get("/debuginfod/metrics")
    assert response.status_code == 200 and "http_requests_total" in response.text


def test_local_gdb_with_debuginfod_urls_symbolizes_a_core_it_never_uploads(serving, problem_dir, tmp_path):
    """gdb trusts our self-signed certificate only inside a private mount namespace."""
    script = (
        'mount --bind "$1" /etc/ssl/certs/ca-certificates.crt && exec gdb -batch -nx '
        '-ex "set debuginfod enabled on" -ex "core-file $2" -ex "bt full"'
    )
    env = {**os.environ, "DEBUGINFOD_URLS": serving.url, "DEBUGINFOD_CACHE_PATH": str(tmp_path / "cache"),
           "HOME": str(tmp_path)}
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(serving.cert),
         str(problem_dir / "coredump")],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )
    assert "crash_in_library (depth=0" in result.stdout, result.stdout + result.stderr
    assert "libcrash.c:13" in result.stdout and "local_counter = 21" in result.stdout


def debuginfod_pid():
    """The debuginfod process the server's namespace runs (there is one per test server; the newest)."""
    found = subprocess.run(["pgrep", "-n", "-x", "debuginfod"], capture_output=True, text=True, check=True)
    return int(found.stdout.split()[0])


def test_debuginfod_sees_the_repositories_but_not_the_tasks_nor_the_rest_of_the_cache(serving):
    """Reachable from outside through /buildid/, it must not read task passwords or plant files in the cache."""
    root = Path(f"/proc/{debuginfod_pid()}/root")
    assert (root / str(serving.root / "repos").lstrip("/")).is_dir()
    assert not (root / str(serving.save_dir).lstrip("/")).exists()
    cache = root / str(serving.cache_dir).lstrip("/")
    assert sorted(entry.name for entry in cache.iterdir()) == ["debuginfod"]
    planted = serving.root / "repos" / "planted"
    probe = subprocess.run(["nsenter", "-t", str(debuginfod_pid()), "-m", "touch", str(planted)],
                           capture_output=True, text=True)
    assert "Read-only file system" in probe.stderr and not planted.exists()


def test_the_launcher_opens_no_log_as_root_where_the_service_user_can_plant_links(serving):
    """LogDir belongs to the service user: Apache (root) logs in a root-owned directory inside it,
    and debuginfod's log is opened by debuginfod's own (unprivileged) process in its own directory."""
    apache_logs = os.lstat(serving.log_dir / "httpd")
    assert apache_logs.st_uid == 0 and not apache_logs.st_mode & 0o022
    log = serving.cache_dir / "debuginfod" / "debuginfod.log"
    assert log.stat().st_uid == pwd.getpwnam(DEBUGINFOD_USER).pw_uid


def test_debuginfod_runs_as_a_user_of_its_own_not_as_the_owner_of_the_tasks(serving):
    uid_line = next(line for line in Path(f"/proc/{debuginfod_pid()}/status").read_text().splitlines()
                    if line.startswith("Uid:"))
    real_uid = int(uid_line.split()[1])
    assert real_uid == pwd.getpwnam(DEBUGINFOD_USER).pw_uid != pwd.getpwnam(SERVICE_USER).pw_uid
