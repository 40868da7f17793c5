"""Restarting a task with what a support engineer knows (``retrace-server-worker TASK --restart --kernelver
VER --arch ARCH --release NAME``): the kernel a damaged dump misnames, the release a core's crash data
misnames; and what is refused before the task is touched.  Real dumps, the real worker and crash."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.helpers import add_debian_repository, outcome, retrace, submit, text, wait_final
from testkit.vmcore import MARKER, kernel_debs, vmcore_upload
from tests.integration.test_vmcore import neighbouring_build

WORKER = Path(sys.executable).with_name("retrace-server-worker")


def restart(server, task_id, *overrides):
    return subprocess.run([WORKER, "--config", server.config_path, task_id, "--restart", "--foreground",
                           *overrides], capture_output=True, text=True, timeout=300)


def misnamed(release):
    """A kernel release of the same length and flavour that no repository has: 6.1.0-26-cloud-amd64 ->
    9.9.9-99-cloud-amd64."""
    version, flavour = release.rsplit("-", 1)
    return f"{re.sub('[0-9]', '9', version)}-{flavour}"


@pytest.fixture(scope="module")
def misnamed_dump(vmcores, work_dir):
    """The kdump-compressed dump with every copy of its kernel release (VMCOREINFO's OSRELEASE and the
    header's utsname) overwritten, as a damaged customer dump says a kernel that is not the one that ran;
    its BUILD-ID is intact."""
    data = vmcores.kdump.read_bytes()
    assert vmcores.release.encode() in data
    damaged = work_dir / "misnamed" / "vmcore"
    damaged.parent.mkdir()
    damaged.write_bytes(data.replace(vmcores.release.encode(), misnamed(vmcores.release).encode()))
    return vmcore_upload(damaged, work_dir / "misnamed-upload")


@pytest.fixture
def failed_vmcore_task(start_server, misnamed_dump, vmcores):
    # A cold kernel cache: a cached vmlinux is found by the dump's build-id whatever release the dump names.
    server = start_server(repository=False)
    add_debian_repository(server, kernel_debs().dbg)
    task, status = retrace(server, misnamed_dump)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert f"no vmlinux for kernel {misnamed(vmcores.release)}" in outcome(status)
    return server, task


def test_kernelver_rescues_a_dump_whose_vmcoreinfo_names_another_kernel(failed_vmcore_task, vmcores):
    server, task = failed_vmcore_task
    ran = restart(server, task[0], "--kernelver", vmcores.release)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    status = wait_final(server, *task)
    log = text(server, task, "log")
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert f"Forced by an administrator: kernel {vmcores.release}" in log
    assert f"The dump's VMCOREINFO says kernel {misnamed(vmcores.release)}; using {vmcores.release} as forced" in log
    assert "(from --kernelver, build-id from the dump's VMCOREINFO)" in log
    assert MARKER in text(server, task, "backtrace")
    assert "sysrq_handle_crash" in text(server, task, "results/bt")


def test_a_forced_kernel_whose_vmlinux_is_another_build_is_still_refused(start_server, misnamed_dump, vmcores,
                                                                       work_dir):
    other = "6.1.0-1-cloud-amd64"
    server = start_server(repository=False)
    add_debian_repository(server, neighbouring_build(work_dir / "neighbour-forced", other))
    task, _ = retrace(server, misnamed_dump)
    ran = restart(server, task[0], "--kernelver", other)
    assert ran.returncode == 1
    status = wait_final(server, *task)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert f"is another build of {other}" in outcome(status) and "crash would show a wrong backtrace" in outcome(status)


@pytest.mark.parametrize("overrides, sentence", [
    (["--kernelver", "../../../etc/passwd"], "--kernelver '../../../etc/passwd' is not a kernel release string"),
    (["--kernelver=--minimal"], "--kernelver '--minimal' is not a kernel release string"),
    (["--kernelver", "6.1.0-26-amd64 -i /tmp/commands"], "is not a kernel release string (what uname -r prints"),
    (["--kernelver", "6.1.0-26-arm64", "--arch", "aarch64"],
     "--arch 'aarch64': this server does not retrace vmcores of that architecture; it serves x86_64"),
    (["--release", "fedora-41-x86_64"], "--release is for coredump tasks"),
])
def test_bad_overrides_are_refused_and_the_task_is_left_as_it_was(failed_vmcore_task, overrides, sentence):
    server, task = failed_vmcore_task
    log = text(server, task, "log")
    ran = restart(server, task[0], *overrides)
    assert ran.returncode == 2 and sentence in ran.stderr, ran.stderr
    assert wait_final(server, *task).headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert text(server, task, "log") == log
    assert not (server.save_dir / task[0] / "overrides.json").exists()


def test_release_rescues_a_core_whose_crash_data_names_a_release_not_served(start_server, problem_dir, work_dir):
    server = start_server(AllowInteractive="1")
    misnamed_dir = work_dir / "problem-misnamed-release"
    shutil.copytree(problem_dir, misnamed_dir)
    (misnamed_dir / "os_release").write_text("Fedora release 39 (Thirty Nine)\n")
    task_id, auth = submit(server, misnamed_dir, **{"X-Task-Type": "3"})
    status = wait_final(server, task_id, auth)
    assert "release fedora-39-x86_64 (from os_release 'Fedora release 39 (Thirty Nine)') is not supported" in (
        outcome(status))
    refused = restart(server, task_id, "--release", "fedora-39-x86_64")
    assert refused.returncode == 2 and "--release fedora-39-x86_64 is not served here; this server serves " \
        "fedora-41-x86_64" in refused.stderr
    ran = restart(server, task_id, "--release", "fedora-41-x86_64")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    status = wait_final(server, task_id, auth)
    log = server.get(f"/{task_id}/log", headers=auth).text
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert "Release fedora-41-x86_64 (forced with --release)" in log
    assert "crash_in_library" in server.get(f"/{task_id}/backtrace", headers=auth).text
    again = restart(server, task_id)
    assert again.returncode == 1, "a restart that names no override forgets the forced release"
    assert "fedora-39-x86_64" in outcome(wait_final(server, task_id, auth))


def test_package_rescues_a_core_whose_crash_data_names_another_build(start_server, problem_dir, work_dir):
    """No release line: the release comes from the package's dist tag, which the crash data got wrong."""
    server = start_server(AllowInteractive="1")
    misnamed_dir = work_dir / "problem-misnamed-package"
    shutil.copytree(problem_dir, misnamed_dir)
    (misnamed_dir / "os_release").unlink()
    (misnamed_dir / "package").write_text("crasher-1.0-1.fc39")
    task_id, auth = submit(server, misnamed_dir, ("coredump", "executable", "package"), **{"X-Task-Type": "3"})
    assert "from the dist tag of crasher-1.0-1.fc39" in outcome(wait_final(server, task_id, auth))
    refused = restart(server, task_id, "--package", "crasher; rm -rf /")
    assert refused.returncode == 2 and "--package 'crasher; rm -rf /' is not a package name-version-release" \
        in refused.stderr
    ran = restart(server, task_id, "--package", "crasher-1.0-1.fc41")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    log = server.get(f"/{task_id}/log", headers=auth).text
    assert "Forced by an administrator: package crasher-1.0-1.fc41" in log
    assert "Release fedora-41-x86_64 (from the dist tag of crasher-1.0-1.fc41)" in log
    assert "crash_in_library" in server.get(f"/{task_id}/backtrace", headers=auth).text
