"""The chroot and mock environments' generated commands and files (real runs: tests/integration)."""

import os

import pytest

from retrace.chroot import ChrootError, dnf_argv, fakeroot_argv, manifest_of, root_key
from retrace.sandbox import prepare_mount_points
from retrace.mock import CHROOT_CRASH_DIR, MockEnvironment
from retrace.release import ReleaseId

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
    assert ["--tmpfs", "/spool"] == argv[argv.index("/spool") - 1:argv.index("/spool") + 1]
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


def test_mock_config_enables_the_root_cache_and_binds_repository_and_crash(tmp_path):
    mock = MockEnvironment(tmp_path, "123456789", RELEASE, "/repos/fedora-41-x86_64", ["gdb"])
    config = mock.config_text()
    assert "config_opts['plugin_conf']['root_cache_enable'] = True" in config
    assert "('/repos/fedora-41-x86_64', '/repos/fedora-41-x86_64')" in config
    assert f"('{tmp_path / 'crash'}', '{CHROOT_CRASH_DIR}')" in config
    assert "config_opts['chroot_setup_cmd'] = 'install gdb'" in config
    assert "baseurl=file:///repos/fedora-41-x86_64/" in config
    compile(config.replace("include('/etc/mock/site-defaults.cfg')", ""), "default.cfg", "exec")


def test_mock_steps_run_gdb_as_mockbuild_and_scrub_at_the_end(tmp_path):
    steps = MockEnvironment(tmp_path, "123456789", RELEASE, "/r", ["gdb"]).commands(["crasher-1.0-1.fc41.x86_64"])
    assert [step for step, _ in steps] == ["init", "install", "copyin", "gdb", "scrub"]
    for _, argv in steps:
        assert argv[:7] == ["mock", "--configdir", str(tmp_path), "-r", "default", "--uniqueext", "123456789"]
    assert steps[1][1][-1] == "crasher-1.0-1.fc41.x86_64"
    assert "su mockbuild -c 'sh /var/spool/abrt/gdb.sh'" in steps[3][1][-1]


def test_mock_gdb_script_runs_the_common_batch_on_the_bound_core(tmp_path):
    script = MockEnvironment(tmp_path, "1", RELEASE, "/r", ["gdb"]).gdb_script("/usr/bin/crasher")
    assert script.startswith("#!/bin/sh\nexec gdb -batch -nx")
    assert f"'core-file {CHROOT_CRASH_DIR}/coredump'" in script and "'file /usr/bin/crasher'" in script
    assert "set sysroot" not in script


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
