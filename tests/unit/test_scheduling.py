"""The shipped cron file and systemd units run the right commands, as the service user, on schedule."""

import configparser
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[2] / "config"


def cron_jobs():
    lines = [line.split(None, 6) for line in (CONFIG / "retrace-server.cron").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {fields[6].split()[0].rsplit("/", 1)[1]: fields for fields in lines}


def test_cron_runs_cleanup_hourly_and_reposync_all_every_six_hours_as_retrace():
    jobs = cron_jobs()
    assert jobs["retrace-server-cleanup"][:6] == ["0", "*", "*", "*", "*", "retrace"]
    assert jobs["retrace-server-reposync"][:6] == ["30", "*/6", "*", "*", "*", "retrace"]
    assert "--all" in jobs["retrace-server-reposync"][6]


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
