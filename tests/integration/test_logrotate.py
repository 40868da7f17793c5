"""The shipped logrotate file, run by the real logrotate against a running server's logs: every log is
rotated, and the live processes (Apache holds its logs open for its whole life) go on writing into the fresh
files."""

import subprocess
import sys
from pathlib import Path

from testkit.helpers import submit, wait_final

CLEANUP = Path(sys.executable).with_name("retrace-server-cleanup")
LOGROTATE = Path(__file__).resolve().parents[2] / "config" / "retrace-server.logrotate"


def logs(server):
    return {path: path.read_bytes() for directory in (server.log_dir, server.cache_dir / "debuginfod")
            if directory.is_dir() for path in directory.rglob("*.log")}


def test_every_log_is_rotated_and_the_running_server_writes_on_into_the_new_files(start_server, problem_dir,
                                                                                 tmp_path):
    server = start_server()
    wait_final(server, *submit(server, problem_dir))
    subprocess.run([str(CLEANUP), "--config", str(server.config_path)], check=True, capture_output=True, timeout=120)
    before = {path: data for path, data in logs(server).items() if data}
    assert {path.name for path in before} >= {"httpd_access.log", "httpd_error.log", "cleanup.log"}
    config = tmp_path / "retrace-server"
    config.write_text(LOGROTATE.read_text().replace("/var/log/retrace-server", str(server.log_dir))
                      .replace("/var/cache/retrace-server-unpacked", str(server.cache_dir)))
    rotated = subprocess.run(["logrotate", "--force", "--state", str(tmp_path / "state"), str(config)],
                             capture_output=True, text=True, timeout=60)
    assert rotated.returncode == 0, rotated.stderr
    for path, data in before.items():
        assert path.with_name(path.name + ".1").read_bytes() == data, f"{path.name} was not rotated"
        assert path.stat().st_size == 0
    task_id, auth = submit(server, problem_dir)
    wait_final(server, task_id, auth)
    access = (server.log_dir / "httpd" / "httpd_access.log").read_bytes()
    assert access and b"\0" not in access, "Apache appends to the truncated file, leaving no hole"
    assert f"/{task_id}".encode() in access
