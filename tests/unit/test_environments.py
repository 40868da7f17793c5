"""The chroot and mock environments' generated commands and files (real runs: tests/integration)."""

import json
import os
import subprocess
import sys

import pytest

from retrace_server.analysis.gdb import exploitable_marker, gdb_argv
from retrace_server.config import Config
from retrace_server.environments.chroot import (
    ChrootError,
    dnf_argv,
    fakeroot_argv,
    manifest_of,
    prepare_mount_points,
    root_key,
)
from retrace_server.environments.mock import CHROOT_CRASH_DIR, MockError, MockRoot, _run_step, find_mock
from retrace_server.environments.sysroot import assemble_sysroot
from retrace_server.packaging.cache import CachedPackage
from retrace_server.packaging.release import ReleaseId

RELEASE = ReleaseId("fedora", "41", "x86_64")


def test_dnf_installs_only_from_the_release_repository_without_weak_deps(tmp_path):
    argv = dnf_argv(tmp_path / "root", tmp_path / "cache", "/repos/fedora-41-x86_64", "41", ["gdb"])
    assert argv[:5] == ["dnf", "--installroot", str(tmp_path / "root"), "--releasever", "41"]
    assert "--setopt=reposdir=/dev/null" in argv and "--setopt=install_weak_deps=False" in argv
    assert argv[argv.index("--repofrompath") + 1] == "retrace,file:///repos/fedora-41-x86_64"
    assert argv[-2:] == ["install", "gdb"]


def test_fakeroot_binds_writable_paths_last_and_hides_the_spool():
    argv = fakeroot_argv(["dnf"], writable=["/cache/roots/tmp"], hidden=["/spool"])
    assert argv[argv.index("--uid") + 1] == "0" and "--unshare-net" in argv
    assert argv.index("--tmpfs") < argv.index("--bind"), "no tmpfs may cover the root being built"
    assert argv[argv.index("/spool") - 1:argv.index("/spool") + 1] == ["--tmpfs", "/spool"]
    assert argv[-2:] == ["--", "dnf"]


def test_manifest_records_directory_symlinks_as_links(tmp_path):
    (tmp_path / "usr" / "lib64").mkdir(parents=True)
    (tmp_path / "usr" / "lib64" / "libz.so.1").write_text("z")
    os.symlink("usr/lib64", tmp_path / "lib64")
    entries = sorted(manifest_of(tmp_path))
    assert ("lib64", "l", "usr/lib64", "") in entries and ("usr/lib64/libz.so.1", "f", "", "") in entries


def test_mount_points_are_made_inside_the_root(tmp_path):
    core = tmp_path / "task" / "coredump"
    core.parent.mkdir()
    core.write_text("core")
    prepare_mount_points(tmp_path / "root", [tmp_path / "task", core])
    assert (tmp_path / "root" / "proc").is_dir() and (tmp_path / "root" / "tmp").is_dir()
    assert (tmp_path / "root" / str(core).lstrip("/")).is_file()


def test_mount_points_in_a_folded_tree_are_real_directories_and_the_gdb_root_stays_as_installed(tmp_path):
    """bubblewrap would follow a folded directory's link out of the root; a directory made through it would
    land in the cached gdb root."""
    gdb_root = tmp_path / "roots" / "fedora" / "root"
    for directory in ("proc", "tmp", "var/cache/dnf", "usr/bin"):
        (gdb_root / directory).mkdir(parents=True)
    (gdb_root / "usr/bin/gdb").write_text("gdb")
    (gdb_root.parent / "manifest.json").write_text(json.dumps(manifest_of(gdb_root)))
    before = sorted(gdb_root.rglob("*"))
    root = tmp_path / "tree"
    assemble_sysroot(root, [CachedPackage(gdb_root.parent, False, 0, False)])
    assert (root / "var").is_symlink() and (root / "proc").is_symlink()
    core = tmp_path / "task" / "coredump"
    core.parent.mkdir()
    core.write_text("core")
    prepare_mount_points(root, [tmp_path / "cache", core])
    assert not (root / "proc").is_symlink() and (root / "proc").is_dir()
    assert not (root / str(tmp_path).lstrip("/")).is_symlink() and (root / str(core).lstrip("/")).is_file()
    assert sorted(gdb_root.rglob("*")) == before
    assert (root / "usr/bin/gdb").read_text() == "gdb"


def _mock(tmp_path, **settings):
    config = Config(CacheDir=tmp_path / "cache", **settings)
    return MockRoot(config, tmp_path / "task", "123456789", RELEASE, "/repos/fedora-41-x86_64")


def test_mock_config_enables_the_root_cache_and_installs_from_the_release_repository(tmp_path):
    config = _mock(tmp_path).config_text()
    assert "config_opts['plugin_conf']['root_cache_enable'] = True" in config
    assert "config_opts['chroot_setup_cmd'] = 'install gdb'" in config
    assert "baseurl=file:///repos/fedora-41-x86_64/" in config and "gpgcheck=0" in config
    assert "config_opts['isolation'] = 'auto'" in config and "config_opts['use_bootstrap_image'] = True" in config
    assert "config_opts['bootstrap_image'] = 'registry.fedoraproject.org/fedora:41'" in config
    compile(config, "fedora-41-x86_64.cfg", "exec")


def test_mock_isolation_and_bootstrap_follow_the_config_keys(tmp_path):
    config = _mock(tmp_path, MockIsolation="simple", MockBootstrap="off").config_text()
    assert "config_opts['isolation'] = 'simple'" in config and "config_opts['use_bootstrap'] = False" in config
    assert "bootstrap_image" not in config.replace("use_bootstrap_image", "")


def test_mock_config_holds_nothing_of_a_task_so_the_root_cache_outlives_tasks(tmp_path):
    first = _mock(tmp_path)
    assert first.write_config() is True
    written = first.config_path.stat().st_mtime_ns
    second = MockRoot(first.config, tmp_path / "other-task", "987654321", RELEASE, "/repos/fedora-41-x86_64")
    assert second.write_config() is False and second.config_path.stat().st_mtime_ns == written
    assert "123456789" not in first.config_path.read_text() and "task" not in first.config_path.read_text()


def test_mock_config_is_rewritten_when_a_setting_changes(tmp_path):
    _mock(tmp_path).write_config()
    changed = _mock(tmp_path, ChrootPackages="gdb python3")
    assert changed.write_config() is True and "'install gdb python3'" in changed.config_path.read_text()


def test_mock_roots_of_two_servers_on_one_host_do_not_share_a_cache(tmp_path):
    assert _mock(tmp_path / "a").root_name != _mock(tmp_path / "b").root_name
    assert _mock(tmp_path).root_name.startswith("retrace-fedora-41-x86_64-")


def test_mock_runs_gdb_in_argv_form_as_the_unprivileged_user_and_scrubs_at_the_end(tmp_path):
    mock = _mock(tmp_path)
    argv = gdb_argv("/", "/usr/bin/crasher", f"{CHROOT_CRASH_DIR}/coredump", exploitable_marker())
    steps = mock.commands("/usr/bin/mock", ["crasher-1.0-1.fc41.x86_64"], argv)
    assert [step for step, _ in steps] == ["init", "install", "gdb", "scrub"]
    for _, argv in steps:
        assert argv[:5] == ["/usr/bin/mock", "-r", str(mock.config_path), "--uniqueext", "123456789"]
        binds = argv[argv.index("--plugin-option") + 1]
        assert binds == f"bind_mount:dirs=[('{tmp_path / 'task' / 'crash'}', '{CHROOT_CRASH_DIR}')]"
    assert steps[1][1][-1] == "crasher-1.0-1.fc41.x86_64"
    gdb = steps[2][1]
    assert gdb[gdb.index("--chroot"):gdb.index("--") + 4] == ["--chroot", "--unpriv", "--", "gdb", "-batch", "-nx"]
    assert f"core-file {CHROOT_CRASH_DIR}/coredump" in gdb and "file /usr/bin/crasher" in gdb


def test_mock_is_found_in_usr_local_even_from_a_minimal_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    monkeypatch.setattr("retrace_server.environments.mock.SEARCH_PATH", str(tmp_path))
    (tmp_path / "mock").write_text("#!/bin/sh\n")
    (tmp_path / "mock").chmod(0o755)
    assert find_mock("mock") == str(tmp_path / "mock")


def test_mock_chroot_paths_read_as_inside_the_chroot(tmp_path):
    mock = _mock(tmp_path)
    said = f"dnf --installroot /var/lib/mock/{mock.root_name}-123456789/root/ install gdb"
    assert mock.hide_chroot(said) == "dnf --installroot / install gdb"


def _fake_mock(tmp_path, script):
    """A stand-in for mock: ``script`` in sh."""
    program = tmp_path / "fake-mock"
    program.write_text("#!/bin/sh\n" + script)
    program.chmod(0o755)
    (tmp_path / "result").mkdir(exist_ok=True)
    return [str(program)]


def test_a_failing_mock_step_quotes_both_streams_without_its_progress_lines(tmp_path):
    command = _fake_mock(tmp_path, "echo 'Start: chroot init'; echo 'chmod: command not found'\n"
                                   "echo 'INFO: Finish: run' >&2; echo 'ERROR: Command failed' >&2; exit 127\n")
    with pytest.raises(MockError) as failure:
        _run_step("gdb", command, 10, 1 << 20, tmp_path / "result" / "root.log")
    assert str(failure.value) == ("mock's gdb step failed (exit status 127): chmod: command not found | "
                                  "ERROR: Command failed")


ROOT_LOG = """DEBUG util.py:557:  Executing command: ['/usr/bin/dnf-3', 'install', 'gdb'] with env {}
DEBUG util.py:460:  Error: nothing of the first command
DEBUG util.py:609:  Child return code was: 1
DEBUG util.py:557:  Executing command: ['/usr/bin/dnf-3', 'install', 'crasher'] with env {}
DEBUG util.py:462:  Last metadata expiration check: 0:00:10 ago on Sat Nov 28 08:58:15 2026.
DEBUG util.py:460:  Error:
DEBUG util.py:460:   Problem: conflicting requests
DEBUG util.py:460:    - nothing provides libcrash.so.1()(64bit) needed by crasher-1.0-1.fc41.x86_64
DEBUG util.py:609:  Child return code was: 1
DEBUG util.py:184:  kill orphans in chroot /var/lib/mock/x/root
DEBUG util.py:557:  Executing command: ['/bin/umount', '-n', '-l', '/var/lib/mock/x/root/proc'] with env {}
DEBUG util.py:609:  Child return code was: 0
"""


def test_a_failing_mock_step_quotes_the_failed_command_from_mocks_root_log(tmp_path):
    command = _fake_mock(tmp_path, "echo 'ERROR: Command failed:' >&2; exit 30\n")
    (tmp_path / "result" / "root.log").write_text(ROOT_LOG)
    with pytest.raises(MockError) as failure:
        _run_step("install", command, 10, 1 << 20, tmp_path / "result" / "root.log")
    assert str(failure.value) == (
        "mock's install step failed (exit status 30): Error: | Problem: conflicting requests | - nothing provides "
        "libcrash.so.1()(64bit) needed by crasher-1.0-1.fc41.x86_64 | ERROR: Command failed:")


def test_a_mock_step_past_its_time_is_terminated(tmp_path):
    command = _fake_mock(tmp_path, "trap 'exit 143' TERM; while :; do sleep 0.05; done\n")
    with pytest.raises(MockError, match="mock's init step did not finish within 0.3 s"):
        _run_step("init", command, 0.3, 1 << 20, tmp_path / "result" / "root.log")


def test_a_mock_step_printing_without_end_is_stopped(tmp_path):
    command = _fake_mock(tmp_path, "trap 'exit 143' TERM; yes crash\n")
    with pytest.raises(MockError, match="mock's gdb step printed more than 1 MiB and was stopped"):
        _run_step("gdb", command, 30, 1 << 20, tmp_path / "result" / "root.log")


class _Index:
    def __init__(self, *packages):
        self.packages = [type("Package", (), {"name": name, "pkgid": pkgid}) for name, pkgid in packages]
        self.release_dir = type("Dir", (), {"name": "fedora-41-x86_64"})

    def all_packages(self):
        return self.packages


def test_gdb_root_key_changes_only_when_the_repository_s_gdb_does():
    before = root_key(_Index(("gdb", "a1"), ("bash", "b1")), ["gdb"])
    assert root_key(_Index(("gdb", "a1"), ("bash", "b2")), ["gdb"]) == before
    assert root_key(_Index(("gdb", "a1"), ("gdb", "a2")), ["gdb"]) != before
    with pytest.raises(ChrootError, match="has no gdb to build the gdb root from"):
        root_key(_Index(("bash", "b1")), ["gdb"])


def test_no_new_privileges_is_read_from_the_process_status():
    """A hardened unit (NoNewPrivileges=yes) stops mock's setuid helper: the worker says so before mock runs."""
    script = "from retrace_server.environments.mock import no_new_privileges; print(no_new_privileges())"
    plain = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    locked = subprocess.run(["setpriv", "--no-new-privs", sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert (plain.stdout, locked.stdout) == ("False\n", "True\n")
