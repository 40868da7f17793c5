"""Builds the synced index no longer has, through the real server: kept entries and history sources.

The crash is a real Debian python3.11 one update behind the archive's newest
(both real builds from the archive), or the rpmbuild-built crasher; the
history sources are loopback servers laid out by their documented URL schemes
(Debian snapshot's machine-readable API, a Koji package tree) holding real
builds.  The reference is a local gdb with the crash's own packages unpacked.
"""

import re
import shutil
import subprocess

import pytest

from testkit.debian import (
    DEBIAN_RELEASE,
    PYTHON,
    PYTHON_SCRIPT,
    apt_archive,
    apt_release,
    archive_versions,
    crash_python,
    debian_debs,
    debian_problem_dir,
    local_gdb_output,
    python_debs,
    python_frames,
    thread_frames,
)
from testkit.distro import RELEASE_ID, publish_release
from testkit.helpers import submit, wait_final
from testkit.history import SnapshotServer, koji_tree
from testkit.loopback import FileServer
from testkit.reposync_admin import REPOSYNC, serve_http
from testkit.signing import TEST_KEY
from tests.integration.test_debian import retraced
from tests.integration.test_retrace import successful_backtrace

pytestmark = pytest.mark.skipif(len(archive_versions("python3.11-dbg")) < 2,
                                reason="the archive serves one python3.11 build only")


@pytest.fixture(scope="module")
def builds():
    """``(behind, now)``: python3.11-minimal and python3.11-dbg of the archive's two newest versions."""
    now, behind = archive_versions("python3.11-dbg")[:2]
    return python_debs(behind), python_debs(now)


@pytest.fixture(scope="module")
def libc():
    debs = debian_debs()
    return [debs["libc6"], debs["libc6-dbg"]]


@pytest.fixture(scope="module")
def behind_problem(work_dir, builds):
    behind, _ = builds
    core = crash_python([behind["python3.11-minimal"]], work_dir, PYTHON_SCRIPT)
    version = re.match(r"python3\.11-minimal_(.+)_amd64\.deb", behind["python3.11-minimal"].name)[1]
    return debian_problem_dir(work_dir / "problem-python-behind", core, PYTHON, f"python3.11-minimal-{version}")


def assert_like_local_gdb(backtrace, debs, problem, tmp_path):
    """The crashed thread's C frames equal a local gdb's, and its Python frames are the script's."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    local = local_gdb_output(debs, problem / "coredump", tmp_path / "sysroot", PYTHON)
    assert thread_frames(backtrace)[1] == thread_frames(local)[1]
    assert [line.split(", in ")[1] for line in python_frames(backtrace)[1]] == ["leaf", "middle", "outer", "<module>"]


def debian_history(url):
    return f"[history]\ndebian = snapshot {url}\n"


def test_a_build_no_synced_index_ever_had_comes_from_a_snapshot_service_with_its_dbg_package(
        start_server, work_dir, builds, libc, behind_problem, tmp_path):
    behind, now = builds
    snapshot = SnapshotServer([*behind.values()])
    try:
        server = start_server(repository=apt_release(work_dir / "history-now" / DEBIAN_RELEASE, [*now.values(), *libc]),
                              release_id=DEBIAN_RELEASE, extra_ini=debian_history(snapshot.url))
        backtrace, log = retraced(server, behind_problem)
        minimal, dbg = (deb.name.removesuffix(".deb") for deb in behind.values())
        assert f"Matched {PYTHON} to {minimal} from snapshot {snapshot.url} by its build-id" in log, log
        assert re.search(rf"Debuginfo of {PYTHON} \(build-id \w+\) from {re.escape(dbg)} of snapshot", log), log
        assert f"{PYTHON}: {minimal} (snapshot {snapshot.url}); {dbg} (snapshot {snapshot.url})" in backtrace
        assert "Partial backtrace" not in backtrace
        assert_like_local_gdb(backtrace, [*behind.values(), *libc], behind_problem, tmp_path)
        assert any(path.startswith("/file/") for path in snapshot.requests)

        def check(version):
            return server.get("/checkpackage", allow_redirects=False, headers={
                "X-Package-NVR": f"python3.11-minimal-{version}", "X-Package-Arch": "x86_64",
                "X-OS-Release": DEBIAN_RELEASE})
        version = minimal.split("_")[1]
        answer = check(version)
        assert answer.status_code == 302 and answer.headers["X-Retrace-Package-Check"] == "history"
        assert check("3.11.2-6+deb12u0").status_code == 404
    finally:
        snapshot.close()


def test_a_history_source_serving_another_build_is_refused_by_build_id_and_named(
        start_server, work_dir, builds, libc, behind_problem):
    behind, now = builds
    version = behind_problem.joinpath("package").read_text().removeprefix("python3.11-minimal-")
    lying = SnapshotServer([], substitutes={("python3.11-minimal", version): now["python3.11-minimal"],
                                            ("python3.11-dbg", version): now["python3.11-dbg"]})
    try:
        server = start_server(repository=apt_release(work_dir / "history-lying" / DEBIAN_RELEASE, libc),
                              release_id=DEBIAN_RELEASE, extra_ini=debian_history(lying.url))
        backtrace, log = retraced(server, behind_problem)
        assert re.search(rf"snapshot {lying.url} served python3\.11-minimal_{re.escape(version)}_amd64, whose "
                         rf"{PYTHON} has build-id [0-9a-f]{{40}}, not the core's [0-9a-f]{{40}}; it was not used", log), log
        assert backtrace.startswith(f"Partial backtrace: no source has the crashed executable {PYTHON}")
    finally:
        lying.close()


def synced(start_server, url, extra_ini, *arguments):
    TEST_KEY.ensure()
    server = start_server(repository=False, extra_ini=(
        f"[gpgkeys]\ndebian = {TEST_KEY.public}\n"
        f"[reposync debian]\ntype = apt\nmirrors = {url}\nsuites = $CODENAME\ncomponents = main\n"
        f"codenames = 12:bookworm\n{extra_ini}"))

    def sync():
        ran = subprocess.run([str(REPOSYNC), "--config", str(server.config_path), "debian", "12", "x86_64",
                              *arguments], capture_output=True, text=True, timeout=600)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        return ran.stdout

    sync()
    return server, sync


def test_a_build_the_mirror_stopped_listing_is_retraced_from_the_kept_entries(
        start_server, work_dir, builds, libc, behind_problem, tmp_path):
    """A full mirror keeps the superseded build's files; a metadata-only release keeps its entry (name,
    checksum) and fetches the file the archive deleted from the snapshot service, checked by that SHA256."""
    behind, now = builds
    mirror = work_dir / "mirror-behind-then-now"
    apt_archive(mirror, [*behind.values(), *libc], key=TEST_KEY)
    process, url = serve_http(mirror)
    snapshot = SnapshotServer([*behind.values()])
    try:
        full, sync_full = synced(start_server, url, "")
        metadata_only, sync_metadata = synced(start_server, url, debian_history(snapshot.url), "--metadata-only")
        shutil.rmtree(mirror)
        apt_archive(mirror, [*now.values(), *libc], key=TEST_KEY)
        assert "2 packages the mirror no longer lists are kept" in sync_full()
        assert "2 packages the mirror no longer lists are kept" in sync_metadata()
        backtrace, log = retraced(full, behind_problem)
        assert_like_local_gdb(backtrace, [*behind.values(), *libc], behind_problem, tmp_path / "full")
        backtrace, log = retraced(metadata_only, behind_problem)
        minimal = behind["python3.11-minimal"].name.removesuffix(".deb")
        assert f"Downloaded {minimal} from snapshot {snapshot.url}" in log, log
        assert "answered HTTP 404" in log
        assert_like_local_gdb(backtrace, [*behind.values(), *libc], behind_problem, tmp_path / "metadata-only")
    finally:
        snapshot.close()
        process.terminate()
        process.wait()


@pytest.mark.parametrize("how", ["history", "KojiRoot"])
def test_an_rpm_build_no_synced_release_has_comes_from_a_koji_tree(start_server, work_dir, fixture_rpms,
                                                                    problem_dir, tmp_path, how):
    """crasher and its -debuginfo only in a Koji tree (over HTTP in [history], a local directory as
    upstream's KojiRoot); libcrash and glibc from the release."""
    crasher = [rpm for rpm in fixture_rpms if rpm.name.startswith("crasher-")]
    without = [rpm for rpm in fixture_rpms if rpm not in crasher]
    tree = koji_tree(work_dir / f"koji-{how}", crasher)  # readable by the service
    files = FileServer(tree)
    try:
        settings = ({"extra_ini": f"[history]\nfedora = koji {files.url}\n"} if how == "history"
                    else {"KojiRoot": str(tree)})
        repository = publish_release(tmp_path / "without-crasher", RELEASE_ID, without)
        server = start_server(repository=repository, **settings)
        task_id, auth = submit(server, problem_dir)
        status = wait_final(server, task_id, auth)
        log = server.get(f"/{task_id}/log", headers=auth).text
        assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
        backtrace = server.get(f"/{task_id}/backtrace", headers=auth).text
        assert re.search(r"Matched /usr/bin/crasher to crasher-1\.0-1\.fc41\.x86_64 from koji \S+ by its build-id",
                         log), log
        assert re.search(r"Debuginfo of /usr/bin/crasher \(build-id \w+\) from crasher-debuginfo-1\.0-1\.fc41"
                         r"\.x86_64 of koji", log), log
        assert "Partial backtrace" not in backtrace
        reference = successful_backtrace(start_server(), problem_dir)
        assert thread_frames(backtrace)[1] == thread_frames(reference)[1], "as from a release holding crasher"
    finally:
        files.close()
