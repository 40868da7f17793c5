"""RetraceEnvironment = chroot (the release's own gdb) and mock, against the sysroot environment."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from retrace_server.environments.mock import find_mock
from retrace_server.environments.mock import root_name as mock_root_name
from testkit.distro import publish_release
from testkit.helpers import crashing_thread, outcome, submit, wait_final
from testkit.server import SERVICE_USER


def retraced(server, problem_dir, **headers):
    task_id, auth = submit(server, problem_dir, **headers)
    status = wait_final(server, task_id, auth)
    log = server.get(f"/{task_id}/log", headers=auth).text
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    return server.get(f"/{task_id}/backtrace", headers=auth).text, log, task_id


# What this host allows: no systemd-nspawn, no container images.
MOCK_WITHOUT_CONTAINERS = {"MockIsolation": "simple", "MockBootstrap": "off"}


@pytest.fixture(scope="module")
def chroot_server(start_server, chroot_release_dir):
    return start_server(repository=chroot_release_dir, RetraceEnvironment="chroot")


def test_chroot_gives_the_same_frames_files_and_locals_as_sysroot(start_server, chroot_release_dir, chroot_server,
                                                                  problem_dir):
    sysroot_server = start_server(repository=chroot_release_dir)
    in_sysroot, _, _ = retraced(sysroot_server, problem_dir)
    in_chroot, log, _ = retraced(chroot_server, problem_dir)
    assert "crash_in_library (depth=0" in in_chroot and "libcrash.c:13" in in_chroot
    assert crashing_thread(in_chroot) == crashing_thread(in_sysroot)
    assert "Assembled the chroot" in log


def test_gdb_root_is_built_once_and_reused_by_the_next_task(chroot_server, problem_dir):
    logs = [retraced(chroot_server, problem_dir)[1] for _ in range(2)]
    built = [log for log in logs if "Built the gdb root of fedora-41-x86_64 (gdb) with dnf" in log]
    assert len(built) <= 1 and all("Reused the gdb root of fedora-41-x86_64" in log for log in logs[1:])
    roots = list((chroot_server.cache_dir / "roots").glob("fedora-41-x86_64-*"))
    assert len(roots) == 1 and (roots[0] / "root" / "usr" / "bin" / "gdb").is_file()


def test_chroot_gdb_is_the_releases_own(chroot_server, problem_dir):
    _, log, task_id = retraced(chroot_server, problem_dir, **{"X-Task-Type": "1"})
    root = chroot_server.save_dir / task_id / "sysroot"
    gdb = root / "usr" / "bin" / "gdb"
    assert gdb.is_symlink() and "/roots/fedora-41-x86_64-" in str(gdb.resolve()), "debug tasks keep their root"


def test_task_root_is_torn_down_after_a_normal_task(chroot_server, problem_dir):
    _, _, task_id = retraced(chroot_server, problem_dir)
    assert not (chroot_server.save_dir / task_id / "sysroot").exists()


needs_mock = pytest.mark.skipif(find_mock("mock") is None,
                                reason="mock is not installed here (Debian has none: see docs/mock.md to run it)")


def start_mock_server(start_server, request, repository):
    """A mock server whose root cache (host-wide, under /var/cache/mock) is removed after the test's scope."""
    server = start_server(repository=repository, RetraceEnvironment="mock", **MOCK_WITHOUT_CONTAINERS)
    name = mock_root_name(server.cache_dir, "fedora-41-x86_64")
    request.addfinalizer(lambda: [shutil.rmtree(path, ignore_errors=True)
                                  for path in Path("/var/cache/mock").glob(f"{name}*")])
    return server


@pytest.fixture(scope="module")
def mock_server(start_server, request, chroot_release_dir):
    return start_mock_server(start_server, request, chroot_release_dir)


@needs_mock
def test_mock_gives_the_same_frames_files_and_locals_as_sysroot(start_server, chroot_release_dir, mock_server,
                                                                problem_dir):
    in_sysroot, _, _ = retraced(start_server(repository=chroot_release_dir), problem_dir)
    in_mock, log, _ = retraced(mock_server, problem_dir)
    assert "crash_in_library (depth=0" in in_mock and "libcrash.c:13" in in_mock
    assert crashing_thread(in_mock) == crashing_thread(in_sysroot)
    assert re.search(r"\] mock install: \d+\.\d s$", log, re.M), "the crash's packages are installed by mock's dnf"


@needs_mock
def test_mock_unpacks_the_root_cache_for_the_next_task_of_the_release(mock_server, problem_dir):
    config = mock_server.cache_dir / "mock" / "fedora-41-x86_64.cfg"
    logs = [retraced(mock_server, problem_dir)[1]]
    written = config.stat().st_mtime_ns
    logs.append(retraced(mock_server, problem_dir)[1])
    assert re.search(r"\] mock init \(from the root cache\): \d+\.\d s$", logs[1], re.M), logs[1]
    assert "Wrote the mock configuration" not in logs[1] and config.stat().st_mtime_ns == written


@needs_mock
def test_mock_failing_to_install_gdb_names_what_dnf_could_not_find(start_server, request, release_dir, problem_dir):
    """A release without gdb (the crash packages only): mock's init fails in dnf."""
    server = start_mock_server(start_server, request, release_dir)
    task_id, auth = submit(server, problem_dir)
    status = wait_final(server, task_id, auth)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert "mock's init step failed (exit status" in outcome(status)
    assert "No match for argument: gdb" in outcome(status), outcome(status)
    assert "--installroot / " in outcome(status) and "/var/lib/mock" not in outcome(status), "no server path in the answer"


@needs_mock
def test_mock_failing_to_install_a_crash_package_names_the_missing_dependency(
        start_server, request, work_dir, fixture_rpms, userland_rpms, problem_dir):
    """The release lacks libcrash: the worker asks mock for crasher, whose dependency dnf cannot find."""
    without_libcrash = [rpm for rpm in fixture_rpms if not rpm.name.startswith("libcrash")]
    repository = publish_release(work_dir / "repos-without-libcrash", "fedora-41-x86_64",
                                 [*without_libcrash, *userland_rpms])
    server = start_mock_server(start_server, request, repository)
    task_id, auth = submit(server, problem_dir)
    status = wait_final(server, task_id, auth)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert "mock's install step failed (exit status" in outcome(status)
    assert "nothing provides libcrash.so" in outcome(status) and "needed by crasher-1.0-1.fc41" in outcome(status), \
        outcome(status)


@needs_mock
def test_mock_refused_to_a_service_user_outside_the_mock_group(mock_server, problem_dir):
    subprocess.run(["gpasswd", "-d", SERVICE_USER, "mock"], check=True, capture_output=True)
    try:
        task_id, auth = submit(mock_server, problem_dir)
        status = wait_final(mock_server, task_id, auth)
    finally:
        subprocess.run(["gpasswd", "-a", SERVICE_USER, "mock"], check=True, capture_output=True)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert (f"RetraceEnvironment = mock, but the service user {SERVICE_USER} is not in the mock group; "
            "mock refuses to run for it") in outcome(status)


def test_mock_environment_without_mock_fails_saying_so(start_server, chroot_release_dir, problem_dir):
    server = start_server(repository=chroot_release_dir, RetraceEnvironment="mock", MockPath="/opt/no-such/mock")
    task_id, auth = submit(server, problem_dir)
    status = wait_final(server, task_id, auth)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert "RetraceEnvironment = mock, but mock (/opt/no-such/mock) is not installed on this server" in outcome(status)


@pytest.mark.parametrize("environment", ["chroot", "mock"])
def test_an_environment_that_installs_gdb_from_a_mirror_says_a_debuginfod_only_release_has_none(
        start_server, problem_dir, environment):
    """Before: an AttributeError, which the user saw as an internal error."""
    server = start_server(repository=False, RetraceEnvironment=environment,
                          DebuginfodURLs="http://127.0.0.1:9", DebuginfodReleases="fedora-41-x86_64")
    task_id, auth = submit(server, problem_dir)
    status = wait_final(server, task_id, auth)
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert (f"RetraceEnvironment = {environment} installs gdb from a full RPM mirror of fedora-41-x86_64, and this server "
            "serves that release through debuginfod only") in outcome(status)
    assert "internal error" not in outcome(status)
