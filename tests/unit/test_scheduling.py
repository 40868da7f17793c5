"""The shipped cron file and systemd units run the right commands, as the service user, on schedule."""

import configparser
import re
import subprocess
from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[2] / "config"


def cron_jobs():
    """``{program: [minute, hour, day, month, weekday, user, command]}``; the program is what runs after the
    timer check (``systemctl -q is-enabled TIMER || PROGRAM ...``)."""
    lines = [line.split(None, 6) for line in (CONFIG / "retrace-server.cron").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {re.search(r"\|\| (\S+)", fields[6])[1].rsplit("/", 1)[1]: fields for fields in lines}


def test_cron_runs_cleanup_hourly_and_reposync_all_every_six_hours_as_retrace():
    jobs = cron_jobs()
    assert jobs["retrace-server-cleanup"][:6] == ["0", "*", "*", "*", "*", "retrace"]
    assert jobs["retrace-server-reposync"][:6] == ["30", "*/6", "*", "*", "*", "retrace"]
    assert "--all" in jobs["retrace-server-reposync"][6]


@pytest.mark.parametrize("enabled", [True, False])
def test_a_cron_job_runs_only_while_its_systemd_timer_is_not_enabled(tmp_path, enabled):
    """An admin who enables the timers keeps the packaged cron file: the jobs must not run twice."""
    stub = tmp_path / "bin" / "systemctl"
    stub.parent.mkdir()
    stub.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'asked'}\nexit {0 if enabled else 1}\n")
    stub.chmod(0o755)
    for program, fields in cron_jobs().items():
        command = fields[6].replace(f"/usr/bin/{program}", f"touch {tmp_path / program}; true").split(" >>")[0]
        subprocess.run(["sh", "-c", command], env={"PATH": f"{stub.parent}:/usr/bin:/bin"}, check=True)
        assert (tmp_path / program).exists() is not enabled
    asked = (tmp_path / "asked").read_text().splitlines()
    assert asked == ["-q is-enabled retrace-server-cleanup.timer", "-q is-enabled retrace-server-reposync.timer"]


def unit(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(CONFIG / "systemd" / name)
    return parser


def test_systemd_timers_start_their_services_on_the_same_schedule():
    assert unit("retrace-server-cleanup.timer")["Timer"]["OnCalendar"] == "hourly"
    assert unit("retrace-server-reposync.timer")["Timer"]["OnCalendar"] == "00/6:30"
    for name in ("cleanup", "reposync"):
        service = unit(f"retrace-server-{name}.service")["Service"]
        assert service["User"] == "retrace" and service["Type"] == "oneshot"
        assert service["ExecStart"].startswith(f"/usr/bin/retrace-server-{name}")
