"""LogTo = syslog: the services' own logs reach a real syslog daemon (rsyslogd, on a socket of its own), each
under its service's tag with facility daemon; no admin log file is written, and task logs stay in their tasks."""

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from testkit.helpers import kill_worker, package_lock_held, submit, wait_final, wait_for_log_line
from tests.integration.test_cleanup import cleanup, crasher, finished_task_idle_for

RSYSLOG_CONF = """\
global(workDirectory="{directory}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{socket}" RateLimit.Interval="0")
template(name="tagged" type="string" string="%syslogfacility-text%.%syslogseverity-text% %syslogtag%%msg%\\n")
*.* action(type="omfile" file="{messages}" template="tagged")
"""


@pytest.fixture
def rsyslog():
    directory = Path(tempfile.mkdtemp(prefix="retrace-test-syslog-", dir="/var/tmp"))
    directory.chmod(0o755)
    daemon = SimpleNamespace(socket=directory / "log", messages=directory / "messages")
    (directory / "rsyslog.conf").write_text(RSYSLOG_CONF.format(directory=directory, **vars(daemon)))
    process = subprocess.Popen(["rsyslogd", "-n", "-f", str(directory / "rsyslog.conf"), "-i",
                                str(directory / "rsyslogd.pid")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not daemon.socket.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.05)
    daemon.socket.chmod(0o666)  # the service user's processes write to it
    yield daemon
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    shutil.rmtree(directory)


def wait_for_syslog(daemon, text, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        said = daemon.messages.read_text(errors="replace") if daemon.messages.exists() else ""
        lines = [line for line in said.splitlines() if text in line]
        if lines:
            return lines
        assert time.monotonic() < deadline, f"{text!r} never reached syslog; it has:\n{said}"
        time.sleep(0.1)


def test_every_service_logs_to_syslog_under_its_own_tag_and_writes_no_log_file(start_server, problem_dir, fixture_rpms,
                                                                               rsyslog):
    server = start_server(LogTo="syslog", SyslogSocket=str(rsyslog.socket))
    started = wait_for_syslog(rsyslog, "retrace-server-dispatcher[")[0]
    assert started.startswith("daemon.info ") and "started: at most" in started

    # The worker's admin log: its job killed mid-retrace, the supervisor says why.
    with package_lock_held(server, crasher(fixture_rpms)):
        task_id, auth = submit(server, problem_dir)
        wait_for_log_line(server, task_id, auth, "Waiting for another task")
        kill_worker(server, task_id, supervisor=False)
        wait_final(server, task_id, auth)
    killed = wait_for_syslog(rsyslog, f"task {task_id}:")[0]
    assert killed.startswith("daemon.err retrace-server-worker[") and "retrace.worker" in killed
    assert server.get(f"/{task_id}/log", headers=auth).status_code == 200, "the task log stays in the task"

    # Cleanup's actions.
    expired, _, _ = finished_task_idle_for(server, problem_dir, 200)
    ran = cleanup(server, LogTo="syslog", SyslogSocket=str(rsyslog.socket))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    [deleted] = wait_for_syslog(rsyslog, f"task {expired}: delete")
    assert deleted.startswith("daemon.info retrace-server-cleanup[")

    # Apache's error log, through logger: its start-up notice.
    [apache] = wait_for_syslog(rsyslog, "resuming normal operations")
    assert apache.startswith("daemon.notice retrace-server-httpd")

    written = {path.name for path in server.log_dir.rglob("*.log") if path.stat().st_size}
    assert not written & {"worker.log", "cleanup.log", "httpd_error.log"}, written


def test_an_unreachable_syslog_socket_is_said_and_cleanup_still_runs(start_server, problem_dir, tmp_path):
    server = start_server()
    expired, _, _ = finished_task_idle_for(server, problem_dir, 200)
    ran = cleanup(server, LogTo="syslog", SyslogSocket=str(tmp_path / "no-such-socket"))
    assert ran.returncode == 0
    assert "LogTo = syslog, but" in ran.stderr and "cannot be reached" in ran.stderr
    assert f"task {expired}: delete" in ran.stdout + ran.stderr
