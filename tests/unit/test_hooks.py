"""Upstream's hooks configuration as an administrator writes it (running them: tests/integration/test_hooks.py)."""

from pathlib import Path

from retrace_server.tasks.hooks import DEFAULT_HOOK_DIR, Hooks


def test_no_configuration_file_means_upstreams_defaults(tmp_path):
    hooks = Hooks.load(tmp_path / "missing.conf")
    assert hooks.hook_dir == DEFAULT_HOOK_DIR and hooks.scripts("start") == []


def test_a_script_section_beats_its_hook_section_which_beats_main(tmp_path):
    (tmp_path / "retrace-server-hooks.conf").write_text("[main]\nHookDir = /srv/hooks\nTimeout = 300\n"
                                                        "[success]\ntimeout = 60\n")
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "success.conf").write_text("[success.10-notify]\ntimeout = 5\ncmdline = {taskid}\n")
    hooks = Hooks.load(tmp_path / "retrace-server-hooks.conf")
    assert hooks.hook_dir == Path("/srv/hooks")
    assert [hooks._setting("timeout", "success", name) for name in ("10-notify", "20-other")] == ["5", "60"]
    assert hooks._setting("timeout", "fail", "10-notify") == "300"
    assert hooks._setting("cmdline", "success", "20-other") is None


def test_only_executable_files_run_in_name_order(tmp_path):
    (tmp_path / "start").mkdir(parents=True)
    for name, mode in (("20-b", 0o755), ("10-a", 0o755), ("30-not-executable", 0o644)):
        (tmp_path / "start" / name).write_text("#!/bin/sh\n")
        (tmp_path / "start" / name).chmod(mode)
    (tmp_path / "start" / "40-directory").mkdir()
    assert [path.name for path in Hooks(tmp_path).scripts("start")] == ["10-a", "20-b"]
