"""What an administrator may force on a task's next run, and what is refused before anything runs."""

import pytest

from retrace_server.arch import HOST_ARCH
from retrace_server.config import Config
from retrace_server.intake.overrides import InvalidOverride, Overrides
from retrace_server.tasks.task import Task, TaskType


@pytest.fixture
def config(tmp_path):
    (tmp_path / "repos" / "fedora-41-x86_64" / "repodata").mkdir(parents=True)
    return Config(RepoDir=tmp_path / "repos", CacheDir=tmp_path / "cache", RetraceArchitectures=HOST_ARCH)


def test_a_kernel_release_and_the_host_architecture_pass_for_a_vmcore(config):
    forced = Overrides(kernelver="6.1.0-26-amd64", arch="x86_64").checked(TaskType.VMCORE, config)
    assert forced == Overrides("6.1.0-26-amd64", "x86_64")
    assert forced.describe() == "kernel 6.1.0-26-amd64, architecture x86_64"


@pytest.mark.parametrize("kernelver", ["../../etc/passwd", "--minimal", "6.1.0 -i /tmp/x", "6.1.0;mod",
                                       "amd64", "6." + "1" * 70, "6.1.0\n"])
def test_a_kernelver_that_is_not_a_kernel_release_string_is_refused(config, kernelver):
    with pytest.raises(InvalidOverride, match="is not a kernel release string"):
        Overrides(kernelver=kernelver).checked(TaskType.VMCORE_INTERACTIVE, config)


def test_an_architecture_the_server_does_not_serve_is_refused_naming_what_it_serves(config):
    with pytest.raises(InvalidOverride, match=f"does not retrace vmcores of that architecture; it serves {HOST_ARCH}"):
        Overrides(kernelver="6.1.0-26-arm64", arch="aarch64").checked(TaskType.VMCORE, config)
    with pytest.raises(InvalidOverride, match="does not retrace coredumps of that architecture"):
        Overrides(arch="sparc64").checked(TaskType.COREDUMP, config)


def test_a_32_bit_x86_name_is_made_canonical(config):
    config = Config(RepoDir=config.RepoDir, CacheDir=config.CacheDir, RetraceArchitectures="i386")
    assert Overrides(arch="i686").checked(TaskType.COREDUMP, config).arch == "i386"


def test_a_release_must_be_a_release_name_this_server_serves(config):
    assert Overrides(release="fedora-41-x86_64").checked(TaskType.COREDUMP, config).release == "fedora-41-x86_64"
    with pytest.raises(InvalidOverride, match="is not served here; this server serves fedora-41-x86_64"):
        Overrides(release="fedora-40-x86_64").checked(TaskType.COREDUMP, config)
    with pytest.raises(InvalidOverride, match="is not a release name like fedora-41-x86_64"):
        Overrides(release="../fedora-41-x86_64").checked(TaskType.COREDUMP, config)


def test_each_override_belongs_to_its_kind_of_task(config):
    with pytest.raises(InvalidOverride, match="--kernelver is for vmcore tasks"):
        Overrides(kernelver="6.1.0-26-amd64").checked(TaskType.COREDUMP_INTERACTIVE, config)
    with pytest.raises(InvalidOverride, match="--release is for coredump tasks"):
        Overrides(release="fedora-41-x86_64").checked(TaskType.VMCORE, config)


def test_overrides_are_kept_with_the_task_and_cleared_by_a_restart_without_them(tmp_path):
    task = Task(tmp_path)
    assert not Overrides.load(task)
    Overrides(kernelver="6.1.0-26-amd64").save(task)
    assert Overrides.load(task) == Overrides(kernelver="6.1.0-26-amd64")
    Overrides().save(task)
    assert not (tmp_path / "overrides.json").exists() and not Overrides.load(task)


def test_an_unreadable_overrides_file_forces_nothing(tmp_path):
    (tmp_path / "overrides.json").write_text('["not", "an object"]')
    assert Overrides.load(Task(tmp_path)) == Overrides()


def test_a_package_must_be_a_name_version_release_as_the_crash_data_s_own():
    assert Overrides(package="crasher-1.0-1.fc41").checked(TaskType.COREDUMP, None).package == "crasher-1.0-1.fc41"
    for hostile in ("crasher", "../../x-1-1", "crasher-1.0-1.fc41; rm", "x" * 130 + "-1-1"):
        with pytest.raises(InvalidOverride, match="is not a package name-version-release such as"):
            Overrides(package=hostile).checked(TaskType.COREDUMP, None)
    with pytest.raises(InvalidOverride, match="--package is for coredump tasks"):
        Overrides(package="kernel-6.1-1").checked(TaskType.VMCORE, None)
